"""Predictor results to response schemas (overlay pictures: service/render.py). CPU work: off the event loop."""

from __future__ import annotations

from collections.abc import Mapping

from models import Detections, Manifest, SemanticMap
from service.rle import encode_label_map, encode_regions
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
    """Masks are encoded from their box regions at the size they cover (the upload's): never N full-frame
    masks."""
    if result.masks is None:
        raise ValueError("instance results carry masks")
    rles, areas = encode_regions(result.masks.regions(), result.masks.size)
    return [
        InstanceDetection(**det.model_dump(), area=int(area), mask=Mask(**rle))
        for det, area, rle in zip(detections(result, names), areas, rles, strict=True)
    ]


def segments(result: SemanticMap, names: Mapping[int, str]) -> list[Segment]:
    return [
        Segment(label=_label(names, label_id), label_id=label_id, area=area, mask=Mask(**rle))
        for label_id, (rle, area) in sorted(encode_label_map(result.labels).items())
    ]


def _box(box: list[float]) -> list[float]:
    return [round(v, 2) for v in box]
