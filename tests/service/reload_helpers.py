"""Store entries for the reload tests: new versions as the trainer publishes them, and broken ones."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from models import DEFAULT_ARCH, Category, Manifest, build_model, get_arch, save_entry
from models.store import WEIGHTS_FILE

SHAPES = [Category(1, "circle"), Category(2, "square"), Category(3, "triangle")]


def copy_store(source: Path, target: Path) -> Path:
    """A store of one's own to publish into (the session's store is shared by other tests)."""
    for task_dir in source.iterdir():
        if not task_dir.name.startswith("."):
            shutil.copytree(task_dir, target / task_dir.name)
    return target


def publish(store: Path, task: str, seed: int, arch: str | None = None, **trained: Any) -> str:
    """A new version of `task` (distinct weights per seed) published through the trainer's path; returns it.
    With `arch`, the manifest names that architecture while the weights stay the default one's."""
    torch.manual_seed(seed)
    spec = get_arch(task, DEFAULT_ARCH[task])
    model = build_model(task, spec.name, num_classes=4)
    manifest = Manifest(task=task, arch=arch or spec.name, num_classes=4, categories=list(SHAPES),
                        input=dict(spec.input), trained={"seed": seed, **trained})  # fmt: skip
    save_entry(store, manifest, model.state_dict())
    return manifest.version


def publish_damaged(store: Path, task: str, seed: int) -> str:
    """A new version whose weights no longer match the sha256 in its manifest (a byte flipped in transit)."""
    version = publish(store, task, seed)
    weights = store / task / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    return version
