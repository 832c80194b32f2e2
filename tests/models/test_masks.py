"""Box-region masks and device run lengths against torchvision's full-frame pasting and pycocotools."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from torch import Tensor
from torchvision.models.detection.roi_heads import paste_masks_in_image

from models import Detections, InstanceMasks, Query, Region, load_predictor, run_lengths
from models.registry import SCORE_FLOOR


def _coco_counts(mask: Tensor) -> np.ndarray:
    """The uncompressed COCO counts of a full-frame mask, the slow and obvious way."""
    flat = mask.t().reshape(-1).to(torch.int64).numpy()  # column-major, as COCO reads masks
    changes = np.flatnonzero(np.diff(flat, prepend=0))
    return np.diff(changes, prepend=0, append=flat.size)


def _random_case(generator: torch.Generator, trial: int) -> InstanceMasks:
    height, width = (int(v) for v in torch.randint(1, 70, (2,), generator=generator))
    count = int(torch.randint(0, 7, (), generator=generator))
    probs = torch.rand(count, 14, 14, generator=generator)
    if trial % 3 == 0:
        probs = (probs > 0.4).float()  # hard edges: runs that touch region borders
    # As Mask R-CNN gives them: boxes clipped to the image, some degenerate, some the whole image.
    corners = torch.rand(count, 2, 2, generator=generator) * torch.tensor([width, height])
    boxes = torch.cat([corners.min(1).values, corners.max(1).values], 1)
    if count and trial % 4 == 0:
        boxes[0] = torch.tensor([0.0, 0.0, width, height])
    if count and trial % 5 == 0:
        boxes[-1, 2:] = boxes[-1, :2]
    threshold = float(torch.rand((), generator=generator)) * 0.9 + 0.05
    return InstanceMasks(probs, boxes, (height, width), threshold)


def test_box_regions_are_torchvisions_full_frame_masks_bit_for_bit() -> None:
    generator = torch.Generator().manual_seed(0)
    for trial in range(300):
        masks = _random_case(generator, trial)
        pasted = paste_masks_in_image(masks.probs[:, None], masks.boxes, masks.size)[:, 0] >= masks.threshold
        assert torch.equal(masks.dense(), pasted), f"case {trial}"


def test_run_lengths_are_cocos_counts_of_the_full_frame_masks() -> None:
    generator = torch.Generator().manual_seed(1)
    checked = 0
    for trial in range(300):
        masks = _random_case(generator, trial)
        dense = masks.dense()
        counts = run_lengths(masks.regions(), masks.size)
        assert len(counts) == len(dense)
        for mask, ours in zip(dense, counts, strict=True):
            assert np.array_equal(ours, _coco_counts(mask)), f"case {trial}"
            assert ours.sum() == mask.numel()
            checked += 1
    assert checked > 500


def test_compressed_strings_match_pycocotools_encode() -> None:
    masks = torch.zeros(4, 30, 20, dtype=torch.bool)
    masks[0, 5:25, 3:9] = True  # inside
    masks[1] = True  # everything: a region as tall as the image, runs crossing columns
    masks[2, :, 19] = True  # ends on the last pixel
    regions = [Region(mask, 0, 0) for mask in masks]
    ours = mask_utils.frPyObjects([{"size": [30, 20], "counts": c} for c in run_lengths(regions, (30, 20))], 30, 20)
    reference = mask_utils.encode(np.asfortranarray(masks.permute(1, 2, 0).numpy().astype(np.uint8)))
    assert [rle["counts"] for rle in ours] == [rle["counts"] for rle in reference]


def test_a_region_placed_inside_the_frame_has_the_full_frames_runs() -> None:
    region = torch.tensor([[1, 0, 1], [1, 1, 0]], dtype=torch.bool)
    full = torch.zeros(6, 5, dtype=torch.bool)
    full[3:5, 1:4] = region
    assert np.array_equal(run_lengths([Region(region, 3, 1)], (6, 5))[0], _coco_counts(full))


def test_a_zero_threshold_is_refused() -> None:
    masks = InstanceMasks(torch.ones(1, 4, 4), torch.tensor([[1.0, 1.0, 3.0, 3.0]]), (8, 8), threshold=0.0)
    with pytest.raises(ValueError, match="every pixel"):
        masks.regions()


def test_predictor_masks_are_torchvisions_own_forward_bit_for_bit(random_store: Path) -> None:
    predictor = load_predictor(random_store, "instances")
    torch.manual_seed(3)
    image = torch.randint(0, 256, (3, 150, 230), dtype=torch.uint8)
    ours = predictor.predict([image], [Query(score_threshold=SCORE_FLOOR, mask_threshold=0.3)])[0]
    with torch.inference_mode():
        reference = predictor.model([image.float() / 255])[0]
    assert isinstance(ours, Detections)
    assert ours.masks is not None
    assert len(ours.boxes) == len(reference["boxes"]) > 0
    assert torch.equal(ours.scores, reference["scores"])
    assert torch.equal(ours.masks.dense(), reference["masks"][:, 0] >= 0.3)


def test_run_lengths_hold_one_chunk_of_regions_at_a_time() -> None:
    """Regions are let go chunk by chunk (issue 16, item 4): however many boxes, the masks alive at once
    are at most a chunk's pixels plus the one region that overflows it."""
    generator = torch.Generator().manual_seed(7)
    size = (90, 120)
    shapes = [(int(h), int(w)) for h, w in torch.randint(5, 60, (40, 2), generator=generator)]
    masks = [torch.rand(shape, generator=generator) > 0.5 for shape in shapes]
    chunk_pixels = 2000
    alive: list[weakref.ref[Tensor]] = []
    peak = 0

    def regions() -> Iterator[Region]:
        nonlocal peak
        for i, mask in enumerate(masks):
            region = Region(mask.clone(), top=i % 30, left=i % 60)
            alive.append(weakref.ref(region.mask))
            peak = max(peak, sum(m.numel() for ref in alive if (m := ref()) is not None))
            yield region
            del region

    chunked = run_lengths(regions(), size, chunk_pixels=chunk_pixels)
    assert peak <= chunk_pixels + max(h * w for h, w in shapes)
    assert peak < sum(h * w for h, w in shapes) / 4  # far from all of them
    whole = run_lengths([Region(m, i % 30, i % 60) for i, m in enumerate(masks)], size, chunk_pixels=1 << 30)
    single = run_lengths((Region(m, i % 30, i % 60) for i, m in enumerate(masks)), size, chunk_pixels=1)
    assert len(chunked) == len(whole) == len(single) == len(masks)
    for a, b, c in zip(chunked, whole, single, strict=True):
        assert np.array_equal(a, b)
        assert np.array_equal(a, c)


def test_instance_regions_are_pasted_lazily() -> None:
    masks = InstanceMasks(torch.ones(3, 4, 4), torch.tensor([[1.0, 1.0, 3.0, 3.0]] * 3), (8, 8))
    regions = masks.regions()
    assert not isinstance(regions, list | tuple)
    assert len(list(regions)) == 3
