"""The GPU path of the predictors: run by bench/gpu_check.sh on a CUDA machine, skipped elsewhere."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image

from models import Acceleration, Detections, InstanceMasks, Query, Region, SemanticMap, load_predictor, run_lengths

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
CUDA = torch.device("cuda")


def _images(seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    sizes = [(120, 300), (400, 160), (250, 250), (333, 517)]
    return [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator) for h, w in sizes]


def test_run_lengths_on_the_device_equal_those_on_the_cpu() -> None:
    generator = torch.Generator().manual_seed(0)
    regions = []
    for _ in range(50):
        h, w = (int(v) for v in torch.randint(1, 90, (2,), generator=generator))
        top, left = (int(v) for v in torch.randint(0, 10, (2,), generator=generator))
        regions.append(Region(torch.rand(h, w, generator=generator) > 0.5, top, left))
    regions.append(Region(torch.ones(100, 40, dtype=torch.bool), 0, 0))  # as tall as the image
    on_cpu = run_lengths(regions, (100, 110))
    on_gpu = run_lengths([Region(r.mask.to(CUDA), r.top, r.left) for r in regions], (100, 110))
    assert all(np.array_equal(a, b) for a, b in zip(on_cpu, on_gpu, strict=True))


def test_box_regions_on_the_device_are_torchvisions_pasted_masks() -> None:
    generator = torch.Generator().manual_seed(1)
    probs = torch.rand(40, 28, 28, generator=generator)
    corners = torch.rand(40, 2, 2, generator=generator) * torch.tensor([640.0, 480.0])
    boxes = torch.cat([corners.min(1).values, corners.max(1).values], 1)
    masks = InstanceMasks(probs.to(CUDA), boxes.to(CUDA), (480, 640), 0.5)
    pasted = paste_masks_in_image(masks.probs[:, None], masks.boxes, (480, 640))[:, 0] >= 0.5
    assert all(region.mask.is_cuda for region in masks.regions())
    assert torch.equal(masks.dense(), pasted.cpu())


@pytest.mark.parametrize("task", ["segment", "detect", "instances"])
def test_cuda_results_match_the_cpu(random_store: Path, task: str) -> None:
    images = _images(2)
    queries = [Query(score_threshold=0.0, max_detections=20)] * len(images)
    on_cpu = load_predictor(random_store, task).predict(images, queries)
    on_gpu = load_predictor(random_store, task, CUDA).predict(images, queries)
    for cpu, gpu in zip(on_cpu, on_gpu, strict=True):
        if isinstance(cpu, SemanticMap):
            assert isinstance(gpu, SemanticMap)
            assert (cpu.labels == gpu.labels).float().mean() > 0.99
            continue
        assert isinstance(cpu, Detections)
        assert isinstance(gpu, Detections)
        assert not gpu.boxes.is_cuda
        assert gpu.boxes.dtype == torch.float32
        # Kernels differ in rounding: compare the best boxes, which are well separated in score.
        assert torch.allclose(cpu.boxes[:5], gpu.boxes[:5], atol=0.5)
        if cpu.masks is not None:
            assert gpu.masks is not None
            assert gpu.masks.probs.is_cuda
            agree = (cpu.masks.dense()[:5] == gpu.masks.dense()[:5]).float().mean()
            assert agree > 0.99


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("task", ["segment", "instances"])
def test_autocast_and_channels_last_run_and_stay_close(random_store: Path, task: str, precision: str) -> None:
    images = _images(3)
    queries = [Query(score_threshold=0.0, max_detections=10)] * len(images)
    exact = load_predictor(random_store, task, CUDA).predict(images, queries)
    fast = load_predictor(random_store, task, CUDA, Acceleration(precision, channels_last=True))  # type: ignore[arg-type]
    assert fast.autocast_dtype is not None
    assert fast.channels_last
    for full, low in zip(exact, fast.predict(images, queries), strict=True):
        if isinstance(full, SemanticMap):
            assert isinstance(low, SemanticMap)
            assert (full.labels == low.labels).float().mean() > 0.9
        else:
            assert isinstance(low, Detections)
            assert low.masks is not None
            assert low.boxes.dtype == torch.float32
            assert len(low.boxes) > 0
            assert low.masks.dense().dtype == torch.bool
