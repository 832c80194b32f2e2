"""Boolean masks to COCO compressed RLE, the wire format of every mask the service returns."""

from __future__ import annotations

from typing import TypedDict

import numpy as np
import torch
from pycocotools import mask as mask_utils

from service.scaling import upsample_nearest


class Rle(TypedDict):
    size: list[int]  # [height, width], as pycocotools expects
    counts: str


def encode_masks(masks: torch.Tensor, size: tuple[int, int] | None = None) -> list[Rle]:
    """[N, h, w] bool masks to N RLEs that `pycocotools.mask.decode` turns back into exactly these masks.

    With `size` (H, W) other than (h, w), each mask is first upsampled to it (nearest neighbour), one at
    a time, so memory holds one full-size mask rather than N.
    """
    if masks.ndim != 3:
        raise ValueError(f"expected masks of shape [N, H, W], got {tuple(masks.shape)}")
    if masks.shape[0] == 0:
        return []
    if size is not None and size != tuple(masks.shape[-2:]):
        return [encode_masks(upsample_nearest(mask, size)[None])[0] for mask in masks]
    # pycocotools reads column-major H x W x N uint8; anything else is silently misread.
    stacked = np.asfortranarray(masks.to(torch.uint8).permute(1, 2, 0).numpy())
    encoded = mask_utils.encode(stacked)
    # JSON has no bytes: the counts string is ASCII by construction (COCO's LEB128-like alphabet).
    return [Rle(size=[int(s) for s in rle["size"]], counts=rle["counts"].decode("ascii")) for rle in encoded]


def encode_mask(mask: torch.Tensor) -> Rle:
    return encode_masks(mask[None])[0]


def mask_areas(rles: list[Rle]) -> list[int]:
    """Pixels in each mask, read off its RLE (exact, and no need to keep the mask itself)."""
    if not rles:
        return []
    coded = [{"size": rle["size"], "counts": rle["counts"].encode("ascii")} for rle in rles]
    return [int(area) for area in mask_utils.area(coded)]
