"""Overload: open-loop traffic at 1x and then 2x the measured capacity of one endpoint.

    .venv/bin/python bench/overload.py --out bench/results/overload.json

1. Capacity: closed-loop requests from 2 x MAX_BATCH_SIZE callers for --calibrate-s seconds.
2. One open-loop run at 1x that rate, then one at 2x, each for --seconds. Open loop: requests start on a
   fixed schedule whatever the answers, as real clients do, so queueing is not hidden.
3. 2x again, with every request sending its latency budget as `timeout=--budget-s`: the queue refuses
   (429 queue_too_slow) what it estimates it cannot answer in time, instead of answering late.

Each run also counts the answers that came within the budget per second ("on time").
Pass criteria (printed and stored): rejections at 2x are 429 in under 50 ms (p99), admitted requests'
p99 is within the request timeout, the server's peak RSS at 2x is within 10 % of the 1x run, no
response is a 5xx except, in run 3, late ones (504) under 5 % of its requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
from harness import Service, images, machine, metric, ms, percentile, service

MAX_BATCH_SIZE = 8
REQUEST_TIMEOUT_S = 10.0


async def capacity(client: httpx.AsyncClient, path: str, pictures: list[tuple[bytes, str]], seconds: float) -> float:
    done = 0
    stop = time.perf_counter() + seconds

    async def caller(offset: int) -> None:
        nonlocal done
        i = offset
        while time.perf_counter() < stop:
            body, media = pictures[i % len(pictures)]
            response = await client.post(path, content=body, headers={"content-type": media})
            done += response.status_code == 200
            i += 7

    started = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(2 * MAX_BATCH_SIZE)))
    return done / (time.perf_counter() - started)


Pictures = list[tuple[bytes, str]]


async def open_loop(
    served: Service,
    client: httpx.AsyncClient,
    path: str,
    pictures: Pictures,
    rate: float,
    seconds: float,
    budget_s: float,
    send_budget: bool = False,
) -> dict[str, Any]:
    outcomes: list[tuple[int, float]] = []  # (status or -1 for a transport error, seconds)
    samples: list[dict[str, int]] = []
    depths: list[float] = []

    async def one(i: int) -> None:
        body, media = pictures[i % len(pictures)]
        started = time.perf_counter()
        try:
            params = {"timeout": budget_s} if send_budget else None
            response = await client.post(path, content=body, headers={"content-type": media}, params=params)
            status = response.status_code
        except httpx.HTTPError:
            status = -1
        outcomes.append((status, time.perf_counter() - started))

    async def watch() -> None:
        async with httpx.AsyncClient(base_url=served.url, timeout=10) as probe:
            while True:
                samples.append(served.stats())
                text = (await probe.get("/metrics")).text
                depths.append(metric(text, "densepred_queue_depth", f'{{task="{path[1:]}"}}'))
                await asyncio.sleep(0.5)

    watcher = asyncio.create_task(watch())
    start = time.perf_counter()
    tasks = []
    for i in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    watcher.cancel()
    return summarise(rate, seconds, outcomes, samples, depths, budget_s)


def summarise(
    rate: float,
    seconds: float,
    outcomes: list[tuple[int, float]],
    samples: list[dict[str, int]],
    depths: list[float],
    budget_s: float,
) -> dict[str, Any]:
    statuses: dict[str, int] = {}
    for status, _ in outcomes:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    ok = [t for s, t in outcomes if s == 200]
    rejected = [t for s, t in outcomes if s == 429]
    return {
        "offered_rps": round(rate, 2),
        "seconds": seconds,
        "requests": len(outcomes),
        "statuses": statuses,
        "served_rps": round(len(ok) / seconds, 2),
        "on_time_rps": round(sum(t <= budget_s for t in ok) / seconds, 2),
        "admitted_p50_ms": ms(percentile(ok, 50)),
        "admitted_p99_ms": ms(percentile(ok, 99)),
        "rejected_p50_ms": ms(percentile(rejected, 50)),
        "rejected_p99_ms": ms(percentile(rejected, 99)),
        "rss_peak_mib": round(max(s["rss_kib"] for s in samples) / 1024, 1),
        "rss_mean_mib": round(sum(s["rss_kib"] for s in samples) / len(samples) / 1024, 1),
        "fds_max": max(s["fds"] for s in samples),
        "queue_depth_max": max(depths) if depths else None,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    pictures = images(64, seed=1)
    path = f"/{args.task}"
    settings = {"max_batch_size": MAX_BATCH_SIZE, "request_timeout_s": REQUEST_TIMEOUT_S, "tasks": args.task}
    with service(args.model_dir, **settings) as served:
        limits = httpx.Limits(max_connections=2000, max_keepalive_connections=200)
        async with httpx.AsyncClient(base_url=served.url, timeout=60, limits=limits) as client:
            rate = await capacity(client, path, pictures, args.calibrate_s)
            print(f"capacity of {path}: {rate:.1f} requests/s; server {served.stats()}")
            runs = {}
            for name, factor, send_budget in (("1x", 1, False), ("2x", 2, False), ("2x_budget", 2, True)):
                runs[name] = await open_loop(
                    served, client, path, pictures, factor * rate, args.seconds, args.budget_s, send_budget
                )
                runs[name]["hwm_after_mib"] = round(served.stats()["hwm_kib"] / 1024, 1)
                print(f"{name}:", json.dumps(runs[name]))
    two, one, budgeted = runs["2x"], runs["1x"], runs["2x_budget"]
    checks = {
        "rejections_are_429_under_50ms": two["rejected_p99_ms"] is not None and two["rejected_p99_ms"] < 50,
        "admitted_p99_within_deadline": (two["admitted_p99_ms"] or 0) <= REQUEST_TIMEOUT_S * 1000,
        "rss_within_10pct_of_1x": two["rss_peak_mib"] <= 1.1 * one["rss_peak_mib"],
        "no_5xx": not any(s.startswith("5") for run in (one, two) for s in run["statuses"]),
        "with_a_budget_late_answers_under_5pct": budgeted["statuses"].get("504", 0) < 0.05 * budgeted["requests"],
        "with_a_budget_no_other_5xx": not any(s.startswith("5") and s != "504" for s in budgeted["statuses"]),
    }
    return {
        "machine": machine(),
        "endpoint": path,
        "service_settings": settings,
        "budget_s": args.budget_s,
        "capacity_rps": round(rate, 2),
        "runs": runs,
        "checks": checks,
        "passed": all(checks.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=["segment", "detect", "instances"], default="detect")
    parser.add_argument("--model-dir", type=Path, default=None, help="a trained store; default: untrained models")
    parser.add_argument("--calibrate-s", type=float, default=30, help="also the warm-up (caches, allocator pools)")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--budget-s", type=float, default=1.0, help="the callers' latency budget (run 3: `timeout`)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report = asyncio.run(run(args))
    print(json.dumps(report["checks"]), "PASSED" if report["passed"] else "FAILED")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    raise SystemExit(0 if report["passed"] else 1)


if __name__ == "__main__":
    main()
