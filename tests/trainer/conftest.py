"""A tiny shapes dataset shared by the trainer tests: 6 train images (3 batches of 2), 2 val."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.synth import generate_dataset


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny_shapes")
    generate_dataset(out, train=6, val=2, seed=3, max_side=320)
    return out
