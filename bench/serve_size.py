"""What an R-CNN's input size costs: the same weights at several shorter sides, side by side.

    python bench/serve_size.py --model-dir STORE --sizes 256 320 --out bench/results/serve_size_cpu

For each size, a copy of the store's entry with `input.min_size` set to it (longer side at most 1.625x,
quick's 256 / 416 ratio) runs batches of 8 of the bench's mixed-size pictures through `Predictor.predict`,
in fp32 eager and in the runtime the service would choose for it, in the paired shuffled rounds of
bench/runtimes.py: the ratios hold on a shared machine where the absolute times do not.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from harness import images, machine
from plot import bar_panels
from raw import _decode_all
from runtimes import BATCH, gflop_per_image, time_rounds

import models
from models.runtimes import choose_runtime, variant

MAX_OVER_MIN = 416 / 256


def resized_entry(store: Path, task: str, min_size: int, root: Path) -> Path:
    """A store holding `task` at another input size (the same weights)."""
    copy = root / f"{task}_{min_size}"
    shutil.copytree(store / task, copy / task)
    manifest_path = copy / task / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["input"] |= {"min_size": min_size, "max_size": round(min_size * MAX_OVER_MIN)}
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return copy


def run_task(store: Path, task: str, sizes: list[int], batches: list[list[Any]], rounds: int) -> dict[str, Any]:
    runners: dict[str, models.Predictor] = {}
    chosen, gflop = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            base = models.load_predictor(resized_entry(store, task, size, Path(tmp)), task, "cpu")
            choice = choose_runtime(base, budget_s=10.0, batch_size=4)  # as the service chooses
            runners[f"{size} fp32"] = base
            runners[f"{size} chosen"] = variant(base, choice.acceleration)
            chosen[size], gflop[size] = choice.acceleration.name, round(gflop_per_image(base, batches), 3)
        timing = time_rounds(runners, batches, rounds)  # speedups against the first size's fp32
    return {"timing": timing, "chosen": chosen, "gflop_per_image": gflop}


def plot(report: dict[str, Any], path: Path) -> None:
    bar_panels(path, {f"{task}: ms/image by shorter side, batch {BATCH}": {name: t["ms_per_image"] for name, t in
                      result["timing"].items()} for task, result in report["tasks"].items()})  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True, help="a trained store")
    parser.add_argument("--tasks", nargs="+", default=["detect", "instances"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 320])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench/results/serve_size_cpu"))
    args = parser.parse_args()
    tensors = [d.tensor for d in _decode_all(images(args.images))[0]]
    batches = [tensors[i : i + BATCH] for i in range(0, len(tensors), BATCH)]
    report: dict[str, Any] = {"machine": machine(), "store": str(args.model_dir), "sizes": args.sizes,
                              "batch_size": BATCH, "rounds": args.rounds, "tasks": {}}  # fmt: skip
    for task in args.tasks:
        report["tasks"][task] = run_task(args.model_dir, task, args.sizes, batches, args.rounds)
        print(task, json.dumps(report["tasks"][task]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    plot(report, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
