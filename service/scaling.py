"""Between the upload's pixel grid and the smaller one the model saw (see imaging.Limits.max_side).

Boxes are scaled back at once (they are small). Instance masks stay Mask R-CNN's small per-box grids,
now covering the upload's pixels: they are pasted at that resolution box by box while encoding, as
torchvision pastes after its own resize, so no full-size mask ever exists (a 40-megapixel upload with
100 instances stays within a few tens of MB). A label map is upsampled once, by nearest neighbour.
"""

from __future__ import annotations

import dataclasses

import torch

from models import Detections, SemanticMap
from service.imaging import DecodedImage

Result = Detections | SemanticMap


def to_upload_coordinates(result: Result, image: DecodedImage) -> Result:
    """Boxes and instance masks in the uploaded image's pixels; label maps are left for `upsample_nearest`."""
    if not image.scaled or not isinstance(result, Detections):
        return result
    masks = None if result.masks is None else result.masks.rescaled((image.height, image.width))
    height, width = image.tensor.shape[-2:]
    sx, sy = image.width / width, image.height / height
    boxes = result.boxes * torch.tensor([sx, sy, sx, sy], dtype=result.boxes.dtype)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, image.width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, image.height)
    return dataclasses.replace(result, boxes=boxes, masks=masks)


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
