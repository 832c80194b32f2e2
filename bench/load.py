"""Closed-loop load against a running densepred service: latency percentiles, throughput, batch sizes.

    python bench/load.py --url http://127.0.0.1:8000 --images artifacts/shapes/images/val \\
        --concurrency 1 8 --requests 40 --out bench/results/service_cpu.json

Each of C workers sends one request, waits for the answer, and sends the next, over a fixed, sorted set
of images (mixed sizes). The mean batch size comes from the service's own `densepred_batch_size`
histogram, read before and after each run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
from harness import metric, ms, percentile

TASKS = ("segment", "detect", "instances")
MEDIA = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}


async def batch_histogram(client: httpx.AsyncClient, task: str) -> tuple[float, float]:
    """(sum, count) of densepred_batch_size for one task, from /metrics."""
    text = (await client.get("/metrics")).text
    labels = f'{{task="{task}"}}'
    return metric(text, "densepred_batch_size_sum", labels), metric(text, "densepred_batch_size_count", labels)


async def run(client: httpx.AsyncClient, task: str, images: list[tuple[bytes, str]], concurrency: int,
              requests: int) -> dict[str, Any]:  # fmt: skip
    latencies: list[float] = []
    errors: dict[str, int] = {}
    counter = iter(range(requests))

    async def worker() -> None:
        for i in counter:
            body, media = images[i % len(images)]
            started = time.perf_counter()
            response = await client.post(f"/{task}", content=body, headers={"content-type": media})
            if response.status_code == 200:
                latencies.append(time.perf_counter() - started)
            else:
                errors[str(response.status_code)] = errors.get(str(response.status_code), 0) + 1

    before = await batch_histogram(client, task)
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    after = await batch_histogram(client, task)
    batches = after[1] - before[1]
    return {
        "task": task,
        "concurrency": concurrency,
        "requests": requests,
        "ok": len(latencies),
        "errors": errors,
        "seconds": round(elapsed, 3),
        "throughput_rps": round(len(latencies) / elapsed, 3),
        "p50_ms": ms(percentile(latencies, 50)),
        "p95_ms": ms(percentile(latencies, 95)),
        "p99_ms": ms(percentile(latencies, 99)),
        "mean_ms": round(1000 * statistics.fmean(latencies), 1) if latencies else None,
        "mean_batch_size": round((after[0] - before[0]) / batches, 2) if batches else None,
    }


def load_images(folder: Path, limit: int) -> list[tuple[bytes, str]]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in MEDIA)[:limit]
    if not files:
        raise SystemExit(f"no images in {folder}")
    return [(p.read_bytes(), MEDIA[p.suffix.lower()]) for p in files]


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    images = load_images(args.images, args.image_count)
    async with httpx.AsyncClient(base_url=args.url, timeout=120) as client:
        models = (await client.get("/models")).json()
        results = []
        for task in args.tasks:
            for concurrency in args.concurrency:
                await run(client, task, images, concurrency, min(4, args.requests))  # warm the path
                results.append(await run(client, task, images, concurrency, args.requests))
    return {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "images": {"folder": str(args.images), "count": len(images)},
        "models": models,
        "results": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--image-count", type=int, default=32)
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report = asyncio.run(main_async(args))
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    for row in report["results"]:
        print(json.dumps({k: row[k] for k in ("task", "concurrency", "throughput_rps", "p50_ms", "p99_ms",
                                              "mean_batch_size", "errors")}))  # fmt: skip


if __name__ == "__main__":
    main()
