"""Masks to COCO compressed RLE, the wire format of every mask the service returns.

Run lengths are computed where the masks are (models.run_lengths: on the GPU when serving there), from
each mask's region only; pycocotools then writes them in COCO's compressed string alphabet, so
`pycocotools.mask.decode` gives back exactly the full-frame masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import numpy as np
import torch
from pycocotools import mask as mask_utils

from models import Region, run_lengths


class Rle(TypedDict):
    size: list[int]  # [height, width], as pycocotools expects
    counts: str


def encode_regions(regions: Sequence[Region], size: tuple[int, int]) -> tuple[list[Rle], list[int]]:
    """Masks given by their regions on an image of `size` (height, width): their RLEs and pixel areas."""
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
