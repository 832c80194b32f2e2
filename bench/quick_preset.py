"""Time the embedded default: `trainer bootstrap` (synth + quick preset for all three tasks) on this machine.

    python bench/quick_preset.py --out bench/results/quick_preset_cpu.json          # trains, ~15 min on 2 cores
    python bench/quick_preset.py --store STORE --out ...                           # only collect a finished store

Writes per-task training seconds and val metrics from the store's manifests, plus the total wall time
when this script ran the bootstrap itself.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from models import read_manifest

TASKS = ("detect", "instances", "segment")


def run_bootstrap(workdir: Path) -> tuple[Path, float]:
    store, data = workdir / "store", workdir / "shapes"
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "trainer", "bootstrap", "--out", str(store), "--data", str(data)]
    subprocess.run(cmd, check=True)
    return store, time.perf_counter() - started


def collect(store: Path) -> dict[str, object]:
    tasks = {}
    for task in TASKS:
        manifest = read_manifest(store, task)
        tasks[task] = {
            "arch": manifest.arch,
            "steps": manifest.trained.get("steps"),
            "train_seconds": manifest.trained.get("seconds"),
            "init_from": manifest.trained.get("init_from"),
            "val": manifest.metrics.get("val"),
        }
    return tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, help="collect an existing store instead of training one")
    parser.add_argument("--wall-seconds", type=float, help="with --store: its wall time, timed by the caller")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    total = args.wall_seconds
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store
        if store is None:
            store, total = run_bootstrap(Path(tmp))
        report = {
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
            "total_wall_seconds": round(total, 1) if total is not None else None,
            "tasks": collect(store),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
