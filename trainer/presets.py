"""Training presets per task: `smoke` (tests, under a minute), `quick` (the embedded default), `full`.

`quick` and `full` are tuned for the chain `python -m trainer bootstrap` runs (trainer/bootstrap.py):
detect from scratch, instances from that detector (`--init-from STORE/detect`), the detector refined
from instances (`refine_preset`), segment from instances. Alone, from scratch, instances and segment
fall short of `quick`. `full` is the same chain, longer, at the small models' own input sizes (R-CNN
shorter side 320, longer at most 512; FCN longer side 512) instead of `quick`'s smaller ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

PRESETS = ("smoke", "quick", "full")


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    batch_size: int
    lr: float
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    # Overrides of the architecture's `input` (resize) settings, recorded in the manifest.
    input: dict[str, Any] = field(default_factory=dict)
    # A policy of trainer/augment.py. `quick` flips only: at 800 + 600 steps, the strong policy cost the
    # R-CNNs 0.07 box mAP@0.5 on val (bench/results/accuracy_experiments.md); `full` has the steps for it.
    augment: str = "strong"
    crop: int = 0  # segment: train on random crops of at most crop x crop px of the resized images (0: whole)
    dice_weight: float = 0.0  # segment: a soft Dice term of this weight beside cross-entropy (trainer/engine.py)
    eval_images: int | None = None  # None: the whole val split

    def with_overrides(self, **overrides: Any) -> TrainConfig:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        """From a run folder's run.json; fields this version no longer has are dropped."""
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


_SMALL_RCNN = {"min_size": 256, "max_size": 416}
# `quick`'s steps are 1.2x those it had in float32: bf16 training (the default on a CPU with native bf16)
# pays for them within the 15 minutes, and two training seeds scored above the three float32 seeds' range
# on the cross set (box mAP@0.5 0.50-0.53 vs 0.43-0.49; bench/results/accuracy_experiments.md). A CPU
# without native bf16 trains them in float32, about 1.2x longer than before.

_TABLE: dict[str, dict[str, TrainConfig]] = {
    "segment": {
        "smoke": TrainConfig(steps=12, batch_size=4, lr=2e-3, warmup_steps=2, input={"max_size": 256}, eval_images=8),
        # Random 224 px crops: as accurate per step as whole images (which the batch pads to 1.5x their
        # pixels) at 1.85x the steps/s on 2 CPU cores; mIoU kept rising to 1500 steps
        # (bench/results/accuracy_experiments.md).
        # Dice beside cross-entropy: quick +0.036 / +0.053 val and +0.008 / +0.032 cross mIoU (two seeds), full
        # +0.014 val and +0.015 cross (bench/results/accuracy_experiments.md).
        "quick": TrainConfig(
            steps=1680, batch_size=8, lr=2e-3, input={"max_size": 320}, crop=224, augment="flip", dice_weight=1.0
        ),
        "full": TrainConfig(steps=4000, batch_size=8, lr=2e-3, warmup_steps=100, crop=256, dice_weight=1.0),
    },
    "detect": {
        "smoke": TrainConfig(steps=8, batch_size=2, lr=1e-3, warmup_steps=2, input=_SMALL_RCNN, eval_images=8),
        "quick": TrainConfig(steps=960, batch_size=4, lr=1e-3, input=_SMALL_RCNN, augment="flip"),
        "full": TrainConfig(steps=2400, batch_size=4, lr=1e-3, warmup_steps=200),
    },
    "instances": {
        "smoke": TrainConfig(steps=8, batch_size=2, lr=1e-3, warmup_steps=2, input=_SMALL_RCNN, eval_images=8),
        "quick": TrainConfig(steps=720, batch_size=4, lr=1e-3, input=_SMALL_RCNN, augment="flip"),
        "full": TrainConfig(steps=2400, batch_size=4, lr=1e-3, warmup_steps=200),
    },
}


# The detector's second run in the chain, from the Mask R-CNN: its boxes already fit, so a short run.
_REFINE = {
    "smoke": _TABLE["detect"]["smoke"],
    "quick": TrainConfig(steps=300, batch_size=4, lr=1e-3, warmup_steps=20, input=_SMALL_RCNN, augment="flip"),
    "full": TrainConfig(steps=600, batch_size=4, lr=1e-3, warmup_steps=50),
}


def refine_preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return _REFINE[name]


def get_preset(task: str, name: str, arch_is_small: bool) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    config = _TABLE[task][name]
    # Resize overrides are tuned for the small architectures; big ones keep torchvision's own sizes.
    return config if arch_is_small else replace(config, input={})
