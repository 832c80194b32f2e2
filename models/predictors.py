"""Predictors: a model plus the pre- and post-processing it needs, one class per task.

Input: uint8 CHW tensors of any sizes (a batch may mix sizes). Output per image, in that image's own
pixel coordinates: boxes/labels/scores, full-resolution boolean instance masks, or a label map.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.registry import MAX_DETECTIONS, build_model
from models.store import Manifest, StoreError, load_entry


@dataclass(frozen=True)
class Query:
    """Per-image filtering, applied after the forward pass so one batch can serve different requests."""

    score_threshold: float = 0.5
    max_detections: int = MAX_DETECTIONS
    class_ids: frozenset[int] | None = None
    mask_threshold: float = 0.5


@dataclass
class Detections:
    boxes: Tensor  # float32 [N, 4], x1 y1 x2 y2 in input pixels, sorted by descending score
    labels: Tensor  # int64 [N], dataset category ids
    scores: Tensor  # float32 [N]
    masks: Tensor | None = None  # bool [N, H, W] at the input's resolution (instances only)


@dataclass
class SemanticMap:
    labels: Tensor  # uint8 (int32 past 256 classes) [H, W]; 0 is background


Result = Detections | SemanticMap


def check_image(image: Tensor) -> None:
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a uint8 tensor of shape [3, H, W], got {image.dtype} {tuple(image.shape)}")
    if image.shape[1] < 1 or image.shape[2] < 1:
        raise ValueError(f"empty image of shape {tuple(image.shape)}")


class Predictor(ABC):
    task: ClassVar[str]

    def __init__(self, model: nn.Module, manifest: Manifest, device: torch.device | str = "cpu") -> None:
        if manifest.task != self.task:
            raise ValueError(f"{type(self).__name__} serves {self.task!r}, manifest is for {manifest.task!r}")
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.manifest = manifest

    @torch.inference_mode()
    def predict(self, images: Sequence[Tensor], queries: Sequence[Query] | None = None) -> list[Result]:
        """Predict a batch; `queries[i]` filters the results of `images[i]` (defaults when omitted)."""
        if queries is None:
            queries = [Query()] * len(images)
        if len(queries) != len(images):
            raise ValueError(f"{len(images)} images but {len(queries)} queries")
        if not images:
            return []
        for image in images:
            check_image(image)
        return self._predict(images, queries)

    def warmup(self, height: int = 240, width: int = 320) -> None:
        """One forward pass on a blank image, so the first request does not pay for lazy initialisation."""
        self.predict([torch.zeros(3, height, width, dtype=torch.uint8)])

    @abstractmethod
    def _predict(self, images: Sequence[Tensor], queries: Sequence[Query]) -> list[Result]: ...

    def _to_device(self, image: Tensor) -> Tensor:
        return image.to(self.device, non_blocking=True).float().div_(255)


class DetectionPredictor(Predictor):
    """Faster R-CNN (and Mask R-CNN's boxes): torchvision resizes and normalises inside the model."""

    task = "detect"

    def limit_detections(self, count: int) -> None:
        """Keep at most `count` detections per image inside the model, before Mask R-CNN pastes masks."""
        roi_heads = getattr(self.model, "roi_heads", None)
        if roi_heads is not None:
            roi_heads.detections_per_img = min(count, roi_heads.detections_per_img)

    def _predict(self, images: Sequence[Tensor], queries: Sequence[Query]) -> list[Result]:
        outputs = self.model([self._to_device(img) for img in images])
        return [self._select(out, img, q) for out, img, q in zip(outputs, images, queries, strict=True)]

    def _select(self, output: dict[str, Tensor], image: Tensor, query: Query) -> Detections:
        scores = output["scores"]
        keep = scores >= query.score_threshold
        if query.class_ids is not None:
            ids = torch.tensor(sorted(query.class_ids), device=scores.device, dtype=output["labels"].dtype)
            keep &= torch.isin(output["labels"], ids)
        # torchvision returns detections sorted by score, so the first max_detections kept are the best.
        index = keep.nonzero().flatten()[: query.max_detections]
        height, width = image.shape[-2:]
        boxes = output["boxes"][index]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        masks = None
        if "masks" in output:
            masks = (output["masks"][index, 0] >= query.mask_threshold).cpu()
        return Detections(boxes.float().cpu(), output["labels"][index].cpu(), scores[index].float().cpu(), masks)


class InstancePredictor(DetectionPredictor):
    """Mask R-CNN: boxes as for detection plus one full-resolution mask per kept instance."""

    task = "instances"


class SegmentationPredictor(Predictor):
    """FCN: normalise, shrink to `max_size`, pad the batch to a common size, upsample logits back."""

    task = "segment"

    def __init__(self, model: nn.Module, manifest: Manifest, device: torch.device | str = "cpu") -> None:
        super().__init__(model, manifest, device)
        spec = manifest.input
        self.max_size = int(spec.get("max_size") or 0)
        self.size_divisor = int(spec.get("size_divisor", 32))
        self.mean = torch.tensor(spec["mean"], device=self.device).view(3, 1, 1)
        self.std = torch.tensor(spec["std"], device=self.device).view(3, 1, 1)
        self.label_dtype = torch.uint8 if manifest.num_classes <= 256 else torch.int32

    def _predict(self, images: Sequence[Tensor], queries: Sequence[Query]) -> list[Result]:
        prepared = [self._prepare(img) for img in images]
        logits = self.model(self._pad(prepared))["out"]
        results: list[Result] = []
        for i, (image, x, query) in enumerate(zip(images, prepared, queries, strict=True)):
            scores = logits[i : i + 1, :, : x.shape[-2], : x.shape[-1]]
            if scores.shape[-2:] != image.shape[-2:]:
                scores = F.interpolate(scores, size=image.shape[-2:], mode="bilinear", align_corners=False)
            labels = scores[0].argmax(0)
            if query.class_ids is not None:
                wanted = torch.tensor(sorted(query.class_ids), device=labels.device, dtype=labels.dtype)
                labels[~torch.isin(labels, wanted)] = 0
            results.append(SemanticMap(labels.to(self.label_dtype).cpu()))
        return results

    def _prepare(self, image: Tensor) -> Tensor:
        x = (self._to_device(image) - self.mean) / self.std
        longest = max(x.shape[-2:])
        if self.max_size and longest > self.max_size:
            scale = self.max_size / longest
            size = [max(1, round(s * scale)) for s in x.shape[-2:]]
            x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
        return x

    def _pad(self, tensors: list[Tensor]) -> Tensor:
        # Zero after normalisation is the mean colour: padding looks like neutral background.
        d = self.size_divisor
        height = -(-max(t.shape[-2] for t in tensors) // d) * d
        width = -(-max(t.shape[-1] for t in tensors) // d) * d
        batch = tensors[0].new_zeros((len(tensors), 3, height, width))
        for i, t in enumerate(tensors):
            batch[i, :, : t.shape[-2], : t.shape[-1]] = t
        return batch


PREDICTORS: dict[str, type[Predictor]] = {
    cls.task: cls for cls in (DetectionPredictor, InstancePredictor, SegmentationPredictor)
}


def make_predictor(model: nn.Module, manifest: Manifest, device: torch.device | str = "cpu") -> Predictor:
    return PREDICTORS[manifest.task](model, manifest, device)


def load_predictor(store: Path | str, task: str, device: torch.device | str = "cpu") -> Predictor:
    """Build the manifest's architecture and load its verified weights; any mismatch is a StoreError."""
    manifest, state_dict = load_entry(store, task)
    model = build_model(task, manifest.arch, manifest.num_classes, manifest.input, **manifest.options)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise StoreError(f"weights in {Path(store) / task} do not fit {manifest.arch}: {exc}") from exc
    return make_predictor(model, manifest, device)
