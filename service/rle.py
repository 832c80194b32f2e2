"""Boolean masks to COCO compressed RLE, the wire format of every mask the service returns."""

from __future__ import annotations

from typing import TypedDict

import numpy as np
import torch
from pycocotools import mask as mask_utils


class Rle(TypedDict):
    size: list[int]  # [height, width], as pycocotools expects
    counts: str


def encode_masks(masks: torch.Tensor) -> list[Rle]:
    """[N, H, W] bool masks to N RLEs that `pycocotools.mask.decode` turns back into exactly these masks."""
    if masks.ndim != 3:
        raise ValueError(f"expected masks of shape [N, H, W], got {tuple(masks.shape)}")
    if masks.shape[0] == 0:
        return []
    # pycocotools reads column-major H x W x N uint8; anything else is silently misread.
    stacked = np.asfortranarray(masks.to(torch.uint8).permute(1, 2, 0).numpy())
    encoded = mask_utils.encode(stacked)
    # JSON has no bytes: the counts string is ASCII by construction (COCO's LEB128-like alphabet).
    return [Rle(size=[int(s) for s in rle["size"]], counts=rle["counts"].decode("ascii")) for rle in encoded]


def encode_mask(mask: torch.Tensor) -> Rle:
    return encode_masks(mask[None])[0]
