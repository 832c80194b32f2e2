"""`COMPILE=true` measured: torch.compile (inductor) on top of fp32 eager and of the runtime the service
chooses, per model, with the service's own check (models.compiling.try_compile: parity on the sample
images, then paired rounds against the same runtime uncompiled).

    python bench/compile_check.py --model-dir STORE --out bench/results/compile_cpu

The FCN is compiled whole, the R-CNNs' backbone and FPN only; shapes are dynamic. Writes JSON and a PNG.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Any

from harness import machine
from plot import bar_panels

import models
from models.compiling import try_compile
from models.runtimes import choose_runtime, variant

NOTE = re.compile(r"compiled in (?P<seconds>[\d.]+) s, (?P<speedup>[\d.]+)x eager")


def check(predictor: models.Predictor) -> dict[str, Any]:
    started = time.perf_counter()
    model, note = try_compile(predictor)
    figures = NOTE.match(note)
    return {"kept": model is not None, "note": note, "wall_s": round(time.perf_counter() - started, 1),
            "compile_s": float(figures["seconds"]) if figures else None,
            "speedup": float(figures["speedup"]) if figures else None}  # fmt: skip


def run_task(store: Path, task: str) -> dict[str, Any]:
    base = models.load_predictor(store, task, "cpu")
    choice = choose_runtime(base, budget_s=10.0, batch_size=4)  # as the service chooses
    chosen = variant(base, choice.acceleration)
    return {"chosen": choice.acceleration.name, "fp32": check(base), "chosen_runtime": check(chosen)}


def plot(report: dict[str, Any], path: Path) -> None:
    speedups = {}
    for task, result in report["tasks"].items():
        speedups[f"{task} fp32"] = result["fp32"]["speedup"] or 0.0
        speedups[f"{task} {result['chosen']}"] = result["chosen_runtime"]["speedup"] or 0.0
    title = "torch.compile: speed-up over the same runtime eager"
    bar_panels(path, {title: speedups}, reference=1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True, help="a trained store")
    parser.add_argument("--tasks", nargs="+", default=list(models.TASKS))
    parser.add_argument("--out", type=Path, default=Path("bench/results/compile_cpu"))
    args = parser.parse_args()
    report: dict[str, Any] = {"machine": machine(), "store": str(args.model_dir), "tasks": {}}
    for task in args.tasks:
        report["tasks"][task] = run_task(args.model_dir, task)
        print(task, json.dumps(report["tasks"][task]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    plot(report, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
