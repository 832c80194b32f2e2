"""Train whatever the store lacks along one chain (`quick` by default: the embedded weights `make serve` relies on)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from models import DEFAULT_ARCH, StoreError, read_manifest
from models.devices import resolve_device
from trainer import synth
from trainer.presets import TrainConfig, get_preset, refine_preset
from trainer.train import TrainJob, run

log = logging.getLogger(__name__)

# One backbone is trained along the chain, each stage starting where the last one stopped (measured in
# bench/results/accuracy_experiments.md). Faster R-CNN steps are the cheapest, so the detector goes
# first; Mask R-CNN continues from it (the detector is Mask R-CNN without its mask head, so every
# detector tensor has a counterpart) and its per-pixel mask loss sharpens the shared features; the
# detector is then refined from those, and the FCN starts from the Mask R-CNN backbone.
ORDER = ("detect", "instances", "segment")
INIT_FROM: dict[str, str] = {"instances": "detect", "segment": "instances"}
# The val split is the same 100 images in every preset (each image is drawn from its own seed, split and
# index); `full` trains on 3.3x the images for its 3-4x the steps, so it sees each about as often.
DATA = {"smoke": {"train": 600, "val": 100, "seed": 0}, "quick": {"train": 600, "val": 100, "seed": 0},
        "full": {"train": 2000, "val": 100, "seed": 0}}  # fmt: skip


@dataclass(frozen=True)
class Stage:
    task: str
    refine: bool = False  # a second, short detect run from the instances entry


def missing_tasks(store: Path, tasks: tuple[str, ...] = ORDER) -> list[str]:
    missing = []
    for task in tasks:
        try:
            read_manifest(store, task)
        except StoreError:
            missing.append(task)
    return missing


def plan(todo: list[str]) -> list[Stage]:
    """The stages for the missing tasks; the detector is refined only when both R-CNNs are trained now."""
    stages = [Stage(task) for task in ORDER if task in todo]
    if "detect" in todo and "instances" in todo:
        stages.insert(2, Stage("detect", refine=True))
    return stages


def init_source(store: Path, stage: Stage) -> Path | None:
    """The store entry a stage starts from, when the store has it (else: from scratch)."""
    source = "instances" if stage.refine else INIT_FROM.get(stage.task)
    if source is None or missing_tasks(store, (source,)):
        return None
    return store / source


def stage_config(stage: Stage, preset: str) -> TrainConfig:
    return refine_preset(preset) if stage.refine else get_preset(stage.task, preset, arch_is_small=True)


def bootstrap(
    store: Path,
    data: Path,
    preset: str = "quick",
    device: str = "auto",
    progress: bool = True,
    seed: int = 0,
    amp: bool | None = None,
) -> None:
    """Train every task the store lacks; `seed` seeds each stage's training (the data keep DATA's), `amp` is
    each stage's mixed precision (None: trainer.precision's default)."""
    todo = missing_tasks(store)
    if not todo:
        log.info("model store %s is complete; nothing to train", store)
        return
    started = time.perf_counter()
    if not (data / "annotations" / "train.json").is_file():
        log.info("generating the shapes dataset in %s", data)
        synth.generate_dataset(data, **DATA[preset])
    for stage in plan(todo):
        init_from = init_source(store, stage)
        log.info("training %s (%s preset%s) into %s from %s", stage.task, preset, ", refine" if stage.refine else "",
                 store, init_from or "scratch")  # fmt: skip
        job = TrainJob(task=stage.task, data=data, out=store, arch=DEFAULT_ARCH[stage.task], preset=preset,
                       config=stage_config(stage, preset), device=resolve_device(device), init_from=init_from,
                       progress=progress, seed=seed, amp=amp)  # fmt: skip
        manifest = run(job)
        assert manifest is not None  # a single process is its own rank 0
        # One JSON line per stage: bench/preset.py reads them (the refined detector replaces the first).
        record = {"task": stage.task, "refine": stage.refine, "init_from": str(init_from) if init_from else None,
                  "steps": manifest.trained["steps"], "seconds": manifest.trained["seconds"],
                  "run_dir": manifest.trained["run_dir"], "val": manifest.metrics.get("val")}  # fmt: skip
        log.info("stage %s", json.dumps(record))
    log.info("trained %s in %.0f s", ", ".join(todo), time.perf_counter() - started)
