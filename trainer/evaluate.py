"""Evaluation: COCO bbox/segm mAP through pycocotools' COCOeval, and per-class IoU / mIoU for segmentation."""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval

from models import Detections, Predictor, Query, SemanticMap
from models.registry import SCORE_FLOOR
from trainer.data import IGNORE, CocoDataset, TrainingData

# Keep everything the model found (down to its score floor): COCO mAP integrates over all scores.
# COCO evaluation at the floor torchvision's references use (0.05), as every figure recorded so far was.
EVAL_QUERY = Query(score_threshold=SCORE_FLOOR, max_detections=100)
STAT_NAMES = ("mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large")


def evaluate(
    predictor: Predictor, dataset: TrainingData, limit: int | None = None, batch_size: int = 4, by: str | None = None
) -> dict[str, Any]:
    """COCO mAP or mIoU over the first `limit` images; with `by` (a key of the COCO image records, such as
    the background kind the renderers record), the same figures for each value of it too, under "by_<key>"."""
    indices = list(range(len(dataset) if limit is None else min(limit, len(dataset))))
    groups = _groups(dataset, indices, by) if by else {}
    if predictor.task == "segment":
        return _evaluate_segmentation(predictor, dataset, indices, batch_size, groups, by)
    if not isinstance(dataset, CocoDataset):  # COCOeval scores against the dataset's own COCO annotations
        raise ValueError(f"{predictor.task} evaluation needs a COCO-format dataset")
    records = predict_records(predictor, dataset, indices, batch_size)
    result = coco_metrics(dataset, records, [dataset.image_ids[i] for i in indices], predictor.task, agnostic=True)
    for name, members in groups.items():
        ids = [dataset.image_ids[i] for i in members]
        result.setdefault(f"by_{by}", {})[name] = coco_metrics(dataset, records, ids, predictor.task)
    return result


def _groups(dataset: TrainingData, indices: list[int], by: str) -> dict[str, list[int]]:
    if not isinstance(dataset, CocoDataset):
        raise ValueError(f"evaluating by {by!r} needs a COCO-format dataset")
    groups: dict[str, list[int]] = {}
    for i in indices:
        value = dataset.coco.imgs[dataset.image_ids[i]].get(by)
        if value is None:
            raise ValueError(f"image {dataset.image_ids[i]} has no {by!r} field")
        groups.setdefault(str(value), []).append(i)
    return dict(sorted(groups.items()))


def _batches(indices: list[int], size: int) -> list[list[int]]:
    return [indices[i : i + size] for i in range(0, len(indices), size)]


def detection_records(image_id: int, result: Detections) -> list[dict[str, Any]]:
    records = []
    rows = zip(result.boxes.tolist(), result.labels.tolist(), result.scores.tolist(), strict=True)
    masks = None if result.masks is None else result.masks.dense()  # val images are small
    for i, ((x1, y1, x2, y2), label, score) in enumerate(rows):
        record: dict[str, Any] = {
            "image_id": image_id,
            "category_id": int(label),
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": float(score),
        }
        if masks is not None:
            rle = mask_utils.encode(np.asfortranarray(masks[i].numpy().astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            record["segmentation"] = rle
        records.append(record)
    return records


def predict_records(
    predictor: Predictor, dataset: CocoDataset, indices: list[int], batch_size: int = 4
) -> list[dict[str, Any]]:
    """COCO result records (bbox, score, and the mask's RLE for instances) of the predictor on these images."""
    records: list[dict[str, Any]] = []
    for chunk in _batches(indices, batch_size):
        images = [dataset.read_image(i) for i in chunk]
        results = predictor.predict(images, [EVAL_QUERY] * len(images))
        for i, result in zip(chunk, results, strict=True):
            assert isinstance(result, Detections)
            records.extend(detection_records(dataset.image_ids[i], result))
    return records


def coco_metrics(
    dataset: CocoDataset, records: list[dict[str, Any]], image_ids: list[int], task: str, agnostic: bool = False
) -> dict[str, Any]:
    """COCOeval's bbox (and, for instances, segm) figures of `records` on these images of the dataset; with
    `agnostic`, also class-agnostic ones (COCOeval's useCats=0) under "agnostic": what finding the objects
    scores whatever the label, so that a gap between the two is the classifier's."""
    iou_types = ["bbox", "segm"] if task == "instances" else ["bbox"]
    result: dict[str, Any] = {iou: _coco_stats(dataset, records, image_ids, iou) for iou in iou_types}
    result["images"] = len(image_ids)
    if agnostic:
        result["agnostic"] = {iou: _coco_stats(dataset, records, image_ids, iou, use_cats=False) for iou in iou_types}
    return result


def _coco_stats(
    dataset: CocoDataset, records: list[dict[str, Any]], image_ids: list[int], iou: str, use_cats: bool = True
) -> dict[str, float]:
    if iou == "segm":
        # Without a bbox, loadRes takes each result's area from its mask (with one, from the box: a thin
        # diagonal mask would count as "large"), so COCOeval's small/medium/large split is by mask area.
        records = [{k: v for k, v in r.items() if k != "bbox"} for r in records if "segmentation" in r]
    if not records:  # loadRes refuses an empty list; nothing detected scores zero
        return dict.fromkeys(STAT_NAMES, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval reports on stdout; we print JSON there
        coco_dt = dataset.coco.loadRes(copy.deepcopy(records))
        evaluator = COCOeval(dataset.coco, coco_dt, iou)
        evaluator.params.imgIds = image_ids
        evaluator.params.useCats = int(use_cats)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: round(float(value), 4) for name, value in zip(STAT_NAMES, evaluator.stats, strict=False)}


def _evaluate_segmentation(
    predictor: Predictor,
    dataset: TrainingData,
    indices: list[int],
    batch_size: int,
    groups: dict[str, list[int]],
    by: str | None,
) -> dict[str, Any]:
    num_classes = predictor.manifest.num_classes
    per_image: dict[int, torch.Tensor] = {}
    for chunk in _batches(indices, batch_size):
        images = [dataset.read_image(i) for i in chunk]
        results = predictor.predict(images)
        for i, result in zip(chunk, results, strict=True):
            assert isinstance(result, SemanticMap)
            per_image[i] = confusion_matrix(dataset.semantic_truth(i), result.labels, num_classes)
    empty = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    scores = segmentation_scores(sum(per_image.values(), empty), dataset, len(indices))
    for name, members in groups.items():
        confusion = sum((per_image[i] for i in members), empty)
        scores.setdefault(f"by_{by}", {})[name] = segmentation_scores(confusion, dataset, len(members))
    return scores


def confusion_matrix(truth: torch.Tensor, predicted: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[true class, predicted class] pixel counts, pixels labelled IGNORE left out."""
    truth, predicted = truth.flatten(), predicted.long().flatten()
    valid = truth != IGNORE
    counts = torch.bincount(truth[valid] * num_classes + predicted[valid], minlength=num_classes**2)
    return counts.reshape(num_classes, num_classes)


def segmentation_scores(confusion: torch.Tensor, dataset: TrainingData, images: int) -> dict[str, Any]:
    """IoU per class present in the data (background included, as in the FCN paper's mean IU)."""
    names = {0: "background"} | {c.id: c.name for c in dataset.categories}
    intersection = confusion.diag().double()
    union = confusion.sum(0).double() + confusion.sum(1).double() - intersection
    per_class = {names[c]: round(float(intersection[c] / union[c]), 4) for c in names if union[c] > 0}
    pixel_acc = float(intersection.sum() / confusion.sum().clamp(min=1))
    return {
        "mIoU": round(sum(per_class.values()) / max(1, len(per_class)), 4),
        "pixel_accuracy": round(pixel_acc, 4),
        "iou": per_class,
        "images": images,
    }
