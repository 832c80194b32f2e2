"""Side by side, in one run: the raw model, the service, the service without batching, and LitServe.

    .venv/bin/python bench/compare.py --tasks segment detect instances --model-dir artifacts/models \\
        --out bench/results/compare_cpu    # about 22 minutes on 2 CPU cores
    .venv/bin/python bench/compare.py --quick --out /tmp/compare_smoke    # detect only, about 1.5 minutes

Per task, on one seeded set of mixed-size images (or --images DIR, e.g. artifacts/shapes/images/val):
  (a) raw        Predictor.predict in this process, batches of 1 and of the max batch size: the limit;
  (b) service    `python -m service`, default settings (MAX_BATCH_SIZE 8, MAX_WAIT_MS 10, all models);
  (c) batch1     the same with MAX_BATCH_SIZE=1: batching off;
  (d) litserve   LitServe hosting the same predictor, batching on with the same 8 / 10 ms, doing the same
                 decode and JSON per request (bench/litserve_app.py);
  (e) service_w2 the service with INFERENCE_WORKERS=2: two batches at once, each on half the cores;
  (f) litserve_w2  LitServe with two inference processes (workers_per_device=2), each on half the cores;
  (g) service_r2 two replicas of the service (two processes, as `docker compose --scale api=2` on one
                 machine), each on half the cores; the clients spread their connections over both;
  (h) service_r2_nginx  the same behind nginx (docker/nginx.conf, a worker process per core), as deployed;
  (i) service_fp32  only when named in --systems: the service with PRECISION=fp32, so that
                 `ratios.<task>.peak_vs_service_fp32` is the runtime choice's gain (PRECISION=auto).
The raw forward runs batches of 8 that third way too (--workers threads side by side); its best way is
the limit every system is measured against.
(b)-(d) get multipart uploads, as `curl -F` sends them, from bench/loadgen.py: closed loop at each
--concurrency, then open loop (Poisson arrivals) at each --rates factor x the raw batched capacity;
the service's open-loop points run once more with each request sending the SLO as `timeout`
(mode "open_timeout_slo"). Only one server runs at a time, each warmed up first. Every point records
the server's CPU per answered request, by thread role for the service (bench/cpuuse.py).

Writes <out>.json (machine and versions, settings, every figure, and `ratios` with the issue's targets)
and <out>.png (throughput and latency vs concurrency, goodput vs offered rate). Reading them: the raw
batched line is the ceiling; `ratios.<task>.targets` says for each target its value and whether it is met.
Every run records `client_cpu_share`: the load generator shares the cores with the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import cpuuse
import front
import loadgen
import plot
import raw
import systems
import torch
from harness import images, machine, random_store

TASKS = ("segment", "detect", "instances")
MAX_BATCH = 8
MAX_WAIT_MS = 10.0
WORKERS = 2  # for the *_w2 and *_r2 systems and the raw forward's parallel way: one per core on the CI machine
SYSTEMS = ("service", "batch1", "litserve", "service_w2", "litserve_w2", "service_r2", "service_r2_nginx")
# On request only: the service with PRECISION=fp32, against which the runtime choice (PRECISION=auto) is judged.
OPTIONAL_SYSTEMS = ("service_fp32",)
Pictures = list[tuple[bytes, str]]
MEDIA = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}


def load_pictures(args: argparse.Namespace) -> tuple[Pictures, dict[str, Any]]:
    if args.images is None:
        about = {"source": "bench/harness.py images()", "count": args.image_count, "seed": args.seed}
        return images(args.image_count, args.seed), about | {"sizes_px": [160, 480]}
    files = sorted(p for p in args.images.iterdir() if p.suffix.lower() in MEDIA)[: args.image_count]
    if not files:
        raise SystemExit(f"no images in {args.images}")
    return [(p.read_bytes(), MEDIA[p.suffix.lower()]) for p in files], {"source": str(args.images), "count": len(files)}


def _answer(body: bytes) -> Any:
    answer = json.loads(body)
    answer.pop("timing_ms", None)  # the only field expected to differ between servers
    return answer


async def exercise(
    server: systems.Server, task: str, pictures: Pictures, capacity: float, args: argparse.Namespace
) -> dict[str, Any]:
    """Warm up, keep one answer for comparison, then every closed-loop and open-loop point (rates x capacity)."""
    requests = [loadgen.multipart_request(server.host(), f"/{task}", data, media) for data, media in pictures]
    status, body = await loadgen.fetch(systems.HOST, server.port, requests[0])
    answer = _answer(body) if status == 200 else {"status": status}
    await loadgen.closed_loop(systems.HOST, server.ports, requests, args.max_batch * len(server.ports), args.warmup_s)
    points = []
    for concurrency in args.concurrency:
        run = loadgen.closed_loop(systems.HOST, server.ports, requests, concurrency, args.seconds)
        points.append({"mode": "closed", "concurrency": concurrency} | await _point(server, run, args))
    # The service again, its callers sending the SLO as their `timeout`: what it refuses at once (429
    # queue_too_slow) it would have answered too late. LitServe has no such contract to test.
    budgeted = [loadgen.multipart_request(server.host(), f"/{task}?timeout={args.slo_ms / 1000:g}", data, media)
                for data, media in pictures] if server.name == "service" else []  # fmt: skip
    for mode, batch in (("open", requests), ("open_timeout_slo", budgeted)):
        if not batch:
            continue
        for factor in args.rates:
            rate = factor * capacity
            count = max(10, round(rate * args.seconds))
            run = loadgen.open_loop(systems.HOST, server.ports, batch, rate, count, seed=args.seed)
            about = {"mode": mode, "rate_factor": factor, "offered_rps": round(rate, 2)}
            points.append(about | await _point(server, run, args))
    runtime_s = round(server.runtime_s, 2) if server.runtime_s is not None else None
    return {"started_s": round(server.started_s, 2), "runtime_chosen_s": runtime_s, "settings": server.settings,
            "runtimes": await _runtimes(server) if runtime_s is not None else None,
            "answer": answer, "points": points}  # fmt: skip


async def _runtimes(server: systems.Server) -> dict[str, Any]:
    """The runtime each model of the service runs (its /models), as chosen on this machine."""
    status, body = await loadgen.fetch(systems.HOST, server.port, loadgen.get_request(server.host(), "/models"))
    if status != 200:
        return {"status": status}
    return {m["task"]: m["runtime"] for m in json.loads(body)["models"]}


async def _point(server: systems.Server, run: Any, args: argparse.Namespace) -> dict[str, Any]:
    before, cpu_before = await server.batches(), server.cpu()
    summary = await loadgen.measure(run, args.slo_ms / 1000)
    after, cpu_after = await server.batches(), server.cpu()
    batches = after[1] - before[1]
    summary["mean_batch_size"] = round((after[0] - before[0]) / batches, 2) if batches else None
    # Per answered request; refused ones (429) cost a little too and are counted in the numerator only.
    summary["server_cpu_ms_per_request"] = cpuuse.per_request_ms(cpu_before, cpu_after, summary["ok"])
    print(f"  {server.name:9} {json.dumps(summary)}", flush=True)
    return summary


def run_task(task: str, pictures: Pictures, args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    print(f"{task}: raw forward", flush=True)
    limit = raw.measure(args.model_dir, task, pictures, [1, args.max_batch], args.raw_seconds, args.device,
                        WORKERS if args.device == "cpu" else 1)  # fmt: skip
    print(f"  raw       {json.dumps(limit['batches'])}", flush=True)
    capacity = limit["batches"][-1]["images_per_s"]  # open-loop rates are relative to the batched limit
    extra = {"device": args.device} | dict(item.split("=", 1) for item in args.setting)
    servers: dict[str, Callable[[], AbstractContextManager[systems.Server]]] = {
        "service": lambda: systems.densepred("service", args.model_dir, task, args.max_batch, MAX_WAIT_MS, **extra),
        "batch1": lambda: systems.densepred("batch1", args.model_dir, task, 1, MAX_WAIT_MS, **extra),
        "service_fp32": lambda: systems.densepred(
            "service_fp32", args.model_dir, task, args.max_batch, MAX_WAIT_MS, **(extra | {"precision": "fp32"})
        ),
        "litserve": lambda: systems.litserve(args.model_dir, task, args.max_batch, MAX_WAIT_MS),
        "service_w2": lambda: systems.densepred(
            "service_w2", args.model_dir, task, args.max_batch, MAX_WAIT_MS, inference_workers=str(WORKERS), **extra
        ),
        "litserve_w2": lambda: systems.litserve(
            args.model_dir, task, args.max_batch, MAX_WAIT_MS, workers=WORKERS, name="litserve_w2"
        ),
        "service_r2": lambda: systems.densepred_replicas(
            "service_r2", args.model_dir, task, WORKERS, args.max_batch, MAX_WAIT_MS, **extra
        ),
        "service_r2_nginx": lambda: systems.densepred_replicas(
            "service_r2_nginx", args.model_dir, task, WORKERS, args.max_batch, MAX_WAIT_MS, True, **extra
        ),
    }
    results: dict[str, Any] = {}
    for name in args.systems:
        print(f"{task}: {name}", flush=True)
        with servers[name]() as server:
            results[name] = asyncio.run(exercise(server, task, pictures, capacity, args))
    reference = results.get("service", {}).get("answer")
    for result in results.values():
        answer = result.pop("answer")
        result["same_answer_as_service"] = None if reference is None else answer == reference
    # Another process busy on the cores shows here (the machine's 1-minute load average as the task ends).
    load = round(os.getloadavg()[0], 2)
    return {"raw": limit, "systems": results, "seconds": round(time.perf_counter() - started, 1), "load_after": load}


def _closed(report: dict[str, Any], name: str) -> dict[int, dict[str, Any]]:
    points = report["systems"].get(name, {}).get("points", [])
    return {p["concurrency"]: p for p in points if p["mode"] == "closed"}


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


def _peak(report: dict[str, Any], name: str) -> float | None:
    return max((p["throughput_rps"] for p in _closed(report, name).values()), default=None)


def _raw_batches(report: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {b["batch_size"]: b for b in report["raw"]["batches"]}


def _c1_overhead(report: dict[str, Any], name: str) -> float | None:
    """p50 at concurrency 1 over the raw batch-1 forward's, minus 1."""
    p50_c1 = _closed(report, name).get(1, {}).get("p50_ms")
    return None if p50_c1 is None else round(p50_c1 / _raw_batches(report)[1]["batch_p50_ms"] - 1, 3)


def ratios(report: dict[str, Any], device: str = "cpu") -> dict[str, Any]:
    """The issue's targets (CPU, or GPU for a cuda run), from one task's figures; None where a run
    needed for one was not made. On a CPU, `targets` is the service as it ships against LitServe as it
    ships, and `targets_two_workers` (when run) both with two inference workers; the raw limit is the same."""
    if device.startswith("cuda"):
        return _gpu_ratios(report)
    service, batch1 = _closed(report, "service"), _closed(report, "batch1")
    systems = report["systems"]
    peak = {name: _peak(report, name) for name in systems}
    c1, c8 = service.get(1, {}), service.get(MAX_BATCH, {})
    out = {
        "peak_throughput_rps": peak,
        "goodput_rps_by_offered_load": _goodput(report),
        "service_c8_vs_service_c1": _ratio(c8.get("throughput_rps"), c1.get("throughput_rps")),
        "service_c8_vs_batch1_c1": _ratio(c8.get("throughput_rps"), batch1.get(1, {}).get("throughput_rps")),
        "cold_start_s": {name: s["started_s"] for name, s in systems.items()},
        "runtime_chosen_s": {name: s.get("runtime_chosen_s") for name, s in systems.items()},
    }
    if "service_fp32" in systems:  # the runtime choice's gain, in the service as it ships
        out["peak_vs_service_fp32"] = _target(_ratio(peak.get("service"), peak.get("service_fp32")), ">=", 1.4)
    out |= _cpu_targets(report, "service", "litserve")
    for name, suffix in _SCALED.items():  # each against LitServe with two inference processes
        if name in systems:
            scaled = _cpu_targets(report, name, "litserve_w2")
            out |= {f"vs_litserve_by_concurrency_{suffix}": scaled["vs_litserve_by_concurrency"],
                    f"targets_{suffix}": scaled["targets"]}  # fmt: skip
    return out


# The service scaled to two computations at once: the ratios of each go under targets_<suffix>.
_SCALED = {"service_w2": "two_workers", "service_r2": "replicas", "service_r2_nginx": "replicas_nginx"}


def _cpu_targets(report: dict[str, Any], name: str, lit_name: str) -> dict[str, Any]:
    batches = _raw_batches(report)
    service, batch1, lit = (_closed(report, n) for n in (name, "batch1", lit_name))
    peak, lit_peak = _peak(report, name), _peak(report, lit_name)
    c1, c8, lit_c8 = service.get(1, {}), service.get(MAX_BATCH, {}), lit.get(MAX_BATCH, {})
    sequential = max(c1.get("throughput_rps", 0), batch1.get(1, {}).get("throughput_rps", 0))
    versus = {c: {"throughput_ratio": _ratio(p["throughput_rps"], lit[c]["throughput_rps"]),
                  "p99_ms": {"service": p["p99_ms"], "litserve": lit[c]["p99_ms"]}}
              for c, p in service.items() if c in lit}  # fmt: skip
    p99_lower = None if not (c8 and lit_c8) else bool(c8["p99_ms"] < lit_c8["p99_ms"])
    started = report["systems"].get(name, {}).get("started_s")
    return {
        "vs_litserve_by_concurrency": versus,
        "targets": {
            "saturation_vs_raw_batched": _target(_ratio(peak, batches[max(batches)]["images_per_s"]), ">=", 0.9),
            "p50_overhead_c1_vs_forward_b1": _target(_c1_overhead(report, name), "<=", 0.10),
            "c8_vs_best_sequential": _target(_ratio(c8.get("throughput_rps"), sequential), ">=", 0.9),
            "peak_throughput_vs_litserve": _target(_ratio(peak, lit_peak), ">=", 1.3),
            "p99_lower_than_litserve_at_c8": {"value": p99_lower, "target": "true", "met": p99_lower},
            "cold_start_s": _target(started, "<=", 10),
        },
    }


def _gpu_ratios(report: dict[str, Any]) -> dict[str, Any]:
    batches = _raw_batches(report)
    service, batch1 = _closed(report, "service"), _closed(report, "batch1")
    peak = {name: _peak(report, name) for name in report["systems"]}
    overhead = _c1_overhead(report, "service")
    top = max(service, default=None)
    off = batch1.get(top, {}).get("throughput_rps") if top is not None else None
    batching = _ratio(service[top]["throughput_rps"], off) if top is not None else None
    limit = batches[max(batches)]["images_per_s"]
    out = {
        "peak_throughput_rps": peak,
        # The most batching can give: the raw forward's batched images/s over its batch-1 images/s.
        "raw_batched_vs_batch1": _ratio(limit, batches[1]["images_per_s"]) if 1 in batches else None,
        "targets": {
            "saturation_vs_raw_batched": _target(_ratio(peak.get("service"), limit), ">=", 0.85),
            f"batching_vs_off_at_c{top}": _target(batching, ">=", 3.0),
            "p50_overhead_c1_vs_forward_b1": {"value": overhead, "target": "(CPU target only)", "met": None},
        },
    }
    for name, suffix in _SCALED.items():
        if name in report["systems"]:
            out[f"targets_{suffix}"] = {"saturation_vs_raw_batched": _target(_ratio(peak[name], limit), ">=", 0.85)}
    return out


def _goodput(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Answers within the SLO per second, by open-loop rate (x raw capacity) and system."""
    table: dict[str, dict[str, float]] = {}
    for name, system in report["systems"].items():
        for point in system.get("points", []):
            if point["mode"] != "closed":
                label = name if point["mode"] == "open" else f"{name}, timeout = SLO"
                table.setdefault(f"{point['rate_factor']:g}x", {})[label] = point["goodput_rps"]
    return table


def _target(value: float | None, sense: str, bound: float) -> dict[str, Any]:
    met = None if value is None else (value >= bound if sense == ">=" else value <= bound)
    return {"value": value, "target": f"{sense} {bound:g}", "met": met}


def describe_machine() -> dict[str, Any]:
    about = machine()
    for package in ("torchvision", "litserve", "fastapi", "uvicorn", "pydantic"):
        try:
            about[package] = version(package)
        except PackageNotFoundError:  # LitServe is a bench extra: a GPU run may go without it
            about[package] = None
    about["load_average_at_start"] = os.getloadavg()
    about["cpu_model"] = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                               if line.startswith("model name")), platform.processor())  # fmt: skip
    return about


def settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "max_batch_size": args.max_batch,
        "device": args.device,
        "max_wait_ms": MAX_WAIT_MS,
        "slo_ms": args.slo_ms,
        "seconds_per_point": args.seconds,
        "raw_seconds_per_batch_size": args.raw_seconds,
        "concurrency": args.concurrency,
        "rate_factors": args.rates,
        "quick": args.quick,
        "torch_threads": args.torch_threads or os.environ.get("OMP_NUM_THREADS") or "torch default",
        "systems": args.systems,
        "model_dir": str(args.model_dir),
        "untrained_archs": getattr(args, "random_archs", None),
        "service_settings": args.setting,
        "client": "bench/loadgen.py: asyncio streams, HTTP/1.1 keep-alive, pre-built multipart requests, "
        "status + Content-Length parsing only; each run's client_cpu_share is its CPU use as a share of one core",
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", "--task", nargs="+", choices=TASKS, help="default: all three (--quick: detect)")
    parser.add_argument("--model-dir", type=Path, default=Path("artifacts/models"))
    parser.add_argument("--images", type=Path, help="a folder of JPEG/PNG/WEBP images instead of the synthetic set")
    parser.add_argument("--image-count", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS + OPTIONAL_SYSTEMS, default=list(SYSTEMS))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--rates", type=float, nargs="+", default=[0.5, 0.8, 1.0, 1.2], help="x raw batched capacity")
    parser.add_argument("--seconds", type=float, default=7.0, help="per load point")
    parser.add_argument("--raw-seconds", type=float, default=5.0, help="per raw batch size")
    parser.add_argument("--warmup-s", type=float, default=3.0)
    parser.add_argument("--slo-ms", type=float, default=500.0, help="latency SLO for goodput")
    parser.add_argument("--torch-threads", type=int, help="OMP_NUM_THREADS for every system (default: torch's own)")
    parser.add_argument("--arch", nargs="+", metavar="TASK=ARCH", default=[],
                        help="serve untrained models of these architectures (e.g. instances=maskrcnn_resnet50_fpn) "
                        "instead of --model-dir: same cost per image as trained ones")  # fmt: skip
    parser.add_argument(
        "--setting",
        nargs="+",
        metavar="NAME=VALUE",
        default=[],
        help="other service settings for both densepred runs, e.g. max_batch_pixels=40000000",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda: where the raw forward and the service run")
    parser.add_argument("--max-batch", type=int, default=MAX_BATCH, help="the service's MAX_BATCH_SIZE (and raw's)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few points, short ones (1-2 min per task)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/compare_cpu"), help="writes OUT.json, OUT.png")
    args = parser.parse_args(argv)
    if "service_r2_nginx" in args.systems and front.find_nginx() is None:  # fail now, not after 20 minutes
        parser.error(f"service_r2_nginx needs nginx: {front.NO_NGINX}, or leave it out of --systems")
    args.tasks = args.tasks or (["detect"] if args.quick else list(TASKS))
    if args.quick:
        args.image_count, args.concurrency, args.rates = min(args.image_count, 16), [1, args.max_batch], [1.0]
        args.seconds, args.raw_seconds, args.warmup_s = 3.0, 2.0, 1.0
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.torch_threads:
        # Servers inherit the environment; this process has imported torch already, so set it here too.
        os.environ["OMP_NUM_THREADS"] = str(args.torch_threads)
        torch.set_num_threads(args.torch_threads)
    if args.arch:
        archs = dict(item.split("=", 1) for item in args.arch)
        args.model_dir = random_store(Path(tempfile.mkdtemp(prefix="densepred-bench-")), archs)
        args.random_archs = archs
    pictures, about = load_pictures(args)
    report: dict[str, Any] = {"machine": describe_machine(), "images": about, "settings": settings(args), "tasks": {}}
    started = time.perf_counter()
    for task in dict.fromkeys(args.tasks):
        report["tasks"][task] = run_task(task, pictures, args)
        report["tasks"][task]["ratios"] = ratios(report["tasks"][task], args.device)
        print(json.dumps({task: report["tasks"][task]["ratios"]["targets"]}, indent=1), flush=True)
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["images"]["pixels_mean"] = statistics.fmean(t["raw"]["pixels_mean"] for t in report["tasks"].values())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    json_path, png_path = Path(f"{args.out}.json"), Path(f"{args.out}.png")
    json_path.write_text(json.dumps(report, indent=1) + "\n")
    plot.figure(report, png_path)
    print(f"wrote {json_path} and {png_path} in {report['seconds']} s")


if __name__ == "__main__":
    main()
