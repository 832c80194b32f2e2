"""One training run: dataset → model (optionally warm-started) → train → evaluate → export to the store."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from models import Manifest, build_model, get_arch, make_predictor, save_entry
from models.store import StoreError, load_entry, read_torchvision_checkpoint
from trainer.data import CocoDataset
from trainer.engine import train
from trainer.evaluate import evaluate
from trainer.presets import TrainConfig

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
    progress: bool = True


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run(job: TrainJob) -> Manifest:
    dataset = CocoDataset(job.data, "train", job.task, train=True)
    if not dataset.categories:
        raise ValueError(f"{job.data} has no categories")
    num_classes = max(c.id for c in dataset.categories) + 1
    spec = get_arch(job.task, job.arch)
    input_spec = {**spec.input, **job.config.input}
    model = build_model(job.task, job.arch, num_classes, input_spec)
    if job.init_from is not None:
        warm_start(model, job.init_from, job.task)
    result = train(model, dataset, job.config, input_spec, job.device, job.seed, job.progress)
    manifest = Manifest(
        task=job.task,
        arch=job.arch,
        num_classes=num_classes,
        categories=dataset.categories,
        input=input_spec,
        options=dict(spec.options),
    )
    metrics = _evaluate_val(job, model, manifest)
    manifest.metrics = metrics
    manifest.trained = {
        "dataset": str(job.data),
        "preset": job.preset,
        "steps": result.steps,
        "seconds": round(result.seconds, 1),
        "device": str(job.device),
        "seed": job.seed,
        "config": asdict(job.config),
        "final_loss": round(result.history[-1]["loss"], 4) if result.history else None,
        "init_from": str(job.init_from) if job.init_from else None,
    }
    save_entry(job.out, manifest, model.state_dict())
    return manifest


def _evaluate_val(job: TrainJob, model: nn.Module, manifest: Manifest) -> dict[str, Any]:
    try:
        val = CocoDataset(job.data, "val", job.task)
    except FileNotFoundError:
        log.warning("no val split in %s: the manifest will carry no metrics", job.data)
        return {}
    predictor = make_predictor(model, manifest, job.device)
    started = time.perf_counter()
    metrics = evaluate(predictor, val, limit=job.config.eval_images)
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    return {"val": metrics}


def warm_start(model: nn.Module, source: Path, task: str) -> None:
    """Copy every tensor whose name and shape match; heads of a different class count start fresh."""
    weights = _read_init_weights(source, task)
    # R-CNN backbones sit under `backbone.body.` (FPN wrapper); the small FCN's under `backbone.`.
    weights |= {
        "backbone." + k.removeprefix("backbone.body."): v for k, v in weights.items() if k.startswith("backbone.body.")
    }
    own = model.state_dict()
    matched = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(matched, strict=False)
    log.info("init-from %s: %d of %d tensors loaded", source, len(matched), len(own))
    if not matched:
        raise ValueError(f"nothing in {source} matches the model's parameters")


def _read_init_weights(source: Path, task: str) -> dict[str, Tensor]:
    if source.is_file():
        return read_torchvision_checkpoint(source)
    # A store entry folder, or a store root holding one of any task (detect → instances transfer, say).
    for folder in (source, *(source / t for t in (task, "detect", "instances", "segment"))):
        if (folder / "manifest.json").is_file():
            return load_entry(folder.parent, folder.name)[1]
    raise StoreError(f"{source} is neither a checkpoint file nor a store entry")
