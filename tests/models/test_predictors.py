from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from models import (
    DEFAULT_ARCH,
    Category,
    Detections,
    ImageRefusedError,
    Manifest,
    Query,
    SemanticMap,
    load_predictor,
    make_predictor,
)
from models.registry import SMALL_FCN_INPUT, TASKS, arch_names, build_model


class RedIsClassOne(nn.Module):
    """A fully convolutional oracle: class 1 wherever the (normalised) red channel is high."""

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        red = x[:, :1]
        return {"out": torch.cat([torch.zeros_like(red), red * 10], dim=1)}


def _red_square_image(height: int, width: int, box: tuple[int, int, int, int]) -> Tensor:
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    x1, y1, x2, y2 = box
    image[0, y1:y2, x1:x2] = 255
    return image


@pytest.mark.parametrize("task", TASKS)
def test_every_registered_architecture_builds_without_weights(task: str) -> None:
    for arch in arch_names(task):
        model = build_model(task, arch, num_classes=5)
        assert sum(p.numel() for p in model.parameters()) > 0


def test_segmentation_map_is_in_original_coordinates_for_mixed_sizes() -> None:
    manifest = Manifest(
        task="segment", arch="oracle", num_classes=2, categories=[Category(1, "red")], input=dict(SMALL_FCN_INPUT)
    )
    predictor = make_predictor(RedIsClassOne(), manifest)
    boxes = [(10, 20, 60, 50), (300, 100, 500, 400), (0, 0, 33, 17)]
    images = [
        _red_square_image(120, 90, boxes[0]),
        _red_square_image(700, 1000, boxes[1]),  # larger than max_size: shrunk, then mapped back
        _red_square_image(64, 200, boxes[2]),
    ]
    results = predictor.predict(images)
    for image, box, result in zip(images, boxes, results, strict=True):
        assert isinstance(result, SemanticMap)
        assert result.labels.shape == image.shape[-2:]
        truth = image[0] == 255
        disagreement = (result.labels.bool() != truth).sum().item()
        perimeter = 2 * ((box[2] - box[0]) + (box[3] - box[1]))
        assert disagreement <= perimeter  # at most a one-pixel seam from resampling
        assert (result.labels.bool() & truth).sum() >= 0.9 * truth.sum()


class CoarseLogits(nn.Module):
    """Five classes' logits rounded to a few levels, so that most pixels tie between classes."""

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        self.last = torch.floor(x[:, [0, 1, 2, 0, 1]] * torch.tensor([1.0, 2.0, 1.0, 3.0, 0.5]).view(1, 5, 1, 1))
        return {"out": self.last}


def test_segmentation_labels_are_the_first_best_class_as_argmax_gives() -> None:
    manifest = Manifest(
        task="segment",
        arch="oracle",
        num_classes=5,
        categories=[Category(i, f"c{i}") for i in range(1, 5)],
        input=dict(SMALL_FCN_INPUT),
    )
    model = CoarseLogits()
    predictor = make_predictor(model, manifest)
    image = torch.randint(0, 256, (3, 96, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    (result,) = predictor.predict([image])
    assert isinstance(result, SemanticMap)
    reference = model.last[0].argmax(0)  # the input is a multiple of 32: no padding, no resampling
    ties = (model.last[0] == model.last[0].max(0).values).sum(0) > 1
    assert ties.float().mean() > 0.2  # the case this test is about
    assert torch.equal(result.labels.long(), reference)


@pytest.mark.parametrize("task", ["detect", "instances"])
def test_rcnn_results_are_in_each_images_own_coordinates(random_store: Path, task: str) -> None:
    predictor = load_predictor(random_store, task)
    torch.manual_seed(0)
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8) for h, w in [(120, 300), (400, 160), (250, 250)]]
    results = predictor.predict(images, [Query(score_threshold=0.0)] * 3)
    for image, result in zip(images, results, strict=True):
        assert isinstance(result, Detections)
        assert len(result.boxes) > 0
        height, width = image.shape[-2:]
        assert (result.boxes[:, 0::2] >= 0).all()
        assert (result.boxes[:, 0::2] <= width).all()
        assert (result.boxes[:, 1::2] >= 0).all()
        assert (result.boxes[:, 1::2] <= height).all()
        assert (result.scores[:-1] >= result.scores[1:]).all()
        if task == "instances":
            assert result.masks is not None
            assert result.masks.size == (height, width)
            dense = result.masks.dense()
            assert dense.shape == (len(result.boxes), height, width)
            assert dense.dtype == torch.bool


def test_queries_filter_per_image(random_store: Path) -> None:
    predictor = load_predictor(random_store, "instances")
    torch.manual_seed(1)
    image = torch.randint(0, 256, (3, 200, 240), dtype=torch.uint8)
    everything, top3, squares, strict = predictor.predict(
        [image] * 4,
        [
            Query(score_threshold=0.0),
            Query(score_threshold=0.0, max_detections=3),
            Query(score_threshold=0.0, class_ids=frozenset({2})),
            Query(score_threshold=1.01),
        ],
    )
    assert isinstance(everything, Detections)
    assert isinstance(top3, Detections)
    assert isinstance(squares, Detections)
    assert isinstance(strict, Detections)
    assert len(everything.boxes) > 3
    assert torch.equal(top3.boxes, everything.boxes[:3])
    assert len(squares.labels) > 0
    assert set(squares.labels.tolist()) == {2}
    assert len(strict.boxes) == 0
    assert strict.masks is not None
    assert len(strict.masks) == 0
    assert strict.masks.dense().shape == (0, 200, 240)


def test_heads_stop_at_the_querys_threshold_with_the_same_answer(random_store: Path) -> None:
    """Mask R-CNN's heads keep only what the query asks for, so the mask head runs on no detection the
    answer drops, and the answer is the one a lower floor filtered afterwards gives."""
    predictor = load_predictor(random_store, "instances")
    mask_head_rows: list[int] = []
    model: Any = predictor.model
    model.roi_heads.mask_head.register_forward_hook(lambda _m, args, _o: mask_head_rows.append(len(args[0])))
    torch.manual_seed(2)
    image = torch.randint(0, 256, (3, 220, 260), dtype=torch.uint8)
    (low,) = predictor.predict([image], [Query(score_threshold=0.0)])
    assert isinstance(low, Detections)
    threshold = float(low.scores[len(low.scores) // 2])
    kept = int((low.scores >= threshold).sum())
    assert 0 < kept < len(low.scores) == mask_head_rows[0]

    (alone,) = predictor.predict([image], [Query(score_threshold=threshold)])
    mixed, _ = predictor.predict([image, image], [Query(score_threshold=threshold), Query(score_threshold=0.0)])
    assert mask_head_rows[1] == kept
    for answer in (alone, mixed):
        assert isinstance(answer, Detections)
        assert answer.masks is not None
        assert low.masks is not None
        assert torch.equal(answer.boxes, low.boxes[:kept])
        assert torch.equal(answer.scores, low.scores[:kept])
        assert torch.equal(answer.labels, low.labels[:kept])
        assert torch.equal(answer.masks.dense(), low.masks.dense()[:kept])


def test_bad_images_raise_value_error(random_store: Path) -> None:
    predictor = load_predictor(random_store, "segment")
    with pytest.raises(ValueError, match="uint8"):
        predictor.predict([torch.zeros(3, 10, 10)])
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        predictor.predict([torch.zeros(1, 10, 10, dtype=torch.uint8)])
    with pytest.raises(ValueError, match="queries"):
        predictor.predict([torch.zeros(3, 10, 10, dtype=torch.uint8)], [])
    assert DEFAULT_ARCH["segment"] == predictor.manifest.arch


def test_only_images_the_model_cannot_take_are_refused(random_store: Path) -> None:
    """A caller's bad tensor is a plain ValueError (a bug); an image too thin for the R-CNN's resize is the
    image's doing: ImageRefusedError, which a server may answer as the client's error."""
    predictor = load_predictor(random_store, "detect")
    transform: Any = predictor.model.transform  # torchvision's GeneralizedRCNNTransform
    long_side = int(transform.max_size) * 3  # shrunk to max_size: its 1-pixel side would become 0
    with pytest.raises(ImageRefusedError, match="thin"):
        predictor.predict([torch.zeros(3, 1, long_side, dtype=torch.uint8)])
    with pytest.raises(ValueError, match="uint8") as bug:
        predictor.predict([torch.zeros(3, 10, 10)])
    assert not isinstance(bug.value, ImageRefusedError)
    assert len(predictor.predict([torch.zeros(3, 4, long_side, dtype=torch.uint8)])) == 1  # thick enough


def test_results_in_a_larger_frame_are_the_images_own_scaled_up(random_store: Path) -> None:
    """A caller that decoded an upload at reduced size gets answers in the upload's pixels: the same boxes
    scaled, and a label map at the upload's size, equal to segmenting the upload itself where it is not
    shrunk any further."""
    small = torch.randint(0, 256, (3, 60, 80), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    frame = (150, 200)
    detector = load_predictor(random_store, "detect")
    own, framed = (detector.predict([small], [Query(score_threshold=0.0)], frames)[0] for frames in (None, [frame]))
    assert isinstance(own, Detections)
    assert isinstance(framed, Detections)
    assert len(own.boxes) == len(framed.boxes) > 0
    scale = torch.tensor([200 / 80, 150 / 60] * 2)
    assert torch.allclose(framed.boxes, (own.boxes * scale).clamp(max=torch.tensor([200.0, 150.0] * 2)), atol=1e-3)
    segmenter = load_predictor(random_store, "segment")
    (labels,) = segmenter.predict([small], None, [frame])
    assert isinstance(labels, SemanticMap)
    assert tuple(labels.labels.shape) == frame
    with pytest.raises(ValueError, match="frames"):
        segmenter.predict([small], None, [frame, frame])
