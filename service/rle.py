"""Masks to COCO compressed RLE, the wire format of every mask the service returns.

Run lengths are computed where the masks are (models.run_lengths: on the GPU when serving there), from
each mask's region only; pycocotools then writes them in COCO's compressed string alphabet, so
`pycocotools.mask.decode` gives back exactly the full-frame masks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypedDict

import numpy as np
import torch
from pycocotools import mask as mask_utils

from models import Region, run_lengths


class Rle(TypedDict):
    size: list[int]  # [height, width], as pycocotools expects
    counts: str


def encode_regions(regions: Iterable[Region], size: tuple[int, int]) -> tuple[list[Rle], list[int]]:
    """Masks given by their regions on an image of `size` (height, width): their RLEs and pixel areas.
    `regions` may be lazy (InstanceMasks.regions()): it is coded a chunk at a time, never held whole."""
    counts = run_lengths(regions, size)
    if not counts:
        return [], []
    return _compress(counts, size), [int(c[1::2].sum()) for c in counts]


def _compress(counts: Sequence[np.ndarray], size: tuple[int, int]) -> list[Rle]:
    """Uncompressed COCO counts to the compressed RLEs of masks on an image of `size` (height, width)."""
    height, width = size
    coded = mask_utils.frPyObjects([{"size": [height, width], "counts": c} for c in counts], height, width)
    # JSON has no bytes: the counts string is ASCII by construction (COCO's LEB128-like alphabet).
    return [Rle(size=[height, width], counts=rle["counts"].decode("ascii")) for rle in coded]


def encode_label_map(labels: torch.Tensor) -> dict[int, tuple[Rle, int]]:
    """Every non-zero label's mask in an [H, W] label map: its RLE and pixel area, from one pass.

    Labels are disjoint, so each label's runs of 1s are exactly the maximal runs of that label in the
    column-major map; no per-label comparison of the whole map is needed.
    """
    height, width = (int(n) for n in labels.shape)
    flat = labels.t().contiguous().reshape(-1).numpy()  # column-major, as COCO counts
    total = flat.size
    if total == 0:
        return {}
    starts = np.concatenate(([0], np.flatnonzero(flat[1:] != flat[:-1]) + 1))
    ends = np.append(starts[1:], total)
    values = flat[starts]
    counts: dict[int, np.ndarray] = {}
    for label in np.unique(values).tolist():
        if label == 0:  # background
            continue
        mine = values == label
        bounds = np.empty(2 * int(mine.sum()), dtype=np.int64)
        bounds[0::2], bounds[1::2] = starts[mine], ends[mine]
        if bounds[-1] == total:  # the last pixel is in: COCO ends on that run
            bounds = bounds[:-1]
        counts[label] = np.diff(bounds, prepend=0, append=total)
    if not counts:
        return {}
    rles = _compress(list(counts.values()), (height, width))
    return {label: (rle, int(c[1::2].sum())) for (label, c), rle in zip(counts.items(), rles, strict=True)}


def decode_counts(counts: str) -> np.ndarray:
    """COCO's compressed counts string back to its uncompressed run lengths (pycocotools' rleFrString, in
    numpy): each count is 5-bit groups, low first, 0x20 meaning 'more follow', the last group's 0x10 its
    sign; from the fourth count on, each is stored as the difference to the count two places before."""
    if not counts:
        return np.zeros(0, dtype=np.int64)
    chars = np.frombuffer(counts.encode("ascii"), dtype=np.uint8).astype(np.int64) - 48
    last = (chars & 0x20) == 0  # a count's last character
    group = np.concatenate(([0], np.cumsum(last)[:-1]))
    starts = np.flatnonzero(np.concatenate(([True], last[:-1])))
    shift = 5 * (np.arange(len(chars)) - starts[group])
    values = np.add.reduceat((chars & 0x1F) << shift, starts)
    lengths = np.diff(np.append(starts, len(chars)))
    negative = (chars[last] & 0x10) != 0
    values[negative] -= np.int64(1) << (5 * lengths[negative])
    # Undo the differences: from index 3 on, x[m] += x[m - 2] (cumulative sums over each parity).
    out = values.copy()
    out[2::2] = np.cumsum(values[2::2])
    out[1::2] = np.cumsum(values[1::2])
    return out


def resample_rle(rle: Rle, size: tuple[int, int]) -> Rle:
    """The mask of `rle` on a grid of `size` (height, width), each pixel the nearest of the original's, read
    straight off the run lengths: the full-size mask is never decoded (a 35-megapixel frame stays run
    lengths; only the new grid's columns that the mask reaches are sampled)."""
    height, width = rle["size"]
    new_height, new_width = size
    counts = decode_counts(rle["counts"])
    mask = np.zeros((new_height, new_width), dtype=np.uint8)
    ends = np.cumsum(counts)
    if len(counts) > 1:  # some pixel is in: runs alternate 0s, 1s, ..., starting with 0s
        first = int(counts[0])
        last = int(ends[-1] - (counts[-1] if len(counts) % 2 else 0)) - 1
        rows = np.minimum(((np.arange(new_height) * 2 + 1) * height) // (2 * new_height), height - 1)
        columns = np.minimum(((np.arange(new_width) * 2 + 1) * width) // (2 * new_width), width - 1)
        reached = np.flatnonzero((columns >= first // height) & (columns <= last // height))
        if len(reached):
            positions = columns[reached, None] * height + rows[None, :]  # column-major, as COCO counts
            inside = (np.searchsorted(ends, positions, side="right") % 2 == 1).astype(np.uint8)
            mask[:, reached] = inside.T
    coded = mask_utils.encode(np.asfortranarray(mask))
    return Rle(size=[new_height, new_width], counts=coded["counts"].decode("ascii"))
