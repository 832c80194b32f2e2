"""Predictor results to response schemas. CPU work (mask encoding): call it off the event loop."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from models import Detections, Manifest, SemanticMap
from service.rle import encode_masks
from service.schemas import Detection, InstanceDetection, Mask, ModelInfo, Segment


def model_info(manifest: Manifest) -> ModelInfo:
    return ModelInfo(task=manifest.task, name=manifest.arch, version=manifest.version)


def _label(names: Mapping[int, str], label_id: int) -> str:
    # A model may predict an id its manifest does not name (e.g. an imported checkpoint): still answer.
    return names.get(label_id, f"class_{label_id}")


def detections(result: Detections, names: Mapping[int, str]) -> list[Detection]:
    return [
        Detection(label=_label(names, label_id), label_id=label_id, score=round(score, 4), box=_box(box))
        for box, label_id, score in zip(
            result.boxes.tolist(), result.labels.tolist(), result.scores.tolist(), strict=True
        )
    ]


def instances(result: Detections, names: Mapping[int, str]) -> list[InstanceDetection]:
    if result.masks is None:
        raise ValueError("instance results carry masks")
    rles = encode_masks(result.masks)
    areas = result.masks.flatten(1).sum(1).tolist() if len(result.masks) else []
    return [
        InstanceDetection(**det.model_dump(), area=int(area), mask=Mask(**rle))
        for det, area, rle in zip(detections(result, names), areas, rles, strict=True)
    ]


def segments(result: SemanticMap, names: Mapping[int, str]) -> list[Segment]:
    labels = result.labels
    present = [int(i) for i in torch.unique(labels).tolist() if i != 0]  # 0 is background
    if not present:
        return []
    # One mask per class of a single label map: disjoint by construction.
    masks = torch.stack([labels == i for i in present])
    rles = encode_masks(masks)
    areas = masks.flatten(1).sum(1).tolist()
    return [
        Segment(label=_label(names, i), label_id=i, area=int(area), mask=Mask(**rle))
        for i, area, rle in zip(present, areas, rles, strict=True)
    ]


def _box(box: list[float]) -> list[float]:
    return [round(v, 2) for v in box]
