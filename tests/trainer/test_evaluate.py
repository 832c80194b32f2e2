"""The evaluation against oracles: perfect answers score 1.0, a known mistake costs a known amount."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from models import Category
from trainer.data import IGNORE, CocoDataset
from trainer.evaluate import coco_metrics, confusion_matrix, segmentation_scores


def _rle(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _dataset(tmp_path: Path, masks: list[tuple[int, np.ndarray]]) -> CocoDataset:
    """One 100 x 120 image whose objects are `masks` (category, mask); annotations as the renderers write them."""
    (tmp_path / "annotations").mkdir()
    annotations = []
    for k, (category, mask) in enumerate(masks, start=1):
        ys, xs = np.nonzero(mask)
        bbox = [int(xs.min()), int(ys.min()), int(xs.max() + 1 - xs.min()), int(ys.max() + 1 - ys.min())]
        annotations.append({"id": k, "image_id": 1, "category_id": category, "segmentation": _rle(mask),
                            "bbox": bbox, "area": int(mask.sum()), "iscrowd": 0})  # fmt: skip
    categories = [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}]
    image = {"id": 1, "file_name": "a.png", "width": 120, "height": 100, "background": "solid"}
    coco = {"images": [image], "annotations": annotations, "categories": categories}
    (tmp_path / "annotations" / "val.json").write_text(json.dumps(coco))
    return CocoDataset(tmp_path, "val", "instances")


def _rect(top: int, left: int, height: int, width: int) -> np.ndarray:
    mask = np.zeros((100, 120), bool)
    mask[top : top + height, left : left + width] = True
    return mask


def _truth_as_results(dataset: CocoDataset) -> list[dict[str, Any]]:
    anns = dataset.coco.loadAnns(dataset.coco.getAnnIds())
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]),
             "score": 1.0 - 0.1 * k, "segmentation": dict(a["segmentation"])} for k, a in enumerate(anns)]  # fmt: skip


def test_ground_truth_fed_back_scores_one(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path, [(1, _rect(5, 5, 30, 30)), (1, _rect(50, 60, 20, 25)), (2, _rect(10, 70, 40, 40))])
    metrics = coco_metrics(dataset, _truth_as_results(dataset), [1], "instances")
    for iou in ("bbox", "segm"):
        assert metrics[iou]["mAP"] == pytest.approx(1.0)
        assert metrics[iou]["mAP50"] == pytest.approx(1.0)


def test_every_label_wrong_scores_zero_yet_one_class_agnostic(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path, [(1, _rect(5, 5, 30, 30)), (2, _rect(10, 70, 40, 40))])
    swapped = [{**r, "category_id": 3 - r["category_id"]} for r in _truth_as_results(dataset)]
    metrics = coco_metrics(dataset, swapped, [1], "instances", agnostic=True)
    for iou in ("bbox", "segm"):
        assert metrics[iou]["mAP50"] == pytest.approx(0.0)
        assert metrics["agnostic"][iou]["mAP50"] == pytest.approx(1.0)
    assert "agnostic" not in coco_metrics(dataset, swapped, [1], "instances")


def test_one_box_shifted_off_its_object_costs_its_share_of_recall(tmp_path: Path) -> None:
    """Four circles; the lowest-scoring answer is moved off its object (IoU 0). Precision stays 1 up to
    recall 3/4 and recall never reaches 1: COCO's 101-point AP is 76/101 at every IoU threshold."""
    dataset = _dataset(tmp_path, [(1, _rect(5 + 22 * k, 5 + 25 * k, 15, 15)) for k in range(4)])
    results = _truth_as_results(dataset)
    results[-1]["bbox"][0] += 40
    metrics = coco_metrics(dataset, results, [1], "detect")
    assert metrics["bbox"]["mAP50"] == pytest.approx(76 / 101, abs=1e-4)
    assert metrics["bbox"]["mAP"] == pytest.approx(76 / 101, abs=1e-4)


def test_segm_results_are_split_small_medium_large_by_mask_area(tmp_path: Path) -> None:
    """A small square, found, and a false positive that is a thin diagonal mask: small by its area (300 px,
    under COCO's 32 x 32), large by its box (100 x 102). Scoring higher than the hit, it halves segm's
    AP_small; for boxes it is a large answer, outside AP_small's range."""
    dataset = _dataset(tmp_path, [(1, _rect(5, 5, 20, 20))])
    diagonal = np.zeros((100, 120), bool)
    for y in range(100):
        diagonal[y, y + 15 : y + 18] = True
    false = {"image_id": 1, "category_id": 1, "bbox": [15, 0, 102, 100], "score": 0.99, "segmentation": _rle(diagonal)}
    hit = {**_truth_as_results(dataset)[0], "score": 0.5}
    metrics = coco_metrics(dataset, [hit, false], [1], "instances")
    assert metrics["segm"]["mAP_small"] == pytest.approx(0.5, abs=0.01)
    assert metrics["bbox"]["mAP_small"] == pytest.approx(1.0)


def test_per_class_iou_of_a_hand_made_label_map() -> None:
    truth = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, IGNORE]])
    predicted = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 2], [2, 2, 0, 0]])
    confusion = confusion_matrix(truth, predicted, 3)
    assert int(confusion.sum()) == 11  # the ignored pixel is not counted

    class Named:
        categories = [Category(1, "circle"), Category(2, "square")]

    scores = segmentation_scores(confusion, Named(), 1)  # type: ignore[arg-type]
    # background: 3 right of 4 true and 4 predicted -> 3 / 5; circle: 3 of 4 true, 4 predicted -> 3 / 5;
    # square: 2 of 3 true, 3 predicted -> 2 / 4.
    assert scores["iou"] == {"background": 0.6, "circle": 0.6, "square": 0.5}
    assert scores["mIoU"] == pytest.approx((0.6 + 0.6 + 0.5) / 3, abs=1e-4)
    assert scores["pixel_accuracy"] == pytest.approx(8 / 11, abs=1e-4)
