"""Property tests (hypothesis): RLE round trips, nearest upsampling, fitting sizes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils
from rle_helpers import encode_masks, mask_areas, upsample_nearest

from service.imaging import fit_within
from service.rle import encode_label_map

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy:DeprecationWarning")

sides = st.integers(1, 257)


@st.composite
def masks(draw: st.DrawFn, max_count: int = 3) -> torch.Tensor:
    """[N, H, W] bool masks: random noise at any density, plus the edge cases all-0 and all-1."""
    count, height, width = draw(st.integers(1, max_count)), draw(sides), draw(sides)
    seed, density = draw(st.integers(0, 2**32 - 1)), draw(st.sampled_from([0.0, 0.02, 0.3, 0.5, 0.97, 1.0]))
    return torch.from_numpy(np.random.default_rng(seed).random((count, height, width)) < density)


def _decode(rle: dict) -> np.ndarray:  # type: ignore[type-arg]
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")})


@settings(max_examples=600, deadline=None)
@given(masks())
def test_rle_round_trip_is_exact(stack: torch.Tensor) -> None:
    rles = encode_masks(stack)
    json.loads(json.dumps(rles))  # plain JSON: str counts, int sizes
    for mask, rle, area in zip(stack, rles, mask_areas(rles), strict=True):
        assert rle["size"] == list(mask.shape)
        assert np.array_equal(_decode(rle), mask.numpy().astype(np.uint8))
        assert area == int(mask.sum())


@st.composite
def label_maps(draw: st.DrawFn) -> torch.Tensor:
    """[H, W] label maps: per-pixel noise, blocks (long runs, whole columns) or a single label."""
    height, width, classes = draw(sides), draw(sides), draw(st.integers(1, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    block = draw(st.sampled_from([1, 3, 17, 1000]))  # 1000: one block, the whole map one label
    grid = rng.integers(0, classes + 1, size=(-(-height // block), -(-width // block)))
    labels = np.repeat(np.repeat(grid, block, axis=0), block, axis=1)[:height, :width]
    return torch.from_numpy(labels.astype(draw(st.sampled_from([np.uint8, np.int32]))))


@settings(max_examples=600, deadline=None)
@given(label_maps())
def test_label_map_rles_are_pycocotools_own_for_each_label(labels: torch.Tensor) -> None:
    encoded = encode_label_map(labels)
    present = {int(v) for v in labels.unique().tolist()} - {0}
    assert set(encoded) == present  # background (0) is not a segment
    for label, (rle, area) in encoded.items():
        mask = np.asfortranarray((labels == label).numpy().astype(np.uint8))
        assert rle["counts"] == mask_utils.encode(mask)["counts"].decode("ascii")  # byte for byte
        assert rle["size"] == list(labels.shape)
        assert area == int(mask.sum())


@settings(max_examples=300, deadline=None)
@given(masks(max_count=2), sides, sides)
def test_rle_at_upload_size_is_the_nearest_upsampled_mask(stack: torch.Tensor, height: int, width: int) -> None:
    rles = encode_masks(stack, (height, width))
    for mask, rle, area in zip(stack, rles, mask_areas(rles), strict=True):
        expected = upsample_nearest(mask, (height, width)).numpy()
        assert rle["size"] == [height, width]
        assert np.array_equal(_decode(rle), expected.astype(np.uint8))
        assert area == int(expected.sum())


@settings(max_examples=300, deadline=None)
@given(masks(max_count=1), st.integers(1, 4))
def test_upsampling_by_a_whole_factor_repeats_pixels(stack: torch.Tensor, factor: int) -> None:
    mask = stack[0]
    height, width = mask.shape
    upsampled = upsample_nearest(mask, (height * factor, width * factor)).numpy()
    assert np.array_equal(upsampled, np.repeat(np.repeat(mask.numpy(), factor, 0), factor, 1))
    assert upsample_nearest(mask, (height, width)) is mask


@settings(max_examples=500, deadline=None)
@given(st.integers(1, 20_000), st.integers(1, 20_000), st.integers(32, 4096))
def test_fit_within_bounds_the_longer_side_and_keeps_the_shape(width: int, height: int, max_side: int) -> None:
    fitted = fit_within(width, height, max_side)
    assert max(fitted) <= max(max_side, 1)
    assert min(fitted) >= 1
    if max(width, height) <= max_side:
        assert fitted == (width, height)
    else:
        assert max(fitted) == max_side
        scale = max_side / max(width, height)
        for side, exact in zip(fitted, (width * scale, height * scale), strict=True):
            assert abs(side - exact) <= 0.5 or side == 1  # rounded, but never to nothing
