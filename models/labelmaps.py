"""Class scores to a label map at any size: bilinear upsampling, then the best class per pixel, in bands.

The segmentation predictor computes scores at the network's input size and answers in the frame results
refer to (the upload's pixels), which may be far larger: a 40-megapixel upload's upsampled scores would be
classes x 40 M floats at once. Row bands bound that to about `BAND_PIXELS` per class. Each band is
interpolated across the width by `torch.nn.functional.interpolate` (bilinear, align_corners=False) on just
the input rows it needs, then blended between rows with interpolate's own weights, so every size gets the
same values as one whole-frame interpolate (up to float rounding), as fast, and the service's answer and the
trainer's evaluation are one computation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

BAND_PIXELS = 1 << 18


def source_rows(out: int, inp: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """For each of `out` output rows: the two input rows it blends and the second one's weight (half-pixel
    centres, clamped at the edges: interpolate's align_corners=False)."""
    scale = inp / out
    source = ((torch.arange(out, device=device, dtype=torch.float32) + 0.5) * scale - 0.5).clamp_(min=0)
    first = source.floor().long().clamp_(max=inp - 1)
    second = (first + 1).clamp_(max=inp - 1)
    return first, second, source - first


def label_map(scores: Tensor, size: tuple[int, int], dtype: torch.dtype = torch.uint8) -> Tensor:
    """`scores` [K, h, w] bilinearly upsampled to `size` (H, W), and the first best class of each pixel."""
    height, width = size
    if tuple(scores.shape[-2:]) == (height, width):
        return scores.max(0).indices.to(dtype)
    top, bottom, weight = source_rows(height, scores.shape[-2], scores.device)
    labels = torch.empty((height, width), dtype=dtype, device=scores.device)
    rows = max(1, BAND_PIXELS // width)
    for start in range(0, height, rows):
        band = slice(start, start + rows)
        first, last = int(top[band][0]), int(bottom[band][-1]) + 1
        wide = F.interpolate(scores[None, :, first:last], size=(last - first, width), mode="bilinear",
                             align_corners=False)[0]  # fmt: skip
        blended = torch.lerp(
            wide.index_select(1, top[band] - first),
            wide.index_select(1, bottom[band] - first),
            weight[band].view(1, -1, 1).to(scores.dtype),
        )
        # max().indices, not argmax(): the same indices (first maximum on ties), but torch's CPU argmax over
        # the class dimension is far slower.
        labels[band] = blended.max(0).indices.to(dtype)
    return labels
