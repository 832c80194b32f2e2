"""Training augmentation: boxes and masks still match the pixels after every transform; seeded per sample."""

from __future__ import annotations

from dataclasses import replace
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from trainer.augment import POLICIES, Augmented, Pipeline, Policy, rcnn_transform, segment_transform
from trainer.data import IGNORE, CocoDataset, Target
from trainer.sampling import EpochBatchSampler, batch_stream

STRONG = POLICIES["strong"]
# Geometry alone: each instance keeps its exact colour, so its pixels can be found again after the transform.
GEOMETRIC = replace(STRONG, jpeg=0, photometric=0, grayscale=0, blur=0, noise=0)
COLOURS = [(250, 10, 10), (10, 250, 10), (10, 10, 250)]


def _scene(seed: int) -> tuple[Tensor, Target]:
    """Three rectangles of distinct colours on black, partly off-centre, one overlapping another."""
    rng = np.random.default_rng(seed)
    height, width = (int(v) for v in rng.integers(80, 200, 2))
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    masks = torch.zeros(3, height, width, dtype=torch.uint8)
    for k, colour in enumerate(COLOURS):
        y, x = int(rng.integers(0, height - 30)), int(rng.integers(0, width - 30))
        h, w = int(rng.integers(20, 60)), int(rng.integers(20, 60))
        image[:, y : y + h, x : x + w] = torch.tensor(colour, dtype=torch.uint8)[:, None, None]
        masks[:k, y : y + h, x : x + w] = 0  # later rectangles cover earlier ones
        masks[k, y : y + h, x : x + w] = 1
    boxes = torch.stack([_tight_box(m) for m in masks])
    return image, {"boxes": boxes, "labels": torch.tensor([1, 2, 3]), "masks": masks}


def _at_own_size(policy: Policy, image: Tensor) -> Pipeline:
    """The R-CNN pipeline with its resize to the network's scale an identity, so that pixels can be compared."""
    return rcnn_transform(policy, min_size=10**4, max_size=max(image.shape[-2:]))


def _tight_box(mask: Tensor) -> Tensor:
    ys, xs = mask.nonzero(as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


def test_the_rcnn_pipeline_first_resizes_as_the_model_would(tiny_shapes: Path) -> None:
    image, target = CocoDataset(tiny_shapes, "train", "instances")[0]
    small, prepared = rcnn_transform(STRONG, 256, 416).prepare(image, target)
    height, width = image.shape[-2:]
    scale = min(256 / min(height, width), 416 / max(height, width))
    assert tuple(small.shape[-2:]) == (int(height * scale), int(width * scale))
    assert prepared["masks"].shape[-2:] == small.shape[-2:]
    assert torch.allclose(prepared["boxes"], target["boxes"] * torch.tensor([small.shape[-1] / width,
                          small.shape[-2] / height] * 2), atol=1e-3)  # fmt: skip


@pytest.mark.parametrize("seed", range(40))
def test_rcnn_geometry_keeps_boxes_and_masks_on_their_pixels(seed: int) -> None:
    image, target = _scene(seed)
    torch.manual_seed(seed)
    out_image, out = _at_own_size(GEOMETRIC, image)(image, target)
    assert out_image.dtype == torch.float32
    pixels = (out_image * 255).round().to(torch.uint8)
    assert len(out["boxes"]) == len(out["labels"]) == len(out["masks"])
    for box, label, mask in zip(out["boxes"], out["labels"], out["masks"].bool(), strict=True):
        colour = torch.tensor(COLOURS[int(label) - 1], dtype=torch.uint8)[:, None]
        assert bool((pixels[:, mask] == colour).all()), "a mask left its pixels"
        painted = (pixels == colour[:, :, None]).all(0)
        assert bool((painted & ~mask).sum() == 0), "pixels of the instance outside its mask"
        assert torch.allclose(box, _tight_box(mask), atol=1.0)  # clipped with the mask


def test_the_strong_policy_crops_flips_and_drops_instances_cut_down() -> None:
    seen = {"fewer": 0, "flipped": 0, "resized": 0}
    for seed in range(60):
        image, target = _scene(seed)
        torch.manual_seed(seed)
        out_image, out = _at_own_size(STRONG, image)(image, target)
        assert float(out_image.min()) >= 0.0
        assert float(out_image.max()) <= 1.0
        for box, mask in zip(out["boxes"], out["masks"], strict=True):
            assert torch.allclose(box, _tight_box(mask), atol=1.0)
            assert int(mask.sum()) >= 40
        seen["fewer"] += len(out["labels"]) < 3
        seen["resized"] += tuple(out_image.shape[-2:]) != tuple(image.shape[-2:])
        seen["flipped"] += bool(len(out["labels"]) == 3 and not torch.equal(out["boxes"], target["boxes"]))
    assert all(count > 0 for count in seen.values()), seen


def test_an_image_without_targets_passes_the_iou_crop() -> None:
    image = torch.zeros(3, 50, 60, dtype=torch.uint8)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
             "masks": torch.zeros(0, 50, 60, dtype=torch.uint8)}  # fmt: skip
    for seed in range(10):
        torch.manual_seed(seed)
        _, out = _at_own_size(replace(GEOMETRIC, iou_crop=1.0), image)(image, empty)
        assert len(out["boxes"]) == 0


def test_segmentation_crops_keep_labels_on_their_pixels() -> None:
    # Each pixel's label is coded in its value (20 px blocks): a transform that moved them apart would show.
    height, width = 300, 500
    rows, cols = torch.arange(height)[:, None] // 20, torch.arange(width)[None, :] // 20
    labels = (rows + cols) % 4
    image = (labels * 60).to(torch.uint8).expand(3, height, width).contiguous()
    transform = segment_transform(GEOMETRIC, max_size=320, crop=128)
    for seed in range(10):
        torch.manual_seed(seed)
        x, out = transform(image, {"mask": labels})
        kept = out["mask"]
        assert x.shape == (3, 128, 128)
        assert kept.shape == (128, 128)
        # Labels by nearest neighbour, pixels bilinear: compare where all four neighbours agree.
        inner = kept[1:-1, 1:-1]
        flat = (
            (inner == kept[:-2, 1:-1])
            & (inner == kept[2:, 1:-1])
            & (inner == kept[1:-1, :-2])
            & (inner == kept[1:-1, 2:])
        )
        flat &= inner != IGNORE
        coded = (x[0, 1:-1, 1:-1] * 255 / 60).round().long()
        assert flat.float().mean() > 0.5
        assert (coded[flat] == inner[flat]).float().mean() > 0.95
    small = segment_transform(Policy(), max_size=320, crop=128)
    x, out = small(image[:, :100, :90], {"mask": labels[:100, :90]})
    assert x.shape == (3, 128, 128)
    assert int((out["mask"] == IGNORE).sum()) == 128 * 128 - 100 * 90  # the padding, and nothing else


def test_samples_are_a_function_of_seed_epoch_and_index_alone(tiny_shapes: Path) -> None:
    data = Augmented(CocoDataset(tiny_shapes, "train", "instances"), rcnn_transform(STRONG, 256, 416), seed=4)
    first, again = data[(2, 1)], data[(2, 1)]
    assert torch.equal(first[0], again[0])
    assert not torch.equal(first[0], data[(3, 1)][0])
    before = torch.random.get_rng_state()
    data[(0, 0)]
    assert torch.equal(torch.random.get_rng_state(), before)  # the training loop's own RNG is untouched


def test_worker_processes_load_the_same_batches(tiny_shapes: Path) -> None:
    data = Augmented(CocoDataset(tiny_shapes, "train", "detect"), rcnn_transform(STRONG, 256, 416), seed=1)

    def batches(workers: int) -> list[list[Tensor]]:
        stream = batch_stream(data, EpochBatchSampler(len(data), 2, seed=1), start_step=2, workers=workers)
        return [images for images, _ in islice(stream, 4)]  # crosses into the next epoch

    alone, loaded = batches(0), batches(1)
    assert all(torch.equal(a, b) for x, y in zip(alone, loaded, strict=True) for a, b in zip(x, y, strict=True))
