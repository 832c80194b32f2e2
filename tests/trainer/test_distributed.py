"""Data-parallel training through the standard launcher, two CPU processes over gloo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from models import load_predictor, read_manifest
from trainer.data import CocoDataset
from trainer.runlog import METRICS_FILE, read_metrics


def test_torchrun_two_cpu_processes_train_and_only_rank_0_writes(tiny_shapes: Path, tmp_path: Path) -> None:
    store, run_dir = tmp_path / "store", tmp_path / "run"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    train = ["-m", "trainer", "train", "--task", "detect", "--data", str(tiny_shapes), "--out", str(store),
             "--preset", "smoke", "--steps", "3", "--batch-size", "1", "--device", "cpu", "--run-dir", str(run_dir),
             "--no-progress"]  # fmt: skip
    # --standalone: a local rendezvous on a free port, so parallel CI jobs cannot collide.
    done = subprocess.run([*launcher, *train], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank 1 of 2 on cpu (gloo)" in done.stderr

    # One report, one store entry and no temp folders: rank 1 wrote nothing.
    assert json.loads(done.stdout)["trained"]["world_size"] == 2
    assert [p.name for p in store.iterdir() if p.name != ".lock"] == ["detect"]  # .lock: the writers' lock file
    assert read_manifest(store, "detect").trained["world_size"] == 2
    assert [row["step"] for row in read_metrics(run_dir / METRICS_FILE)] == [1, 2, 3]

    predictor = load_predictor(store, "detect")
    image = CocoDataset(tiny_shapes, "val", "detect").read_image(0)
    assert predictor.predict([image])[0].boxes.shape[1] == 4
