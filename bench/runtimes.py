"""Raw forward per model and runtime: fp32 eager against every candidate runtime and the one the service chooses.

    nice -n 10 python bench/runtimes.py --out bench/results/runtimes_cpu      # (.json and .png)

Batches of 8 of the bench's mixed-size pictures (harness.images), decoded as the service decodes them,
through `Predictor.predict` (pre- and post-processing included, as bench/raw.py measures). The runtimes
run in paired, interleaved rounds (each round every runtime once over the same batches, the order shuffled),
so that on a shared machine the ratios hold even where the absolute times do not.

FLOPs: `torch.utils.flop_counter.FlopCounterMode` over one fp32 batch (convolutions and matrix products).
Peak: cores x clock x FLOP per cycle per core, from /proc/cpuinfo: 2 FMA units x (16 fp32 lanes with
avx512f, 8 with avx2+fma) x 2 FLOP per FMA (both units 512 bits wide, as on Intel Xeon and AMD Zen 5; AMD
Zen 4, family 25, runs 512-bit FMAs as two halves: 8 lanes); bf16 dot products (avx512_bf16 or amx_bf16)
double it. Clock: the "cpu MHz" /proc/cpuinfo reports (the base clock on a VM). Beside it, `gemm_gflops`:
a 2048^2 fp32 matrix product measured at 1 thread and at all cores, what the chip gives at best.

ONNX Runtime (when installed, optional): the FCN network and the R-CNN backbone+FPN, exported once at
one batch shape, against torch's eager forward of the same tensor, network only.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch  # noqa: E402
from harness import images, machine, random_store
from plot import bar_panels
from raw import _decode_all
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import models  # noqa: E402
from models.acceleration import cpu_flags  # noqa: E402
from models.runtimes import candidates, choose_runtime, variant  # noqa: E402

BATCH = 8


def peak_gflops(flags: frozenset[str] | None = None) -> dict[str, Any]:
    flags = cpu_flags() if flags is None else flags
    info = _cpuinfo()
    lanes = 16 if "avx512f" in flags else 8 if {"avx2", "fma"} <= flags else 4
    # AMD Zen 4 (family 25 with AVX-512) runs a 512-bit FMA as two 256-bit halves; Zen 5 (family 26) does not.
    if lanes == 16 and info.get("vendor_id") == "AuthenticAMD" and info.get("cpu family") == "25":
        lanes = 8
    mhz = float(info.get("cpu MHz", 0.0))
    cores = len(os.sched_getaffinity(0))
    fp32 = cores * mhz / 1000 * 2 * lanes * 2
    bf16 = 2 * fp32 if {"avx512_bf16", "amx_bf16"} & flags else None
    how = (f"{cores} cores x {mhz / 1000:.3f} GHz x 2 FMA units x {lanes} fp32 lanes x 2 FLOP per FMA "
           f"({info.get('vendor_id')} family {info.get('cpu family')}); a VM's vCPUs may be SMT siblings of "
           "fewer physical cores: gemm_gflops measures what the cores give")  # fmt: skip
    return {"fp32_gflops": round(fp32, 1), "bf16_gflops": bf16 and round(bf16, 1), "how": how,
            "gemm_gflops": gemm_gflops(cores),
            "flags": sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))}  # fmt: skip


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo."""
    fields: dict[str, str] = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def gemm_gflops(cores: int, n: int = 2048, repeats: int = 8) -> dict[str, float]:
    """fp32 matrix products (oneDNN/MKL sgemm, the best case for the chip) at 1 thread and at every core: the
    attainable peak, and whether the cores add up (they do not when vCPUs are SMT siblings)."""
    before = torch.get_num_threads()
    a, b = torch.randn(n, n), torch.randn(n, n)
    rates = {}
    for threads in sorted({1, cores}):
        torch.set_num_threads(threads)
        a @ b  # warm-up
        started = time.perf_counter()
        for _ in range(repeats):
            a @ b
        rates[f"threads_{threads}"] = round(2 * n**3 * repeats / (time.perf_counter() - started) / 1e9, 1)
    torch.set_num_threads(before)
    return rates


def gflop_per_image(predictor: models.Predictor, batches: list[list[torch.Tensor]]) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        predictor.predict(batches[0])
    return counter.get_total_flops() / 1e9 / len(batches[0])


def time_rounds(runners: dict[str, models.Predictor], batches: list[list[torch.Tensor]], rounds: int) -> dict[str, Any]:
    names = list(runners)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for name in names:  # warm-up: every shape once
        for batch in batches:
            runners[name].predict(batch)
    for r in range(rounds):  # shuffled: a rotation would run each runtime right after the same other one
        for name in random.Random(r).sample(names, len(names)):
            started = time.perf_counter()
            for batch in batches:
                runners[name].predict(batch)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            seconds[name].append(time.perf_counter() - started)
    count = sum(len(b) for b in batches)
    base = seconds[names[0]]
    return {name: {"ms_per_image": round(1000 * statistics.median(s) / count, 2),
                   "speedup": round(statistics.median(b / t for b, t in zip(base, s, strict=True)), 3)}
            for name, s in seconds.items()}  # fmt: skip


def onnx_check(predictor: models.Predictor, batch: list[torch.Tensor], rounds: int) -> dict[str, Any]:
    try:
        import onnxruntime as ort
    except ImportError:
        return {"skipped": "onnxruntime is not installed"}
    network: Any = predictor.model if predictor.task == "segment" else getattr(predictor.model, "backbone")  # noqa: B009
    size = max(t.shape[-2] for t in batch) // 32 * 32, max(t.shape[-1] for t in batch) // 32 * 32
    x = torch.randn(len(batch), 3, *size)
    buffer = io.BytesIO()
    try:
        torch.onnx.export(network, (x,), buffer, dynamo=False, opset_version=17)  # type: ignore[arg-type]
    except Exception as exc:  # noqa: BLE001 (report what could not be exported)
        return {"skipped": f"export failed: {type(exc).__name__}: {str(exc)[:200]}"}
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.numpy()}
    with torch.inference_mode():
        reference = network(x)
    first = reference["out"] if isinstance(reference, dict) and "out" in reference else next(iter(reference.values()))
    got = torch.from_numpy(session.run(None, feed)[0])
    times: dict[str, list[float]] = {"torch_eager": [], "onnxruntime": []}
    for r in range(rounds + 1):
        for name in ["torch_eager", "onnxruntime"] if r % 2 else ["onnxruntime", "torch_eager"]:
            started = time.perf_counter()
            with torch.inference_mode():
                network(x) if name == "torch_eager" else session.run(None, feed)
            if r:  # round 0 warms up
                times[name].append(time.perf_counter() - started)
    ratio = statistics.median(t / o for t, o in zip(times["torch_eager"], times["onnxruntime"], strict=True))
    return {"input": list(x.shape), "what": "network" if predictor.task == "segment" else "backbone+FPN",
            "max_abs_diff": float((first - got).abs().max()),
            "torch_ms": round(1000 * statistics.median(times["torch_eager"]), 1),
            "onnxruntime_ms": round(1000 * statistics.median(times["onnxruntime"]), 1),
            "onnxruntime_speedup": round(ratio, 3)}  # fmt: skip


def run_task(
    store: Path, task: str, tensors: list[torch.Tensor], rounds: int, peak: dict[str, Any], device: str = "cpu"
) -> dict[str, Any]:
    base = models.load_predictor(store, task, device)
    batches = [tensors[i : i + BATCH] for i in range(0, len(tensors), BATCH)]
    started = time.perf_counter()
    choice = choose_runtime(base, budget_s=10.0, batch_size=4)  # as the service chooses (its defaults)
    choose_s = time.perf_counter() - started
    runners = {"fp32": base} | {a.name: variant(base, a) for a in candidates(base.device, base.autocast_scopes)[1:]}
    timing = time_rounds(runners, batches, rounds)
    gflop = gflop_per_image(base, batches)
    for _name, figures in timing.items():
        rate = gflop / (figures["ms_per_image"] / 1000)
        share = round(rate / peak["fp32_gflops"], 3) if device == "cpu" else None
        figures.update(gflops=round(rate, 1), share_of_peak=share)
    return {"gflop_per_image": round(gflop, 3), "runtimes": timing, "chosen": choice.acceleration.name,
            "chosen_speedup_here": timing[choice.acceleration.name]["speedup"], "choice": choice.to_json(),
            "choose_s": round(choose_s, 2),
            "onnxruntime": onnx_check(base, batches[0], rounds) if device == "cpu" else None}  # fmt: skip


def plot(report: dict[str, Any], path: Path) -> None:
    panels, colours = {}, {}
    for task, result in report["tasks"].items():
        title = f"{task}: ms/image, batch {BATCH} (green: chosen)"
        panels[title] = {name: figures["ms_per_image"] for name, figures in result["runtimes"].items()}
        colours[title] = ["tab:green" if name == result["chosen"] else "tab:blue" for name in panels[title]]
    bar_panels(path, panels, colours)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, help="a trained store (default: untrained default models)")
    parser.add_argument("--tasks", nargs="+", default=list(models.TASKS))
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--out", type=Path, default=Path("bench/results/runtimes_cpu"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = args.model_dir or random_store(Path(tmp))
        tensors = [d.tensor for d in _decode_all(images(args.images))[0]]
        peak = peak_gflops()
        report: dict[str, Any] = {"machine": machine() | {"load_average": os.getloadavg()}, "peak": peak,
                                  "batch_size": BATCH, "images": args.images, "rounds": args.rounds,
                                  "store": str(args.model_dir or "untrained default models"), "tasks": {}}  # fmt: skip
        for task in args.tasks:
            report["tasks"][task] = run_task(store, task, tensors, args.rounds, peak, args.device)
            print(task, json.dumps({k: v for k, v in report["tasks"][task].items() if k != "choice"}))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    plot(report, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
