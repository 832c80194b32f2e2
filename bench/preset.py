"""Time a preset's chain: `trainer bootstrap` (synth + all three tasks) on this machine, then score it on
three sets: val (the training data's own split), fresh (the same renderer, another seed) and cross (an
independent renderer, bench/cross_render.py, with a fixed seed; never trained on), each overall and per
background kind, and cross once more through HTTP (what a user receives: bench/http_eval.py).

    python bench/preset.py --out bench/results/quick_preset_cpu.json               # quick: ~15 min on 2 cores
    python bench/preset.py --preset full --out bench/results/full_preset_cpu.json  # full
    python bench/preset.py --workdir artifacts/quick --out ...                     # keep the store and data
    python bench/preset.py --store STORE --data DIR --out ...                      # only score a finished store

Writes the bootstrap's stages (each training run: steps, seconds, val metrics), the store's final entries,
and the total wall time when this script ran the bootstrap itself; the scoring comes after the timed part.
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
BENCH = Path(__file__).resolve().parent
CROSS_SEED = 20261201  # fixed, so that runs compare
CROSS_IMAGES = 150


def trainer(*args: str) -> list[str]:
    return [sys.executable, "-m", "trainer", *args]


def run_bootstrap(
    workdir: Path, preset: str, seed: int = 0, amp: bool | None = None
) -> tuple[Path, float, list[dict[str, Any]]]:
    """Runs the bootstrap, echoing its log, and returns the store, wall seconds and its stage records."""
    store, data = workdir / "store", workdir / "shapes"
    precision = [] if amp is None else ["--amp" if amp else "--no-amp"]
    started = time.perf_counter()
    process = subprocess.Popen(trainer("bootstrap", "--out", str(store), "--data", str(data), "--preset", preset,
                                       "--seed", str(seed), *precision),
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


def evaluate_set(store: Path, data: Path) -> dict[str, Any]:
    """`trainer eval` of every model on the set's val split, overall and per background kind."""
    results: dict[str, Any] = {"data": str(data)}
    for task in TASKS:
        cmd = trainer("eval", "--task", task, "--data", str(data), "--model", str(store), "--by", "background")
        results[task] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    return results


def fresh_set(workdir: Path, seed: int) -> Path:
    """A val split generated with another seed: scenes of the training renderer never seen in training."""
    data = workdir / f"shapes_seed{seed}"
    if not (data / "annotations" / "val.json").is_file():
        subprocess.run(trainer("synth", "--out", str(data), "--train", "0", "--val", "100", "--seed", str(seed)),
                       check=True)  # fmt: skip
    return data


def cross_set(workdir: Path, images: int, seed: int) -> Path:
    """The independent renderer's set (its own code, colours, textures and rasteriser)."""
    data = workdir / f"cross_seed{seed}"
    if not (data / "annotations" / "val.json").is_file():
        subprocess.run([sys.executable, str(BENCH / "cross_render.py"), "--out", str(data), "--images", str(images),
                        "--seed", str(seed)], check=True)  # fmt: skip
    return data


def evaluate_http(store: Path, data: Path) -> dict[str, Any]:
    cmd = [sys.executable, str(BENCH / "http_eval.py"), "--model-dir", str(store), "--data", str(data), "--by",
           "background"]  # fmt: skip
    return dict(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))


def headline(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The figures the targets name, per set: box and mask mAP@0.5 and mAP@[.5:.95], mIoU."""
    table: dict[str, dict[str, float]] = {}
    for name in ("val", "fresh", "cross", "cross_http"):
        scores = report.get(name)
        if not scores:
            continue
        table[name] = {
            "box_mAP50": scores["detect"]["bbox"]["mAP50"], "box_mAP": scores["detect"]["bbox"]["mAP"],
            "mask_mAP50": scores["instances"]["segm"]["mAP50"], "mask_mAP": scores["instances"]["segm"]["mAP"],
            "mIoU": scores["segment"]["mIoU"],
        }  # fmt: skip
        agnostic = scores["detect"].get("agnostic")  # trainer eval's class-agnostic figures (not through HTTP)
        if agnostic:
            table[name] |= {"box_mAP50_agnostic": agnostic["bbox"]["mAP50"],
                            "mask_mAP50_agnostic": scores["instances"]["agnostic"]["segm"]["mAP50"]}  # fmt: skip
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, help="collect an existing store instead of training one")
    parser.add_argument("--data", type=Path, help="with --store: the dataset it was trained on (for val)")
    parser.add_argument("--wall-seconds", type=float, help="with --store: its wall time, timed by the caller")
    parser.add_argument("--workdir", type=Path, help="where the store and data go (default: a temporary folder)")
    parser.add_argument("--fresh-seed", type=int, default=1, help="seed of the fresh evaluation set")
    parser.add_argument("--preset", choices=("smoke", "quick", "full"), default="quick", help="the bootstrap's preset")
    parser.add_argument("--seed", type=int, default=0, help="the bootstrap's training seed (data: seed 0)")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, help="the bootstrap's --amp (default: its own)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    total, stages = args.wall_seconds, None
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        store = args.store
        if store is None:
            store, total, stages = run_bootstrap(workdir, args.preset, args.seed, args.amp)
        report = {
            "machine": {
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
            },
            "preset": args.preset if args.store is None else None,
            "training_seed": args.seed if args.store is None else None,
            "amp": args.amp if args.store is None else None,
            "total_wall_seconds": round(total, 1) if total is not None else None,
            "stages": stages,
            "tasks": collect(store),
            "val": evaluate_set(store, args.data or workdir / "shapes"),
            "fresh": evaluate_set(store, fresh_set(workdir, args.fresh_seed)) | {"seed": args.fresh_seed},
            "cross": evaluate_set(store, cross := cross_set(workdir, CROSS_IMAGES, CROSS_SEED)) | {"seed": CROSS_SEED},
            "cross_http": evaluate_http(store, cross),
        }
        report["headline"] = headline(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["headline"], indent=2))


if __name__ == "__main__":
    main()
