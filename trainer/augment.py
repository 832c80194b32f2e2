"""Training augmentation with torchvision.transforms.v2, which moves boxes and masks with the pixels.

A policy (per preset, recorded in the manifest) sets how often each transform runs: photometric (JPEG
artefacts, brightness/contrast/saturation/hue, grayscale, blur, noise) and geometric (flips, zoom-out,
IoU crops that clip boxes and masks for the R-CNNs; scale jitter and random crops for the FCN, which
trains on crops). Each sample's randomness is a pure function of (seed, epoch, index) (`Augmented`), so a
run resumed at any step, or loading data in any number of worker processes, sees the very same images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.ops import masks_to_boxes
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from trainer.data import IGNORE, Target, TrainingData

Sample = tuple[Tensor, Target]
Transform = Callable[[Tensor, Target], Sample]


@dataclass(frozen=True)
class Pipeline:
    """`prepare` (deterministic: decoding-size work, cached per image) then `augment` (random, every time)."""

    prepare: Transform
    augment: Transform

    def __call__(self, image: Tensor, target: Target) -> Sample:
        return self.augment(*self.prepare(image, target))


Key = tuple[int, int]  # (epoch, index)
# An instance a crop cuts down to less than this share of its visible pixels is no fair target any more
# (trainer/synth.py's rule for border cuts): it is dropped, as a shape cut that far is never annotated.
# Boxes are then recomputed from the masks (pixel edges: x2 = last column + 1, as COCO's x + w).
MIN_KEPT = 0.3


@dataclass(frozen=True)
class Policy:
    """How often each transform runs (probabilities), and the FCN's scale jitter (fraction)."""

    jpeg: float = 0.0
    photometric: float = 0.0  # v2.RandomPhotometricDistort's own per-part probability
    grayscale: float = 0.0
    blur: float = 0.0
    noise: float = 0.0
    hflip: float = 0.5
    vflip: float = 0.0  # circles, squares and triangles stay what they are upside down
    zoom_out: float = 0.0  # R-CNNs: smaller objects on a larger canvas
    iou_crop: float = 0.0  # R-CNNs: SSD's crops, which clip boxes and masks
    scale_jitter: float = 0.0  # FCN: longer side at most max_size x U(1 - j, 1 + j)

    def to_json(self) -> dict[str, float]:
        return asdict(self)


POLICIES = {
    "flip": Policy(),
    "strong": Policy(jpeg=0.2, photometric=0.5, grayscale=0.1, blur=0.2, noise=0.2, vflip=0.5, zoom_out=0.2,
                     iou_crop=0.3, scale_jitter=0.2),
}  # fmt: skip


def policy_named(name: str) -> Policy:
    if name not in POLICIES:
        raise ValueError(f"unknown augmentation {name!r}; choose one of {', '.join(POLICIES)}")
    return POLICIES[name]


def _photometric(policy: Policy) -> list[v2.Transform]:
    """Uint8 transforms first (JPEG needs uint8), float noise last."""
    steps: list[v2.Transform] = []
    if policy.jpeg:
        steps.append(v2.RandomApply([v2.JPEG(quality=(35, 95))], p=policy.jpeg))
    if policy.photometric:
        steps.append(v2.RandomPhotometricDistort(p=policy.photometric))
    if policy.grayscale:
        steps.append(v2.RandomGrayscale(p=policy.grayscale))
    if policy.blur:
        steps.append(v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.5))], p=policy.blur))
    return steps


def _flips(policy: Policy) -> list[v2.Transform]:
    return [v2.RandomHorizontalFlip(policy.hflip), v2.RandomVerticalFlip(policy.vflip)]


def _to_float(policy: Policy) -> list[v2.Transform]:
    steps: list[v2.Transform] = [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True)]
    if policy.noise:
        noises = [v2.GaussianNoise(sigma=s) for s in (0.02, 0.04, 0.08)]
        steps.append(v2.RandomApply([v2.RandomChoice(noises)], p=policy.noise))
    return steps


class IoUCropWhenBoxes(v2.RandomIoUCrop):
    """SSD's IoU crop, skipped for an image without targets (it needs a box to measure a crop against)."""

    def forward(self, *inputs: Any) -> Any:
        sample = inputs if len(inputs) > 1 else inputs[0]
        boxes = sample[1]["boxes"]
        return super().forward(*inputs) if len(boxes) else sample


class ShrinkLikeRCNN(v2.Transform):
    """Resize as torchvision's GeneralizedRCNNTransform will (shorter side to min_size unless the longer one
    would pass max_size; bilinear without antialiasing, as it does), first: the transforms after it then
    work on the pixels the network sees, a few times fewer than the file's. The model's own resize of the
    result is then the identity."""

    def __init__(self, min_size: int, max_size: int) -> None:
        super().__init__()
        self.min_size, self.max_size = min_size, max_size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        scale = min(self.min_size / min(height, width), self.max_size / max(height, width))
        return {"size": [int(height * scale), int(width * scale)]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Image | tv_tensors.Mask | tv_tensors.BoundingBoxes):
            return TF.resize(inpt, params["size"], antialias=False)
        return inpt


class FitWithin(v2.Transform):
    """Scale (never up) so that the longer side is at most `max_size` x U(1 - jitter, 1 + jitter), as the
    segmentation predictor shrinks its inputs (antialiased bilinear; masks by nearest neighbour)."""

    def __init__(self, max_size: int, jitter: float) -> None:
        super().__init__()
        self.max_size, self.jitter = max_size, jitter

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        factor = float(torch.empty(1).uniform_(1 - self.jitter, 1 + self.jitter)) if self.jitter else 1.0
        scale = min(1.0, self.max_size / max(height, width)) * factor
        return {"size": [max(8, round(height * scale)), max(8, round(width * scale))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Image | tv_tensors.Mask):
            return TF.resize(inpt, params["size"], antialias=True)
        return inpt


def rcnn_transform(policy: Policy, min_size: int = 800, max_size: int = 1333) -> Pipeline:
    """For Faster/Mask R-CNN targets (boxes XYXY, labels, masks), at the network's input size first; crops
    before the photometric transforms, which then have fewer pixels to change."""
    shrink = ShrinkLikeRCNN(min_size, max_size)
    crops: list[v2.Transform] = _flips(policy)
    if policy.iou_crop:
        crops.append(v2.RandomApply([IoUCropWhenBoxes(trials=10)], p=policy.iou_crop))
    zoom: list[v2.Transform] = []
    if policy.zoom_out:
        fill = {tv_tensors.Image: (124, 116, 104), "others": 0}
        zoom.append(v2.RandomZoomOut(fill=fill, side_range=(1.0, 1.6), p=policy.zoom_out))
    pipeline = v2.Compose(
        [*crops, *_photometric(policy), *zoom, *_to_float(policy), v2.ClampBoundingBoxes(),
         v2.SanitizeBoundingBoxes(min_size=2, labels_getter=lambda sample: (sample[1]["labels"], sample[1]["area"])),
         v2.ToPureTensor()]
    )  # fmt: skip

    def prepare(image: Tensor, target: Target) -> Sample:
        height, width = image.shape[-2:]
        wrapped = dict(target)
        wrapped["boxes"] = tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=(height, width))
        wrapped["masks"] = tv_tensors.Mask(target["masks"])
        small, wrapped = shrink(tv_tensors.Image(image), wrapped)
        wrapped["area"] = wrapped["masks"].flatten(1).sum(1)  # at the network's scale, before any crop
        return small, wrapped

    def augment(image: Tensor, target: Target) -> Sample:
        out_image, out = pipeline(image, target)
        return out_image, _drop_cut_down(out)

    return Pipeline(prepare, augment)


def _drop_cut_down(target: Target) -> Target:
    """Instances a crop left with less than MIN_KEPT of their pixels are no targets; the others' boxes are
    made tight around what is left of their masks (a clipped box is not: an occluded shape's visible part
    need not fill the box that a crop cuts out of its old one)."""
    area = target.pop("area")
    left = target["masks"].flatten(1).sum(1)
    keep = (left > 0) & (left >= MIN_KEPT * area)
    kept = {k: v[keep] if k in ("boxes", "labels", "masks") else v for k, v in target.items()}
    boxes = masks_to_boxes(kept["masks"]) if len(kept["masks"]) else kept["boxes"]
    kept["boxes"] = boxes + torch.tensor([0.0, 0.0, 1.0, 1.0]) if len(kept["masks"]) else boxes
    return kept


def segment_transform(policy: Policy, max_size: int, crop: int) -> Pipeline:
    """For a class map target (`mask`): the predictor's own shrink, jittered, then a random crop of at most
    crop x crop (padded with the ignore label where the image is smaller)."""
    geometric: list[v2.Transform] = [FitWithin(max_size, policy.scale_jitter), *_flips(policy)]
    if crop:
        geometric.append(v2.RandomCrop(crop, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE}))
    pipeline = v2.Compose([*geometric, *_photometric(policy), *_to_float(policy), v2.ToPureTensor()])

    def prepare(image: Tensor, target: Target) -> Sample:
        return image, {**target, "mask": target["mask"].to(torch.uint8)}  # an eighth of int64's bytes in the cache

    def augment(image: Tensor, target: Target) -> Sample:
        wrapped = {**target, "mask": tv_tensors.Mask(target["mask"])}
        out_image, out = pipeline(tv_tensors.Image(image), wrapped)
        return out_image, {**out, "mask": out["mask"].long()}

    return Pipeline(prepare, augment)


class Augmented(Dataset[Sample]):
    """A training set whose item `(epoch, index)` is sample `index` through `pipeline`, with torch's RNG
    seeded from (seed, epoch, index) for that call alone (the process's own RNG is left as it was).

    Each image's prepared form (decoded, targets built, shrunk to the network's scale for the R-CNNs) is
    kept after its first use: later epochs only augment. (Measured: decoding and building targets was a
    third of a sample's cost; the shapes sets take a few hundred MB.)"""

    def __init__(self, dataset: TrainingData, pipeline: Pipeline, seed: int, cache: bool = True) -> None:
        self.dataset, self.pipeline, self.seed = dataset, pipeline, seed
        self.cache: dict[int, Sample] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Key) -> Sample:
        epoch, index = key
        prepared = self.cache.get(index) if self.cache is not None else None
        if prepared is None:
            prepared = self.pipeline.prepare(*self.dataset[index])
            if self.cache is not None:
                self.cache[index] = prepared
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, epoch, index))
            return self.pipeline.augment(*prepared)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    # Distinct for every (seed, epoch, index) within any realistic run (2**20 images, 2**20 epochs).
    return ((seed * 1_000_003 + epoch) * (1 << 20) + index % (1 << 20)) & ((1 << 63) - 1)


def transform_for(task: str, policy: Policy, input_spec: dict[str, Any], crop: int) -> Pipeline:
    """The task's pipeline: the FCN's takes its input size (its predictor's shrink) and crop."""
    if task == "segment":
        return segment_transform(policy, int(input_spec.get("max_size") or 1024), crop)
    return rcnn_transform(policy, int(input_spec["min_size"]), int(input_spec["max_size"]))


def describe(policy: Policy, task: str) -> dict[str, Any]:
    """What the manifest records: the policy's numbers, and the transforms that apply to this task."""
    not_for_task = ("zoom_out", "iou_crop") if task == "segment" else ("scale_jitter",)
    used = {name: value for name, value in policy.to_json().items() if value and name not in not_for_task}
    return {"policy": used, "library": "torchvision.transforms.v2"}
