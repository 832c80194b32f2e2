"""Fixtures of the Docker tests: a store the trainer has just written, and an image to send."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.cli import main as trainer
from trainer.synth import generate_dataset


@pytest.fixture(scope="session")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    generate_dataset(out, train=4, val=2, seed=5, max_side=320)
    return out


@pytest.fixture(scope="session")
def store(shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trainer's own output, one step per task, in a folder the trainer creates (as `make serve` does)."""
    runs = tmp_path_factory.mktemp("runs")
    store = runs / "models"
    for task in ("detect", "instances", "segment"):
        argv = ["train", "--task", task, "--data", str(shapes), "--out", str(store), "--preset", "smoke"]
        argv += ["--steps", "1", "--device", "cpu", "--no-progress", "--run-dir", str(runs / task)]
        assert trainer(argv) == 0
    return store


@pytest.fixture(scope="session")
def photo(shapes: Path) -> bytes:
    return sorted((shapes / "images" / "val").iterdir())[0].read_bytes()
