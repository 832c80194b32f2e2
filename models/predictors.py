"""Predictors: a model plus the pre- and post-processing it needs, one class per task.

Input: uint8 CHW tensors of any sizes (a batch may mix sizes). Output per image, in the pixels of its
frame: the picture the results refer to, by default the image itself; a caller that decoded a large upload
at reduced size passes the upload's size, and boxes, masks and label maps come back in its pixels
(predictors resize for their networks themselves, so every caller, the service and the trainer's
evaluation alike, gets the same answer for the same picture). Results: boxes/labels/scores, instance masks
(kept compact: see models/masks.py), or a label map. A batch is run as a few forward passes of similar
shapes (models/shape_groups.py), never padded wastefully.
"""

from __future__ import annotations

import copy
import logging
import math
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.transform import resize_boxes

from models.acceleration import Acceleration, AutocastScope, autocast_dtype, prepare_model
from models.labelmaps import label_map
from models.masks import InstanceMasks
from models.registry import MAX_DETECTIONS, build_model
from models.shape_groups import PaddingStats, Shape, group_by_shape
from models.store import Manifest, StoreError, load_entry

log = logging.getLogger(__name__)

Frame = tuple[int, int]  # (height, width) of the picture results refer to


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
    masks: InstanceMasks | None = None  # instances only: N masks over the input image


@dataclass
class SemanticMap:
    labels: Tensor  # uint8 (int32 past 256 classes) [H, W]; 0 is background


Result = Detections | SemanticMap  # what a predictor returns per image


class ImageRefusedError(ValueError):
    """This image, not the code, is why the model cannot answer (e.g. too thin for the network's input).

    The one exception a server may report as the client's doing (422): any other exception raised while
    predicting, ValueErrors included, is a bug, and is reported as one (500)."""


def check_image(image: Tensor) -> None:
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a uint8 tensor of shape [3, H, W], got {image.dtype} {tuple(image.shape)}")
    if image.shape[1] < 1 or image.shape[2] < 1:
        raise ValueError(f"empty image of shape {tuple(image.shape)}")


class Predictor(ABC):
    task: ClassVar[str]
    # What this predictor can autocast on its own (Acceleration.autocast_scope): the whole forward pass.
    autocast_scopes: ClassVar[tuple[AutocastScope, ...]] = ("model",)
    size_divisor: int = 32  # the backbone's stride: batches are padded to multiples of it

    def __init__(
        self,
        model: nn.Module,
        manifest: Manifest,
        device: torch.device | str = "cpu",
        acceleration: Acceleration | None = None,
    ) -> None:
        if manifest.task != self.task:
            raise ValueError(f"{type(self).__name__} serves {self.task!r}, manifest is for {manifest.task!r}")
        self.device = torch.device(device)
        self.model = model
        self.accelerate(acceleration or Acceleration())
        self.manifest = manifest
        # A forward pass runs images of similar shapes only: at most this share of its pixels is padding.
        self.max_padding_waste = 0.2
        self.padding = PaddingStats()

    def measured_scopes(self) -> tuple[AutocastScope, ...]:
        """The autocast scopes the runtime measurement tries (models/runtimes.py): all it can run."""
        return self.autocast_scopes

    def accelerate(self, acceleration: Acceleration) -> None:
        """Run as `acceleration` says from the next forward pass on (models/runtimes.py chooses one).
        Folding batch norm cannot be undone: once folded, the model stays folded."""
        if acceleration.autocast_scope not in self.autocast_scopes:
            raise ValueError(f"a {self.task} predictor cannot autocast its {acceleration.autocast_scope} alone")
        self.acceleration = acceleration
        self.channels_last = acceleration.channels_last
        self.autocast_dtype = autocast_dtype(self.device, acceleration)
        self.model = prepare_model(self.model, self.device, acceleration)

    def adopt(self, other: Predictor) -> None:
        """Run `other`'s prepared network and runtime from the next forward pass on: a measured candidate
        (models/runtimes.py) is taken as it is, not prepared a second time (an ONNX export takes seconds)."""
        if other.manifest != self.manifest:
            raise ValueError("a predictor adopts the runtime of a twin of the same model only")
        self.model, self.acceleration = other.model, other.acceleration
        self.channels_last, self.autocast_dtype = other.channels_last, other.autocast_dtype

    @torch.inference_mode()
    def predict(
        self, images: Sequence[Tensor], queries: Sequence[Query] | None = None, frames: Sequence[Frame] | None = None
    ) -> list[Result]:
        """Predict a batch; `queries[i]` filters the results of `images[i]` (defaults when omitted), and
        `frames[i]` is the (height, width) its results refer to (default: the image's own size)."""
        queries = [Query()] * len(images) if queries is None else queries
        frames = [(int(image.shape[-2]), int(image.shape[-1])) for image in images] if frames is None else frames
        if not len(queries) == len(frames) == len(images):
            raise ValueError(f"{len(images)} images but {len(queries)} queries and {len(frames)} frames")
        for image in images:
            check_image(image)
        shapes = [self.input_shape(*image.shape[-2:]) for image in images]
        for image, shape in zip(images, shapes, strict=True):
            if min(shape) < 1:  # torchvision would fail deep inside its resize
                height, width = image.shape[-2:]
                raise ImageRefusedError(f"a {width}x{height} image is less than a pixel thin at the model's input size")
        results: dict[int, Result] = {}
        for group in group_by_shape(shapes, self.size_divisor, self.max_padding_waste):
            self.padding.add([shapes[i] for i in group], self.size_divisor)
            with self._autocast("model"):
                outputs = self._predict([images[i] for i in group], [queries[i] for i in group],
                                        [frames[i] for i in group])  # fmt: skip
            results.update(zip(group, outputs, strict=True))
        return [results[i] for i in range(len(images))]

    def warmup(self, height: int = 240, width: int = 320) -> None:
        """One forward pass on a blank image, so the first request does not pay for lazy initialisation."""
        self.predict([torch.zeros(3, height, width, dtype=torch.uint8)])

    @abstractmethod
    def input_shape(self, height: int, width: int) -> Shape:
        """The (height, width) the network computes on for an image of this size, before batch padding."""

    @abstractmethod
    def _predict(self, images: Sequence[Tensor], queries: Sequence[Query], frames: Sequence[Frame]) -> list[Result]: ...

    def _autocast(self, scope: AutocastScope) -> AbstractContextManager[object]:
        """Autocast for the part `scope` names, if that is the part this runtime autocasts."""
        if self.autocast_dtype is None or scope != self.acceleration.autocast_scope:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _to_device(self, image: Tensor) -> Tensor:
        if self.device.type == "cuda":
            # uint8 crosses the bus (a quarter of float32's bytes), from pinned memory, without blocking.
            image = image.pin_memory()
        return image.to(self.device, non_blocking=True).float().div_(255)


class DetectionPredictor(Predictor):
    """Faster R-CNN (and Mask R-CNN's boxes): torchvision resizes and normalises inside the model."""

    task = "detect"
    autocast_scopes = ("model", "backbone")

    def input_shape(self, height: int, width: int) -> Shape:
        # torchvision's GeneralizedRCNNTransform: shorter side to min_size unless the longer passes max_size.
        transform: Any = self.model.transform  # torchvision's GeneralizedRCNNTransform
        scale = min(float(transform.min_size[-1]) / min(height, width), float(transform.max_size) / max(height, width))
        return int(height * scale), int(width * scale)

    def measured_scopes(self) -> tuple[AutocastScope, ...]:
        """On a CPU (bf16, 8 mantissa bits) the heads stay fp32: whole-model bf16 failed the parity check for
        Faster R-CNN, and for Mask R-CNN, which passed it, cost 0.0085 mask mAP@0.5 on the cross set
        (bench/results/runtime_parity_cpu_avx512_seed2.json). A fixed PRECISION=bf16 still runs it whole."""
        return ("backbone",) if self.device.type == "cpu" else self.autocast_scopes

    def limit_detections(self, count: int) -> None:
        """Keep at most `count` detections per image inside the model, before Mask R-CNN pastes masks."""
        roi_heads = getattr(self.model, "roi_heads", None)
        if roi_heads is not None:
            roi_heads.detections_per_img = min(count, roi_heads.detections_per_img)

    def _predict(self, images: Sequence[Tensor], queries: Sequence[Query], frames: Sequence[Frame]) -> list[Result]:
        outputs = self._forward([self._to_device(img) for img in images], queries, frames)
        return [self._select(out, q, frame) for out, q, frame in zip(outputs, queries, frames, strict=True)]

    def _forward(
        self, images: list[Tensor], queries: Sequence[Query], frames: Sequence[Frame]
    ) -> list[dict[str, Tensor]]:
        """torchvision's GeneralizedRCNN.forward in eval mode, minus pasting each mask into a full-size
        image: masks stay [N, 1, M, M] probabilities over their boxes (boxes in the frame's pixels, as
        torchvision maps them back to the original image's)."""
        model: Any = self.model  # a torchvision GeneralizedRCNN (every detect/instances architecture is)
        batch, _ = model.transform(images)
        if self.channels_last:
            batch.tensors = batch.tensors.contiguous(memory_format=torch.channels_last)
        with self._autocast("backbone"):
            features = model.backbone(batch.tensors)
        if isinstance(features, Tensor):
            features = OrderedDict([("0", features)])
        if self.acceleration.autocast_scope == "backbone":
            features = OrderedDict((name, feature.float()) for name, feature in features.items())
        proposals, _ = model.rpn(batch, features)
        outputs, _ = self._roi_heads(queries)(features, proposals, batch.image_sizes)
        for output, resized, frame in zip(outputs, batch.image_sizes, frames, strict=True):
            output["boxes"] = resize_boxes(output["boxes"], resized, list(frame))
        return outputs

    def _roi_heads(self, queries: Sequence[Query]) -> nn.Module:
        """The box (and mask) heads, with their score floor set to the lowest threshold a query of this
        batch asks for: lowered below SCORE_FLOOR so that `score_threshold=0.01` means what it says, and
        raised to it so that Mask R-CNN's mask head does not run on detections the answer drops (at the
        default 0.5 most of up to 100 per image; its roi_heads took 17.5 of 31.4 ms per image). Exact: NMS
        suppresses a box only by a higher-scored one and the kept are sorted by score, so the detections
        at or above the threshold are the same. A shallow copy: a batch of the same model on another
        inference thread keeps its own floor, and the weights are shared."""
        heads: Any = self.model.roi_heads  # torchvision's RoIHeads
        floor = _below(min(query.score_threshold for query in queries))
        if floor == heads.score_thresh:
            return cast(nn.Module, heads)
        heads = copy.copy(heads)
        heads.score_thresh = floor
        return cast(nn.Module, heads)

    def _select(self, output: dict[str, Tensor], query: Query, frame: Frame) -> Detections:
        scores = output["scores"]
        keep = scores >= query.score_threshold
        if query.class_ids is not None:
            ids = torch.tensor(sorted(query.class_ids), device=scores.device, dtype=output["labels"].dtype)
            keep &= torch.isin(output["labels"], ids)
        # torchvision returns detections sorted by score, so the first max_detections kept are the best.
        index = keep.nonzero().flatten()[: query.max_detections]
        height, width = frame
        boxes = output["boxes"][index].float()
        masks = None
        if "masks" in output:
            # The grids stay on the device; thresholding and run lengths happen there (models/masks.py).
            masks = InstanceMasks(output["masks"][index, 0], boxes.clone(), frame, query.mask_threshold)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        return Detections(boxes.cpu(), output["labels"][index].cpu(), scores[index].float().cpu(), masks)


class InstancePredictor(DetectionPredictor):
    """Mask R-CNN: boxes as for detection plus one mask per kept instance."""

    task = "instances"


class SegmentationPredictor(Predictor):
    """FCN: normalise, shrink to `max_size`, pad the batch to a common size, upsample logits back."""

    task = "segment"

    def __init__(
        self,
        model: nn.Module,
        manifest: Manifest,
        device: torch.device | str = "cpu",
        acceleration: Acceleration | None = None,
    ) -> None:
        super().__init__(model, manifest, device, acceleration)
        spec = manifest.input
        self.max_size = int(spec.get("max_size") or 0)
        self.size_divisor = int(spec.get("size_divisor", 32))
        self.mean = torch.tensor(spec["mean"], device=self.device).view(3, 1, 1)
        self.std = torch.tensor(spec["std"], device=self.device).view(3, 1, 1)
        self.label_dtype = torch.uint8 if manifest.num_classes <= 256 else torch.int32

    def input_shape(self, height: int, width: int) -> Shape:
        longest = max(height, width)
        if not self.max_size or longest <= self.max_size:
            return height, width
        scale = self.max_size / longest
        return max(1, round(height * scale)), max(1, round(width * scale))

    def _predict(self, images: Sequence[Tensor], queries: Sequence[Query], frames: Sequence[Frame]) -> list[Result]:
        prepared = [self._prepare(img) for img in images]
        batch = self._pad(prepared)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        logits = self.model(batch)["out"]
        results: list[Result] = []
        for i, (x, query, frame) in enumerate(zip(prepared, queries, frames, strict=True)):
            # Scores upsampled bilinearly straight into the frame, in bands (models/labelmaps.py).
            labels = label_map(logits[i, :, : x.shape[-2], : x.shape[-1]], frame, self.label_dtype)
            if query.class_ids is not None:
                wanted = torch.tensor(sorted(query.class_ids), device=labels.device, dtype=labels.dtype)
                labels[~torch.isin(labels, wanted)] = 0
            results.append(SemanticMap(labels.cpu()))
        return results

    def _prepare(self, image: Tensor) -> Tensor:
        x = (self._to_device(image) - self.mean) / self.std
        size = self.input_shape(*x.shape[-2:])
        if size != tuple(x.shape[-2:]):
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


def make_predictor(
    model: nn.Module, manifest: Manifest, device: torch.device | str = "cpu", acceleration: Acceleration | None = None
) -> Predictor:
    return PREDICTORS[manifest.task](model, manifest, device, acceleration)


def load_predictor(
    store: Path | str, task: str, device: torch.device | str = "cpu", acceleration: Acceleration | None = None
) -> Predictor:
    """Build the manifest's architecture and load its verified weights; any mismatch is a StoreError."""
    manifest, state_dict = load_entry(store, task)
    model = build_model(task, manifest.arch, manifest.num_classes, manifest.input, **manifest.options)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise StoreError(f"weights in {Path(store) / task} do not fit {manifest.arch}: {exc}") from exc
    return make_predictor(model, manifest, device, acceleration)


def _below(threshold: float) -> float:
    """The float32 just below `threshold`: torchvision's heads keep `scores > floor` on float32 scores,
    `_select` keeps `scores >= threshold`, so the two keep the same detections."""
    value = torch.tensor(threshold, dtype=torch.float32)
    return float(torch.nextafter(value, torch.tensor(-math.inf)))
