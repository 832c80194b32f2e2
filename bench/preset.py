"""Time a preset's chain: `trainer bootstrap` (synth + all three tasks) on this machine.

    python bench/preset.py --out bench/results/quick_preset_cpu.json               # quick: ~15 min on 2 cores
    python bench/preset.py --preset full --out bench/results/full_preset_cpu.json  # full
    python bench/preset.py --workdir artifacts/quick --out ...                     # keep the store and data
    python bench/preset.py --store STORE --out ...                                 # only collect a finished store

Writes the bootstrap's stages (each training run: steps, seconds, val metrics), the store's final entries,
the total wall time when this script ran the bootstrap itself, and every model's metrics on a fresh
dataset made with another seed (`--fresh-seed`, after the timed part).
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
from typing import Any

import torch

from models import read_manifest

TASKS = ("detect", "instances", "segment")
STAGE_MARK = "stage {"


def trainer(*args: str) -> list[str]:
    return [sys.executable, "-m", "trainer", *args]


def run_bootstrap(workdir: Path, preset: str, seed: int = 0) -> tuple[Path, float, list[dict[str, Any]]]:
    """Runs the bootstrap, echoing its log, and returns the store, wall seconds and its stage records."""
    store, data = workdir / "store", workdir / "shapes"
    started = time.perf_counter()
    process = subprocess.Popen(trainer("bootstrap", "--out", str(store), "--data", str(data), "--preset", preset,
                                       "--seed", str(seed)),
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert process.stderr is not None
    stages = []
    for line in process.stderr:
        sys.stderr.write(line)
        if STAGE_MARK in line:
            stages.append(json.loads(line[line.index(STAGE_MARK) + len("stage ") :]))
    if process.wait() != 0:
        raise SystemExit(f"bootstrap failed with exit code {process.returncode}")
    return store, time.perf_counter() - started, stages


def collect(store: Path) -> dict[str, dict[str, Any]]:
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


def evaluate_fresh(store: Path, workdir: Path, seed: int) -> dict[str, Any]:
    """Every model on a val split generated with another seed: scenes it has never seen."""
    data = workdir / f"shapes_seed{seed}"
    if not (data / "annotations" / "val.json").is_file():
        subprocess.run(trainer("synth", "--out", str(data), "--train", "0", "--val", "100", "--seed", str(seed)),
                       check=True)  # fmt: skip
    results: dict[str, Any] = {"seed": seed}
    for task in TASKS:
        cmd = trainer("eval", "--task", task, "--data", str(data), "--model", str(store))
        results[task] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, help="collect an existing store instead of training one")
    parser.add_argument("--wall-seconds", type=float, help="with --store: its wall time, timed by the caller")
    parser.add_argument("--workdir", type=Path, help="where the store and data go (default: a temporary folder)")
    parser.add_argument("--fresh-seed", type=int, default=1, help="seed of the fresh evaluation set")
    parser.add_argument("--preset", choices=("smoke", "quick", "full"), default="quick", help="the bootstrap's preset")
    parser.add_argument("--seed", type=int, default=0, help="the bootstrap's training seed (data: seed 0)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    total, stages = args.wall_seconds, None
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        store = args.store
        if store is None:
            store, total, stages = run_bootstrap(workdir, args.preset, args.seed)
        report = {
            "machine": {
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
            },
            "preset": args.preset if args.store is None else None,
            "training_seed": args.seed if args.store is None else None,
            "total_wall_seconds": round(total, 1) if total is not None else None,
            "stages": stages,
            "tasks": collect(store),
            "fresh": evaluate_fresh(store, workdir, args.fresh_seed),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
