"""Architectures by task and name, each with the preprocessing its predictor needs.

Every builder constructs the network with `weights=None, weights_backbone=None`: weights only ever come
from the model store (our trainer, or a checkpoint a user imported).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from torch import nn
from torchvision.models import detection, segmentation

from models.small import ROI_OPS, SKIPS, SkipFCN, small_faster_rcnn, small_mask_rcnn

Task = Literal["segment", "detect", "instances"]
TASKS: tuple[Task, ...] = get_args(Task)

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# `input` is what the predictor needs to prepare images; it is recorded in every manifest.
# R-CNN models resize inside torchvision's GeneralizedRCNNTransform (shorter side to min_size, longer
# side at most max_size); FCN models are fed normalised images whose longer side is at most max_size.
RCNN_INPUT = {"min_size": 800, "max_size": 1333, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
SMALL_RCNN_INPUT = {"min_size": 320, "max_size": 512, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
FCN_INPUT = {"max_size": 1024, "size_divisor": 8, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
SMALL_FCN_INPUT = {"max_size": 512, "size_divisor": 32, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}

# Detections kept per image by the model; the service filters further per request.
MAX_DETECTIONS = 100
SCORE_FLOOR = 0.05

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ArchSpec:
    task: Task
    name: str
    builder: Builder
    input: Mapping[str, Any]
    options: Mapping[str, Any] = field(default_factory=dict)
    # Builder keywords a user may choose (the trainer's ablation flags), with their allowed values.
    choices: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    # Builder keywords new training records in the manifest. Unlike `options`, `build` does not apply them:
    # a manifest that lacks one (an entry trained before it existed) gets the builder's own default back.
    train_defaults: Mapping[str, Any] = field(default_factory=dict)

    def with_choices(self, **chosen: Any) -> dict[str, Any]:
        """The options to build (and record in the manifest) with `chosen` applied; refuses what is not offered."""
        for key, value in chosen.items():
            if key not in self.choices:
                offered = ", ".join(self.choices) or "none"
                raise ValueError(f"{self.name} has no option {key!r} (its options: {offered})")
            if value not in self.choices[key]:
                allowed = ", ".join(map(str, self.choices[key]))
                raise ValueError(f"{self.name}: {key} must be one of {allowed}, not {value!r}")
        return {**self.options, **self.train_defaults, **chosen}

    def build(self, num_classes: int, input: Mapping[str, Any] | None = None, **options: Any) -> nn.Module:
        """Build an untrained model; `input` overrides resize settings, `options` the builder's keywords."""
        spec_input = {**self.input, **(input or {})}
        kwargs = {**self.options, **options}
        if self.task == "segment":
            return self.builder(num_classes=num_classes, **kwargs)
        return self.builder(
            num_classes=num_classes,
            min_size=spec_input["min_size"],
            max_size=spec_input["max_size"],
            image_mean=spec_input["mean"],
            image_std=spec_input["std"],
            box_score_thresh=SCORE_FLOOR,
            box_detections_per_img=MAX_DETECTIONS,
            **kwargs,
        )


_REGISTRY: dict[Task, dict[str, ArchSpec]] = {task: {} for task in TASKS}


def register(spec: ArchSpec) -> None:
    if spec.name in _REGISTRY[spec.task]:
        raise ValueError(f"architecture {spec.name!r} is already registered for {spec.task}")
    _REGISTRY[spec.task][spec.name] = spec


def get_arch(task: str, name: str) -> ArchSpec:
    if task not in _REGISTRY:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    try:
        return _REGISTRY[task][name]
    except KeyError:
        raise ValueError(f"unknown {task} architecture {name!r}; choose one of {', '.join(arch_names(task))}") from None


def arch_names(task: str) -> list[str]:
    return sorted(_REGISTRY.get(task, {}))  # type: ignore[call-overload]


def build_model(
    task: str, arch: str, num_classes: int, input: Mapping[str, Any] | None = None, **options: Any
) -> nn.Module:
    return get_arch(task, arch).build(num_classes, input, **options)


def _no_weights(fn: Builder) -> Builder:
    def build(**kwargs: Any) -> nn.Module:
        return fn(weights=None, weights_backbone=None, **kwargs)

    return build


DEFAULT_ARCH: dict[str, str] = {"segment": "fcn_small", "detect": "fasterrcnn_small", "instances": "maskrcnn_small"}

# aux_loss=True keeps the state dict identical to torchvision's published FCN checkpoints.
register(ArchSpec("segment", "fcn_resnet50", _no_weights(segmentation.fcn_resnet50), FCN_INPUT, {"aux_loss": True}))
register(ArchSpec("segment", "fcn_resnet101", _no_weights(segmentation.fcn_resnet101), FCN_INPUT, {"aux_loss": True}))
# skip_width 64: 3x3 conv blocks on the skips; entries that record no skip_width have the FCN paper's
# 1x1 scorers (SkipFCN's default) and still load.
register(ArchSpec("segment", "fcn_small", SkipFCN, SMALL_FCN_INPUT, choices={"skips": SKIPS},
                  train_defaults={"skip_width": 64}))  # fmt: skip
for _name in (
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
):
    _input = {**RCNN_INPUT, "min_size": 320, "max_size": 640} if _name.endswith("320_fpn") else RCNN_INPUT
    register(ArchSpec("detect", _name, _no_weights(getattr(detection, _name)), _input))
register(ArchSpec("detect", "fasterrcnn_small", small_faster_rcnn, SMALL_RCNN_INPUT,
                  choices={"roi_op": ROI_OPS, "norm": (False, True)}))  # fmt: skip
for _name in ("maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2"):
    register(ArchSpec("instances", _name, _no_weights(getattr(detection, _name)), RCNN_INPUT))
register(ArchSpec("instances", "maskrcnn_small", small_mask_rcnn, SMALL_RCNN_INPUT,
                  choices={"roi_op": ROI_OPS, "norm": (False, True)}))  # fmt: skip
