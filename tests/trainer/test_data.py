from __future__ import annotations

import numpy as np
import torch
from pycocotools import mask as mask_utils

from trainer.data import IGNORE, rcnn_target, segmentation_batch, semantic_target


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


def test_rcnn_targets_put_boxes_on_their_masks() -> None:
    mask = np.zeros((10, 16), bool)
    mask[2:5, 1:4] = True
    polygon = {"category_id": 2, "segmentation": [[10, 6, 14, 6, 14, 9, 10, 9]], "area": 12.0,
               "bbox": [10.0, 6.0, 4.0, 3.0], "iscrowd": 0}  # fmt: skip
    target = rcnn_target([_ann(1, mask), polygon, _ann(3, mask, iscrowd=1)], 10, 16)
    assert target["boxes"].tolist() == [[1, 2, 4, 5], [10, 6, 14, 9]]  # the crowd (ignored) shape is no target
    assert target["labels"].tolist() == [1, 2]
    assert target["masks"].shape == (2, 10, 16)
    assert torch.equal(target["masks"][0].bool(), torch.from_numpy(mask))


def test_segmentation_batches_pad_with_the_ignore_label() -> None:
    images = [torch.rand(3, 40, 70), torch.randint(0, 256, (3, 64, 33), dtype=torch.uint8)]
    targets = [{"mask": torch.ones(40, 70, dtype=torch.long)}, {"mask": torch.full((64, 33), 2, dtype=torch.long)}]
    zero, one = torch.zeros(3, 1, 1), torch.ones(3, 1, 1)
    x, y = segmentation_batch(images, targets, zero, one)
    assert x.shape == (2, 3, 64, 96)
    assert torch.equal(x[0, :, :40, :70], images[0])
    assert torch.allclose(x[1, :, :64, :33], images[1].float() / 255)
    assert bool((y[0, :40, :70] == 1).all())
    assert bool((y[0, 40:] == IGNORE).all())
    assert bool((y[1, :, 33:] == IGNORE).all())
