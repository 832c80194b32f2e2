"""Slow clients: ordinary requests' latency with and without connections that trickle their uploads.

    .venv/bin/python bench/trickle.py --out bench/results/trickle.json

1. Baseline: --callers closed-loop callers post small images round-robin to /segment, /detect and
   /instances for --seconds; every latency is kept.
2. The same again while --tricklers connections (spread over the three endpoints) each announce a
   100 kB upload, send a byte every --every-s seconds, and on their 408 (BODY_TIMEOUT_S) reconnect and
   start over: a standing attack, not a single wave.

Reported per phase: p50/p99 of the ordinary requests (all, and per endpoint), their statuses, and the
tricklers' answers. Before issue 16, 70 such clients kept /detect at 429 for every other client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from harness import images, machine, ms, percentile, service

ENDPOINTS = ("/segment", "/detect", "/instances")


async def ordinary(url: str, callers: int, seconds: float) -> dict[str, Any]:
    pictures = images(12, seed=5, sizes=(96, 200))
    latencies: dict[str, list[float]] = {path: [] for path in ENDPOINTS}
    statuses: Counter[int] = Counter()
    stop = time.perf_counter() + seconds

    async def caller(offset: int) -> None:
        i = offset
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            while time.perf_counter() < stop:
                path = ENDPOINTS[i % len(ENDPOINTS)]
                body, media = pictures[i % len(pictures)]
                started = time.perf_counter()
                try:
                    status = (await client.post(path, content=body, headers={"content-type": media})).status_code
                except httpx.HTTPError:
                    status = -1
                statuses[status] += 1
                if status == 200:
                    latencies[path].append(time.perf_counter() - started)
                i += 1

    await asyncio.gather(*(caller(i) for i in range(callers)))
    every = [s for values in latencies.values() for s in values]
    report: dict[str, Any] = {
        "requests": sum(statuses.values()),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "p50_ms": ms(percentile(every, 50)),
        "p99_ms": ms(percentile(every, 99)),
    }
    report["per_endpoint"] = {
        path: {"n": len(v), "p50_ms": ms(percentile(v, 50)), "p99_ms": ms(percentile(v, 99))}
        for path, v in latencies.items()
    }
    return report


async def trickler(port: int, path: str, every_s: float, stop: float, answers: Counter[int]) -> None:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n"
    while time.perf_counter() < stop:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            answers[-2] += 1
            await asyncio.sleep(every_s)
            continue
        answer = asyncio.ensure_future(reader.readline())
        try:
            writer.write(head.encode() + b"\x89PNG")
            while not answer.done() and time.perf_counter() < stop:
                await asyncio.wait([answer], timeout=every_s)
                if not answer.done():
                    writer.write(b"\x00")
                    await writer.drain()
        except ConnectionError:
            pass
        try:
            line = await asyncio.wait_for(answer, 5) if time.perf_counter() < stop else b""
            if line:
                answers[int(line.split()[1])] += 1
        except (ConnectionError, TimeoutError, ValueError, IndexError):
            answers[-1] += 1
        answer.cancel()
        writer.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = {"max_batch_size": 8, "request_timeout_s": 10, "body_timeout_s": args.body_timeout_s}
    with service(args.model_dir, ready_timeout_s=args.ready_timeout_s, **settings) as served:
        async with httpx.AsyncClient(base_url=served.url, timeout=30) as warm:
            for path in ENDPOINTS:  # first requests pay for lazy initialisation: not part of either phase
                body, media = images(1, seed=9, sizes=(96, 200))[0]
                await warm.post(path, content=body, headers={"content-type": media})
        baseline = await ordinary(served.url, args.callers, args.seconds)
        print("without tricklers:", json.dumps(baseline))
        answers: Counter[int] = Counter()
        stop = time.perf_counter() + args.seconds + 2
        attack = [
            asyncio.ensure_future(trickler(served.port, ENDPOINTS[i % 3], args.every_s, stop, answers))
            for i in range(args.tricklers)
        ]
        await asyncio.sleep(2)  # every trickler connected and trickling
        attacked = await ordinary(served.url, args.callers, args.seconds)
        await asyncio.gather(*attack)
        attacked["tricklers_answers"] = {str(k): v for k, v in sorted(answers.items())}
        print(f"with {args.tricklers} tricklers:", json.dumps(attacked))
        stats = served.stats()
    return {
        "machine": machine(),
        "settings": settings,
        "callers": args.callers,
        "seconds": args.seconds,
        "tricklers": args.tricklers,
        "trickle_every_s": args.every_s,
        "without_tricklers": baseline,
        "with_tricklers": attacked,
        "server_after": stats,
        "note": "tricklers' answers: status -> count; -1 reset or no answer, -2 connect refused",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=None, help="a trained store (default: untrained models)")
    parser.add_argument("--callers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--tricklers", type=int, default=200)
    parser.add_argument("--every-s", type=float, default=1.0, help="seconds between a trickler's bytes")
    parser.add_argument("--body-timeout-s", type=float, default=5.0)
    parser.add_argument("--ready-timeout-s", type=float, default=120.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    report = asyncio.run(run(args))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
