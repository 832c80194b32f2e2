"""Train whatever the store lacks with the `quick` preset: the embedded default that `make serve` relies on."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from models import DEFAULT_ARCH, StoreError, read_manifest
from models.devices import resolve_device
from trainer import synth
from trainer.presets import get_preset
from trainer.train import TrainJob, run

log = logging.getLogger(__name__)

# Detect first: the other two start from its weights. Faster R-CNN is Mask R-CNN without its mask head,
# and the detector's backbone already tells circles from squares, which the FCN needs most.
ORDER = ("detect", "instances", "segment")
QUICK_DATA = {"train": 600, "val": 100, "seed": 0}


def missing_tasks(store: Path, tasks: tuple[str, ...] = ORDER) -> list[str]:
    missing = []
    for task in tasks:
        try:
            read_manifest(store, task)
        except StoreError:
            missing.append(task)
    return missing


def bootstrap(store: Path, data: Path, preset: str = "quick", device: str = "auto", progress: bool = True) -> None:
    todo = missing_tasks(store)
    if not todo:
        log.info("model store %s is complete; nothing to train", store)
        return
    started = time.perf_counter()
    if not (data / "annotations" / "train.json").is_file():
        log.info("generating the shapes dataset in %s", data)
        synth.generate_dataset(data, **QUICK_DATA)
    for task in todo:
        log.info("training %s (%s preset) into %s", task, preset, store)
        # The quick presets of instances and segment are tuned to start from the detector just trained.
        init_from = store / "detect" if task != "detect" and "detect" not in missing_tasks(store) else None
        config = get_preset(task, preset, arch_is_small=True)
        job = TrainJob(task=task, data=data, out=store, arch=DEFAULT_ARCH[task], preset=preset, config=config,
                       device=resolve_device(device), init_from=init_from, progress=progress)  # fmt: skip
        manifest = run(job)
        assert manifest is not None  # a single process is its own rank 0
        log.info("%s: %s in %.0f s", task, manifest.metrics.get("val"), manifest.trained["seconds"])
    log.info("trained %s in %.0f s", ", ".join(todo), time.perf_counter() - started)
