"""Test helpers for masks: whole masks to RLE through the service's encoder, areas read off RLEs, and
exact nearest-neighbour upsampling (the service itself encodes mask regions: service.rle.encode_regions)."""

from __future__ import annotations

import numpy as np
import torch
from pycocotools import mask as mask_utils

from models import Region
from service.rle import Rle, encode_regions


def _nearest(source: int, target: int) -> torch.Tensor:
    # Index of the source pixel whose centre is nearest each target pixel's centre, in exact integers.
    return ((torch.arange(target) * 2 + 1) * source).div(2 * target, rounding_mode="floor").clamp_(max=source - 1)


def upsample_nearest(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """An [h, w] mask (or label map) on an [H, W] grid; each output pixel copies the nearest input pixel."""
    height, width = size
    if tuple(mask.shape) == (height, width):
        return mask
    rows, cols = _nearest(mask.shape[0], height), _nearest(mask.shape[1], width)
    return mask.index_select(0, rows).index_select(1, cols)


def encode_masks(masks: torch.Tensor, size: tuple[int, int] | None = None) -> list[Rle]:
    """[N, h, w] bool masks to N RLEs that `pycocotools.mask.decode` turns back into exactly these masks.

    With `size` (H, W) other than (h, w), each mask is first upsampled to it (nearest neighbour).
    """
    if masks.ndim != 3:
        raise ValueError(f"expected masks of shape [N, H, W], got {tuple(masks.shape)}")
    if size is not None and size != tuple(masks.shape[-2:]):
        masks = torch.stack([upsample_nearest(mask, size) for mask in masks]) if len(masks) else masks
    shape = (int(masks.shape[-2]), int(masks.shape[-1])) if size is None else size
    return encode_regions([Region(mask, 0, 0) for mask in masks], shape)[0]


def encode_mask(mask: torch.Tensor) -> Rle:
    return encode_masks(mask[None])[0]


def mask_areas(rles: list[Rle]) -> list[int]:
    """Pixels in each mask, read off its RLE (exact, and no need to keep the mask itself)."""
    if not rles:
        return []
    coded = [{"size": rle["size"], "counts": rle["counts"].encode("ascii")} for rle in rles]
    return [int(area) for area in np.asarray(mask_utils.area(coded))]
