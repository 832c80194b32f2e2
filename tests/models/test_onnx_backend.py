"""ONNX Runtime as a CPU runtime candidate: the exported part answers as torch does at any input size,
a predictor switches to it and back, and the selection offers it only on a CPU where it is installed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import models.runtimes as runtimes
from models import onnx_backend
from models.acceleration import Acceleration, prepare_model
from models.parity import PARITY_QUERY, compare
from models.runtimes import BASELINE, sample_images
from tests.conftest import tiny_predictor

ORT = Acceleration(backend="onnxruntime")
CPU = torch.device("cpu")

pytestmark = pytest.mark.skipif(
    not onnx_backend.available(), reason="onnxruntime and onnx are an optional extra (pip install '.[onnx]')"
)


def _odd_images() -> list[torch.Tensor]:
    """Sizes that divide by neither 8 nor 32, landscape and portrait: the export's dynamic axes at work."""
    generator = torch.Generator().manual_seed(3)
    sizes = [(201, 333), (317, 150)]
    return [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator) for h, w in sizes]


@pytest.mark.parametrize("task", ["segment", "detect", "instances"])
def test_onnxruntime_answers_as_torch_at_any_size(task: str) -> None:
    predictor = tiny_predictor(task)
    converted = runtimes.variant(predictor, ORT)
    assert any(isinstance(m, onnx_backend.OrtModule) for m in converted.model.modules())
    for images in (sample_images(), _odd_images()):
        queries = [PARITY_QUERY] * len(images)
        parity = compare(predictor.predict(images, queries), converted.predict(images, queries))
        assert parity.ok, parity.problems


def test_the_rcnn_exports_its_backbone_and_the_fcn_the_whole_network() -> None:
    detector = runtimes.variant(tiny_predictor("detect"), ORT).model
    assert isinstance(detector.backbone, onnx_backend.OrtModule)
    assert not isinstance(detector.roi_heads, onnx_backend.OrtModule)  # data-dependent: stays in torch
    assert isinstance(runtimes.variant(tiny_predictor("segment"), ORT).model, onnx_backend.OrtModule)


def test_backbone_features_match_torch_closely() -> None:
    backbone = tiny_predictor("detect").model.backbone
    session = onnx_backend.OrtModule(backbone)
    x = torch.rand(2, 3, 205, 299)
    with torch.inference_mode():
        expected = backbone(x)
        got = session(x)
    assert isinstance(got, dict)
    assert list(got) == list(expected)
    for name, tensor in expected.items():
        assert got[name].shape == tensor.shape
        assert torch.allclose(got[name], tensor, atol=1e-4, rtol=1e-4), name


def test_a_predictor_switches_to_onnxruntime_and_back() -> None:
    predictor = tiny_predictor("segment")
    images = sample_images()
    before = predictor.predict(images)
    predictor.accelerate(ORT)
    assert isinstance(predictor.model, onnx_backend.OrtModule)
    predictor.accelerate(BASELINE)
    assert not any(isinstance(m, onnx_backend.OrtModule) for m in predictor.model.modules())
    after = predictor.predict(images)
    assert all(torch.equal(a.labels, b.labels) for a, b in zip(before, after, strict=True))  # type: ignore[union-attr]


def test_onnxruntime_is_a_candidate_on_a_cpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    assert runtimes.candidates(CPU)[-1] == ORT
    assert ORT.name == "fp32+onnxruntime"
    monkeypatch.setattr("models.runtimes.onnx_backend.available", lambda: False)
    assert ORT not in runtimes.candidates(CPU)
    with pytest.raises(ValueError, match="runs on a CPU"):
        prepare_model(nn.Identity(), torch.device("meta"), ORT)
