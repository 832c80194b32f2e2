"""Soak: 10,000 mixed requests against one server process; memory and file descriptors must stay flat.

    .venv/bin/python bench/soak.py --out bench/results/soak.json

The mix: all three endpoints, raw bodies and multipart, PNG and JPEG of mixed sizes, plus about 5 %
broken uploads (truncated, garbage, wrong type) and a few parameter errors, from a fixed number of
closed-loop callers. RSS and open fds are sampled every --chunk requests, with no request in flight and
no client connection open. The first --warmup requests fill allocator pools and caches; growth is
measured after them: the median of the last three samples over the first one after warm-up (< 5 %),
and the spread of open fds over the same samples (<= 5).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
from harness import images, machine, ms, percentile, service

TASKS = ("segment", "detect", "instances")


def request_for(i: int, rng: random.Random, pictures: list[tuple[bytes, str]]) -> tuple[str, dict[str, Any]]:
    task = TASKS[i % 3]
    body, media = pictures[rng.randrange(len(pictures))]
    roll = rng.random()
    if roll < 0.02:
        body = body[: len(body) // 3]  # truncated
    elif roll < 0.04:
        body = rng.randbytes(512)  # garbage
    elif roll < 0.05:
        media = "text/plain"
    params = {"classes": "nonsense"} if rng.random() < 0.01 else {}
    if i % 2:
        return f"/{task}", {"files": {"image": ("upload", body, media)}, "params": params}
    return f"/{task}", {"content": body, "headers": {"content-type": media}, "params": params}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    pictures = images(48, seed=2, sizes=(96, 320))
    rng = random.Random(3)
    settings = {"max_detections": args.max_detections}
    statuses: dict[str, int] = {}
    latencies: list[float] = []
    samples: list[dict[str, int]] = []
    with service(args.model_dir, **settings) as served:
        started = time.perf_counter()
        for first in range(0, args.requests, args.chunk):
            counter = iter(range(first, min(first + args.chunk, args.requests)))
            # A fresh client per chunk, closed before sampling: the server then holds no client
            # connection, so its fd count is comparable from one sample to the next.
            async with httpx.AsyncClient(base_url=served.url, timeout=60) as client:

                async def caller(client: httpx.AsyncClient = client, counter: Any = counter) -> None:
                    for i in counter:
                        path, request = request_for(i, rng, pictures)
                        begun = time.perf_counter()
                        response = await client.post(path, **request)
                        latencies.append(time.perf_counter() - begun)
                        statuses[str(response.status_code)] = statuses.get(str(response.status_code), 0) + 1

                await asyncio.gather(*(caller() for _ in range(args.concurrency)))
            await asyncio.sleep(0.5)
            samples.append({"request": min(first + args.chunk, args.requests), **served.stats()})
            print(json.dumps(samples[-1]), flush=True)
        elapsed = time.perf_counter() - started
    return report(args, settings, statuses, latencies, samples, elapsed)


def report(
    args: argparse.Namespace,
    settings: dict[str, Any],
    statuses: dict[str, int],
    latencies: list[float],
    samples: list[dict[str, int]],
    elapsed: float,
) -> dict[str, Any]:
    samples.sort(key=lambda s: s["request"])
    steady = [s for s in samples if s["request"] >= args.warmup]
    baseline = steady[0]["rss_kib"]
    final = statistics.median(s["rss_kib"] for s in steady[-3:])
    growth = (final - baseline) / baseline
    fds = [s["fds"] for s in steady]
    checks = {
        "rss_growth_under_5pct": growth < 0.05,
        "fds_flat": max(fds) - min(fds) <= 5,
        "no_5xx": not any(s.startswith("5") for s in statuses),
    }
    return {
        "machine": machine(),
        "service_settings": settings,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "seconds": round(elapsed, 1),
        "throughput_rps": round(args.requests / elapsed, 2),
        "statuses": dict(sorted(statuses.items())),
        "p50_ms": ms(percentile(latencies, 50)),
        "p99_ms": ms(percentile(latencies, 99)),
        "rss_after_warmup_mib": round(baseline / 1024, 1),
        "rss_final_mib": round(final / 1024, 1),
        "rss_growth_pct": round(100 * growth, 2),
        "fds_min_max": [min(fds), max(fds)],
        "samples": samples,
        "checks": checks,
        "passed": all(checks.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=None, help="a trained store; default: untrained models")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=1_000)
    parser.add_argument("--concurrency", type=int, default=6)
    parser.add_argument("--chunk", type=int, default=500, help="requests between two quiescent samples")
    parser.add_argument("--max-detections", type=int, default=20, help="untrained heads find ~100 per image")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    summary = {k: result[k] for k in ("throughput_rps", "statuses", "rss_growth_pct", "fds_min_max", "checks")}
    print(json.dumps(summary), "PASSED" if result["passed"] else "FAILED")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    raise SystemExit(0 if result["passed"] else 1)


if __name__ == "__main__":
    main()
