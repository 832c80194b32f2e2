"""One training run: dataset → model (optionally warm-started) → train → evaluate → export to the store.

The run's folder (`--run-dir`) holds `run.json` (this job), `metrics.csv`, `checkpoint.pt`, `loss.png` and
`val_overlay.png`; `--resume RUN_DIR` continues from its checkpoint. Under torchrun every process trains
its share of each batch and rank 0 alone writes the run folder and the store.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models import Manifest, build_model, get_arch, make_predictor, save_entry
from models.history import DEFAULT_KEEP
from trainer import distributed
from trainer.augment import Augmented, describe, policy_named, transform_for
from trainer.checkpoint import CHECKPOINT_FILE, TrainState, load_checkpoint
from trainer.data import CocoDataset, TrainingData
from trainer.datasets import open_dataset
from trainer.engine import LossComputer, make_state, seed_everything, train_steps
from trainer.evaluate import evaluate
from trainer.plots import save_val_overlay
from trainer.precision import Precision, choose_precision
from trainer.presets import TrainConfig
from trainer.runlog import JOB_FILE, Reporter, default_run_dir
from trainer.sampling import EpochBatchSampler, batch_stream
from trainer.transfer import freeze_batch_norm, freeze_stages, train_mode, warm_start

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainJob:
    task: str
    data: Path
    out: Path
    arch: str
    preset: str
    config: TrainConfig
    device: torch.device
    seed: int = 0
    init_from: Path | None = None
    init_scope: str = "all"  # or "backbone"
    freeze_stages: int = 0
    options: dict[str, Any] = field(default_factory=dict)  # architecture choices: roi_op, skips
    amp: bool | None = None  # None: on where it pays (trainer.precision)
    freeze_bn: str = "auto"  # on, off, or auto: as torchvision does when it loads weights (see transfer.py)
    run_dir: Path | None = None  # None: artifacts/runs/<task>-<UTC timestamp>
    checkpoint_every: int = 200
    progress: bool = True
    workers: int | None = None  # data-loading processes; None: as the cores allow (data_workers)
    keep: int = DEFAULT_KEEP  # replaced store entries kept in STORE/.history/<task>/

    def to_json(self) -> dict[str, Any]:
        """What `--resume` needs to rebuild this job; device, progress bar and workers belong to the machine
        (the samples do not depend on how many processes load them), and --keep to whoever publishes."""
        data = {k: v for k, v in asdict(self).items() if k not in ("device", "progress", "workers", "keep")}
        return {k: str(v) if isinstance(v, Path) else v for k, v in data.items()}

    @classmethod
    def from_json(
        cls, data: dict[str, Any], device: torch.device, progress: bool = True, workers: int | None = None
    ) -> TrainJob:
        paths = {k: Path(data[k]) if data.get(k) is not None else None for k in ("data", "out", "init_from", "run_dir")}
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        config = TrainConfig.from_json(data["config"])
        return cls(**{**known, **paths, "config": config, "device": device, "progress": progress, "workers": workers})


def load_job(run_dir: Path, device: torch.device, progress: bool = True, workers: int | None = None) -> TrainJob:
    """The job a run folder records, to resume it (wherever the folder has moved since)."""
    path = run_dir / JOB_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no {JOB_FILE})")
    job = TrainJob.from_json(json.loads(path.read_text()), device, progress, workers)
    return replace(job, run_dir=run_dir)


def run(job: TrainJob, resume: bool = False) -> Manifest | None:
    """Train and export; returns the manifest written to the store (None on ranks other than 0)."""
    procs = distributed.start(job.device)
    try:
        return _run(job, procs, resume)
    finally:
        procs.close()


def _run(job: TrainJob, procs: distributed.Processes, resume: bool) -> Manifest | None:
    seed_everything(job.seed)  # the same initial weights in every process and every rerun
    dataset = open_dataset(job.data, "train", job.task)
    model, manifest = build(job, dataset)
    if job.init_from is not None and not resume:  # a resumed run's weights come from its checkpoint
        warm_start(model, job.init_from, job.task, job.init_scope)
    frozen = freeze_stages(model, job.freeze_stages) + freeze_batch_norm(model, job.arch, job.init_from, job.freeze_bn)
    precision = choose_precision(procs.device, job.amp)
    state = make_state(model.to(procs.device), job.config, precision)
    if resume:
        assert job.run_dir is not None
        load_checkpoint(job.run_dir / CHECKPOINT_FILE, state)  # restores the RNGs too
        log.info("resuming %s at step %d of %d", job.run_dir, state.step, job.config.steps)
    else:
        # The model's own sampling (RPN, dropout) draws from here: one stream per rank. Augmentation draws
        # from per-sample seeds (trainer/augment.py).
        seed_everything(job.seed + procs.rank)
    sampler = EpochBatchSampler(len(dataset), job.config.batch_size, job.seed, procs.rank, procs.world_size,
                                groups=aspect_groups(dataset, job.task))  # fmt: skip
    policy = policy_named(job.config.augment)
    augmented = Augmented(dataset, transform_for(job.task, policy, manifest.input, job.config.crop), job.seed)
    workers = data_workers(procs.world_size) if job.workers is None else job.workers
    batches = batch_stream(augmented, sampler, start_step=state.step, workers=workers)
    compute_losses = LossComputer(job.task, procs.device, manifest.input, job.config.dice_weight)
    reporter = _reporter(job, resume, state.step, procs.world_size) if procs.is_main else None
    train_mode(model, frozen)
    network = distributed.wrap(model, procs)
    train_steps(network, state, batches, compute_losses, job.config.steps, precision, reporter, procs.all_finite)
    if reporter is None:
        procs.barrier()  # while rank 0 evaluates and writes the store
        return None
    reporter.close()
    manifest = _finish(replace(job, run_dir=reporter.run_dir), state, manifest, reporter.history, procs, precision)
    procs.barrier()
    return manifest


def data_workers(world_size: int) -> int:
    """Data-loading processes beside each training process: one per core beyond two per process, at most 4.

    Measured (one thread, 600 shapes images at the quick R-CNN size): a sample costs 28 ms the first epoch
    (decode, targets, shrink) and 8 ms after it with `flip`, 23 ms with `strong`: 3-12 % of a 4-image
    detect step on two cores with `flip`, up to a third with `strong`. A worker on a two-core machine
    would take a core from torch's two-thread team for that share, so two cores load in process."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(4, cores // world_size - 2))


def aspect_groups(dataset: TrainingData, task: str) -> list[int] | None:
    """Landscape (0) or portrait (1) per training image for the R-CNNs, which pad a batch to its largest
    height and width; None (no grouping) for segmentation, whose batches are crops or few, or other layouts."""
    if task == "segment" or not isinstance(dataset, CocoDataset):
        return None
    images = (dataset.coco.imgs[image_id] for image_id in dataset.image_ids)
    return [int(info["height"] > info["width"]) for info in images]


def build(job: TrainJob, dataset: TrainingData) -> tuple[nn.Module, Manifest]:
    """The untrained model, and the manifest describing how to rebuild it (architecture options included)."""
    if not dataset.categories:
        raise ValueError(f"{job.data} has no categories")
    num_classes = max(c.id for c in dataset.categories) + 1
    spec = get_arch(job.task, job.arch)
    options = spec.with_choices(**job.options)
    input_spec = {**spec.input, **job.config.input}
    model = build_model(job.task, job.arch, num_classes, input_spec, **options)
    manifest = Manifest(task=job.task, arch=job.arch, num_classes=num_classes, categories=dataset.categories,
                        input=input_spec, options=options)  # fmt: skip
    return model, manifest


def _reporter(job: TrainJob, resume: bool, start_step: int, world_size: int) -> Reporter:
    """Rank 0's log of the run; a new run first records itself in its folder, for `--resume`."""
    run_dir = job.run_dir or default_run_dir(job.task)
    if not resume:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / JOB_FILE).write_text(json.dumps(replace(job, run_dir=run_dir).to_json(), indent=2))
    log.info("run folder: %s", run_dir)
    return Reporter(run_dir, f"train {job.task}", job.config.steps, job.checkpoint_every, start_step, world_size,
                    progress=job.progress)  # fmt: skip


def _finish(
    job: TrainJob,
    state: TrainState,
    manifest: Manifest,
    history: list[dict[str, float]],
    procs: distributed.Processes,
    precision: Precision,
) -> Manifest:
    """Rank 0 after the last step: val metrics and overlay, then the store entry."""
    state.model.eval()
    manifest.metrics = _evaluate_val(job, state.model, manifest, procs.device)
    manifest.trained = {
        "dataset": str(job.data),
        "preset": job.preset,
        "steps": state.step,
        "seconds": round(state.seconds, 1),
        "device": str(procs.device),
        "world_size": procs.world_size,
        "precision": precision.name,
        "seed": job.seed,
        "config": asdict(job.config),
        "augmentation": describe(policy_named(job.config.augment), job.task),
        "final_loss": round(history[-1]["loss"], 4) if history else None,
        "init_from": str(job.init_from) if job.init_from else None,
        "init_scope": job.init_scope,
        "freeze_stages": job.freeze_stages,
        "freeze_bn": job.freeze_bn,
        "run_dir": str(job.run_dir),
    }
    save_entry(job.out, manifest, state.model.state_dict(), job.keep)
    return manifest


def _evaluate_val(job: TrainJob, model: nn.Module, manifest: Manifest, device: torch.device) -> dict[str, Any]:
    try:
        val = open_dataset(job.data, "val", job.task)
    except FileNotFoundError:
        log.warning("no val split in %s: the manifest will carry no metrics", job.data)
        return {}
    predictor = make_predictor(model, manifest, device)
    assert job.run_dir is not None
    save_val_overlay(predictor, val, job.run_dir / "val_overlay.png")
    started = time.perf_counter()
    metrics = evaluate(predictor, val, limit=job.config.eval_images)
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    return {"val": metrics}
