from __future__ import annotations

import random

import numpy as np
import torch
from pycocotools import mask as mask_utils

from trainer.data import IGNORE, hflip, rcnn_target, segmentation_batch, semantic_target


def _rle(mask: np.ndarray) -> dict[str, object]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode()
    return rle


def _ann(category: int, mask: np.ndarray, iscrowd: int = 0) -> dict[str, object]:
    ys, xs = np.nonzero(mask)
    bbox = [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min())]
    return {"category_id": category, "segmentation": _rle(mask), "area": float(mask.sum()), "bbox": bbox,
            "iscrowd": iscrowd}  # fmt: skip


def test_semantic_target_paints_small_objects_over_large_and_ignores_crowds() -> None:
    big = np.zeros((20, 30), bool)
    big[2:18, 2:28] = True
    small = np.zeros((20, 30), bool)
    small[5:9, 5:9] = True
    crowd = np.zeros((20, 30), bool)
    crowd[15:20, 0:2] = True
    target = semantic_target([_ann(1, small), _ann(2, big), _ann(3, crowd, iscrowd=1)], 20, 30)["mask"]
    assert target[6, 6] == 1  # the small circle stays visible on the big square
    assert target[10, 20] == 2
    assert target[0, 0] == 0
    assert target[16, 0] == IGNORE


def test_rcnn_target_and_flip_keep_boxes_on_their_masks() -> None:
    mask = np.zeros((10, 16), bool)
    mask[2:5, 1:4] = True
    polygon = {"category_id": 2, "segmentation": [[10, 6, 14, 6, 14, 9, 10, 9]], "area": 12.0,
               "bbox": [10.0, 6.0, 4.0, 3.0], "iscrowd": 0}  # fmt: skip
    target = rcnn_target([_ann(1, mask), polygon], 10, 16)
    assert target["boxes"].tolist() == [[1, 2, 4, 5], [10, 6, 14, 9]]
    assert target["masks"].shape == (2, 10, 16)
    image = torch.zeros(3, 10, 16, dtype=torch.uint8)
    _, flipped = hflip(image, target)
    assert flipped["boxes"][0].tolist() == [12, 2, 15, 5]
    cols = flipped["masks"][0].any(0).nonzero().flatten()
    assert (cols.min().item(), cols.max().item() + 1) == (12, 15)


def test_segmentation_crops_bound_the_batch_and_keep_pixels_on_their_labels() -> None:
    random.seed(0)
    # Each pixel's label is its value (in 20 px blocks), so a crop that moved image and labels apart would show.
    images, targets = [], []
    for height, width in ((300, 500), (100, 90)):
        rows, cols = torch.arange(height)[:, None] // 20, torch.arange(width)[None, :] // 20
        labels = (rows + cols) % 4
        images.append((labels * 60).to(torch.uint8).expand(3, height, width).contiguous())
        targets.append({"mask": labels})
    zero, one = torch.zeros(3, 1, 1), torch.ones(3, 1, 1)
    x, y = segmentation_batch(images, targets, 320, zero, one, crop=128)
    assert x.shape == (2, 3, 128, 128)
    assert y.shape == (2, 128, 128)
    assert (y[1, 100:] == IGNORE).all()
    assert (y[1, :, 90:] == IGNORE).all()
    # Nearest-neighbour labels against bilinear pixels: compare where the image is flat (all four neighbours agree).
    kept = y[0]
    flat = (kept[1:-1, 1:-1] == kept[:-2, 1:-1]) & (kept[1:-1, 1:-1] == kept[2:, 1:-1])
    flat &= (kept[1:-1, 1:-1] == kept[1:-1, :-2]) & (kept[1:-1, 1:-1] == kept[1:-1, 2:])
    pixels = (x[0, 0, 1:-1, 1:-1] * 255 / 60).round().long()
    assert flat.float().mean() > 0.5
    assert (pixels[flat] == kept[1:-1, 1:-1][flat]).float().mean() > 0.95
    whole, _ = segmentation_batch(images, targets, 320, zero, one)
    assert whole.shape[-2:] == (192, 320)
