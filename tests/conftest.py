"""Shared fixtures: tiny real models saved into a temporary model store."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from processes import Service, service
from torch import nn

from models import DEFAULT_ARCH, TASKS, Category, Manifest, build_model, get_arch, make_predictor, save_entry
from models.predictors import Predictor

# Services started by the tests (in-process and real processes) time runtimes for their minimum two rounds
# only: the tests check the wiring; which runtime wins is the bench's business (bench/runtimes.py).
os.environ.setdefault("DENSEPRED_RUNTIME_BUDGET_S", "0")

SHAPES = [Category(1, "circle"), Category(2, "square"), Category(3, "triangle")]


def save_random_model(store: Path, task: str, seed: int = 0) -> Manifest:
    """An untrained default-architecture model for `task`, exported to `store` like a trained one."""
    torch.manual_seed(seed)
    arch = DEFAULT_ARCH[task]
    spec = get_arch(task, arch)
    model = build_model(task, arch, num_classes=4)
    manifest = Manifest(task=task, arch=arch, num_classes=4, categories=list(SHAPES), input=dict(spec.input))
    save_entry(store, manifest, model.state_dict())
    return manifest


def tiny_predictor(task: str, seed: int = 0) -> Predictor:
    """A small untrained predictor whose batch norms hold running statistics as training leaves them."""
    torch.manual_seed(seed)
    arch = DEFAULT_ARCH[task]
    model = build_model(task, arch, num_classes=4)
    for module in model.modules():  # running statistics as training leaves them, so that folding does something
        if isinstance(module, nn.BatchNorm2d):
            assert module.running_mean is not None
            assert module.running_var is not None
            module.running_mean.uniform_(-0.3, 0.3)
            module.running_var.uniform_(0.5, 2.0)
    spec = get_arch(task, arch)
    manifest = Manifest(task=task, arch=arch, num_classes=4, categories=list(SHAPES), input=dict(spec.input))
    return make_predictor(model, manifest)


@pytest.fixture(scope="session")
def random_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("store")
    for task in TASKS:
        save_random_model(store, task)
    return store


@pytest.fixture(scope="session")
def live_service(random_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """`python -m service` serving the random store on a loopback port, over real HTTP."""
    with service(random_store, tmp_path_factory.mktemp("live") / "service.log") as served:
        yield served
