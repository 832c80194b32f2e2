"""What a second OpenMP team does to a forward pass: each runtime timed alone, then with another thread
holding an idle team (libgomp stops spinning once more threads belong to teams than there are cores).

    python bench/omp_teams.py --model-dir STORE --task segment

Batches of 4 copies of each of the runtime selection's two sample images (models/runtimes.py), as the
service's measurement times them; ms per image, median of the rounds. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

import models
from models import onnx_backend
from models.acceleration import Acceleration, native_cpu_bf16
from models.runtimes import sample_images, variant


def ms_per_image(runners: list[models.Predictor], images: list[torch.Tensor], rounds: int) -> list[float]:
    for runner in runners:  # warm-up
        runner.predict(images)
    seconds: list[list[float]] = [[] for _ in runners]
    for _ in range(rounds):
        for k, runner in enumerate(runners):
            started = time.perf_counter()
            runner.predict(images)
            seconds[k].append(time.perf_counter() - started)
    return [round(1000 * statistics.median(s) / len(images), 2) for s in seconds]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--task", default="segment", choices=models.TASKS)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    base = models.load_predictor(args.model_dir, args.task, "cpu")
    accelerations = [Acceleration("bf16" if native_cpu_bf16() else "fp32", True, True)]
    if onnx_backend.available():
        accelerations.append(Acceleration(backend="onnxruntime"))
    runners = [base] + [variant(base, a) for a in accelerations]
    images = [image for image in sample_images() for _ in range(4)]
    alone = ms_per_image(runners, images, args.rounds)
    other = ThreadPoolExecutor(1)  # a thread that ran one parallel region: its idle team stays
    other.submit(lambda: float((torch.ones(1024, 1024) @ torch.ones(1024, 1024)).sum())).result()
    beside = ms_per_image(runners, images, args.rounds)
    other.shutdown()
    names = [runner.acceleration.name for runner in runners]
    print(json.dumps({"task": args.task, "threads": torch.get_num_threads(),
                      "ms_per_image_alone": dict(zip(names, alone, strict=True)),
                      "ms_per_image_beside_an_idle_team": dict(zip(names, beside, strict=True))}))  # fmt: skip


if __name__ == "__main__":
    main()
