"""Instance masks kept as Mask R-CNN's small per-box probability grids, and masks as run lengths.

torchvision pastes every instance's M x M grid into a full-frame float image: N x H x W floats (100
instances on a 1333 x 800 upload: 400 MB). A pasted mask is zero outside its (slightly expanded) box,
so pasting into the box region alone gives the same pixels; and the COCO run lengths of a full-frame
mask follow from where its region's columns change value. `run_lengths` finds those changes on the
mask's device, so only a few integers per mask cross to the host, never a mask.

Regions are made lazily and run-length coded a chunk at a time (a chunk closes once it holds
`CHUNK_PIXELS` region pixels), each chunk freed before the next region is pasted: memory grows with the
largest box, never with the sum of all boxes' areas (100 large boxes on a 40-megapixel upload would be
gigabytes), and on a GPU a chunk of small masks still costs one device-to-host copy.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.roi_heads import expand_boxes

# torchvision pastes each grid padded by one pixel into its box grown by the same proportion.
_PADDING = 1
# A chunk closes once its regions hold this many pixels: a few bytes each while coded (mask, flags, copy).
CHUNK_PIXELS = 1 << 22


@dataclass(frozen=True)
class Region:
    """The part of an [H, W] mask that can be nonzero: `mask` [h, w] placed at row `top`, column `left`."""

    mask: Tensor
    top: int
    left: int


@dataclass(frozen=True)
class InstanceMasks:
    probs: Tensor  # float [N, M, M]: each instance's mask probabilities over its box
    boxes: Tensor  # float [N, 4]: the boxes the grids cover, x1 y1 x2 y2 in image pixels, not clamped
    size: tuple[int, int]  # (height, width) of the image the masks cover
    threshold: float = 0.5  # a pixel is in where its probability is >= this (> 0: see regions())

    def __len__(self) -> int:
        return int(self.probs.shape[0])

    def regions(self) -> Iterator[Region]:
        """Each mask thresholded within its box only: exactly the pixels of torchvision's
        `paste_masks_in_image(...) >= threshold`, given that a pixel outside every box is out.
        Lazy: each region is pasted when it is asked for, so a consumer may hold one at a time."""
        if self.threshold <= 0:
            raise ValueError("a mask threshold of 0 or less would put every pixel of the image in the mask")
        if len(self) == 0:
            return iter(())
        height, width = self.size
        size = self.probs.shape[-1]
        padded = F.pad(self.probs[:, None], (_PADDING,) * 4)
        boxes = expand_boxes(self.boxes, (size + 2 * _PADDING) / size).to(torch.int64).tolist()
        return (_paste(grid, box, height, width, self.threshold) for grid, box in zip(padded, boxes, strict=True))

    def dense(self) -> Tensor:
        """All masks at full resolution, bool [N, H, W] on the CPU: for tests, evaluation and drawing."""
        out = torch.zeros((len(self), *self.size), dtype=torch.bool)
        for plane, region in zip(out, self.regions(), strict=True):
            h, w = region.mask.shape
            plane[region.top : region.top + h, region.left : region.left + w] = region.mask.cpu()
        return out


def _paste(grid: Tensor, box: list[int], height: int, width: int, threshold: float) -> Region:
    # The arithmetic of torchvision.models.detection.roi_heads.paste_mask_in_image, cropped to the image.
    x1, y1, x2, y2 = box
    w, h = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
    left, right = max(x1, 0), min(x2 + 1, width)
    top, bottom = max(y1, 0), min(y2 + 1, height)
    if right <= left or bottom <= top:  # the box lies outside the image
        return Region(grid.new_zeros((0, 0), dtype=torch.bool), 0, 0)
    resized = F.interpolate(grid[None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    return Region(resized[top - y1 : bottom - y1, left - x1 : right - x1] >= threshold, top, left)


def run_lengths(regions: Iterable[Region], size: tuple[int, int], chunk_pixels: int = CHUNK_PIXELS) -> list[np.ndarray]:
    """COCO's uncompressed RLE counts of each mask on an [H, W] image: alternating runs of 0s and 1s in
    column-major order, starting with 0s. `regions` is consumed a chunk at a time: regions are taken until
    they reach `chunk_pixels`, then coded and let go before the next is taken (so at most `chunk_pixels`
    plus the largest region's pixels are held at once)."""
    counts: list[np.ndarray] = []
    chunk: list[Region] = []
    pixels = 0
    for region in regions:
        chunk.append(region)
        pixels += region.mask.numel()
        del region  # the chunk alone holds it: freed with the chunk
        if pixels >= chunk_pixels:  # coded before the next region is pasted
            counts += _chunk_run_lengths(chunk, size)
            chunk, pixels = [], 0
    if chunk:
        counts += _chunk_run_lengths(chunk, size)
    return counts


def _chunk_run_lengths(regions: Sequence[Region], size: tuple[int, int]) -> list[np.ndarray]:
    """run_lengths of a few regions: one device-to-host copy for all of them, of change positions."""
    height, width = size
    total = height * width
    if not regions:
        return []
    flags, heights, tops, lefts = [], [], [], []
    for region in regions:
        # A zero row above and below each column: a change between rows i-1 and i of the padded column
        # is a change at full-frame row top + i - 1, whatever lies outside the region (zeros).
        column_major = F.pad(region.mask.t().to(torch.uint8), (1, 1))
        flags.append((column_major[:, 1:] != column_major[:, :-1]).reshape(-1))
        heights.append(region.mask.shape[0] + 1)
        tops.append(region.top)
        lefts.append(region.left)
    device = flags[0].device
    lengths = torch.tensor([f.numel() for f in flags], device=device)
    ends = lengths.cumsum(0)
    hits = (torch.cat(flags) if len(flags) > 1 else flags[0]).nonzero().squeeze(1)
    del flags
    owner = torch.searchsorted(ends, hits, right=True)
    local = hits - (ends - lengths)[owner]
    stride = torch.tensor(heights, device=device)[owner]
    column = torch.tensor(lefts, device=device)[owner] + local // stride
    position = column * height + torch.tensor(tops, device=device)[owner] + local % stride
    # One copy to the host; each mask's changes are contiguous and sorted.
    position_np, owner_np = position.cpu().numpy(), owner.cpu().numpy()
    bounds = np.searchsorted(owner_np, np.arange(len(regions) + 1))
    return [_counts(position_np[a:b], total) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _counts(changes: np.ndarray, total: int) -> np.ndarray:
    # A region as tall as the image ends one column with a 1->0 change at the very position where the
    # next column starts with 0->1: the pair cancels (the run of 1s continues).
    same = changes[1:] == changes[:-1]
    if same.any():
        drop = np.zeros(len(changes), dtype=bool)
        drop[1:] |= same
        drop[:-1] |= same
        changes = changes[~drop]
    if len(changes) and changes[-1] == total:  # a mask whose last pixel is in: COCO ends on that run
        changes = changes[:-1]
    return np.diff(changes, prepend=0, append=total)
