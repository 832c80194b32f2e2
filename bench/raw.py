"""System (a) of bench/compare.py: the predictor's own batched forward, in process. The limit a server can reach.

Images are decoded beforehand with the service's decoder and limits (so they are the very tensors the
service would queue), then `Predictor.predict` runs over them in batches of 1 and of the service's
max batch size. Decoding and response encoding are timed separately, per image, so the service's
overhead can be told apart from work any server must do.

Each batch size runs twice: on the main thread, and on a thread of its own as the service's batch
worker runs it. They differ: torch's OpenMP team size is a per-thread setting, and a new thread
computes on one core (CPU time ≈ wall time), while the main thread uses torch.get_num_threads() cores,
which is faster on an idle machine and far slower when another process busies the cores (OpenMP
threads spin waiting for each other). Batches of more than one also run a third way, as the service's
INFERENCE_WORKERS=N runs them: N threads at once, each computing with cores/N OpenMP threads (on 2
cores, two single-threaded forwards side by side). The limit is the best of these, per figure.
"""

from __future__ import annotations

import gc
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from harness import REPO, ms, percentile

sys.path.insert(0, str(REPO))

import torch  # noqa: E402

import models  # noqa: E402
from models.registry import MAX_DETECTIONS  # noqa: E402
from service import responses  # noqa: E402
from service.imaging import DecodedImage, decode_image  # noqa: E402
from service.runtime import image_limits  # noqa: E402
from service.settings import Settings  # noqa: E402

Pictures = list[tuple[bytes, str]]


def _decode_all(pictures: Pictures) -> tuple[list[DecodedImage], list[float]]:
    # The service's defaults without reading DENSEPRED_* (model_construct skips the environment).
    limits = image_limits(Settings.model_construct())
    decoded, seconds = [], []
    for data, _ in pictures:
        started = time.perf_counter()
        decoded.append(decode_image(data, limits))
        seconds.append(time.perf_counter() - started)
    return decoded, seconds


def _encode(task: str, result: Any, names: dict[int, str]) -> bytes:
    """The response body the service would send (schema objects, RLE, JSON), minus the envelope."""
    if task == "segment":
        items: list[Any] = responses.segments(result, names)
    elif task == "detect":
        items = responses.detections(result, names)
    else:
        items = responses.instances(result, names)
    return b"[" + b",".join(item.model_dump_json().encode() for item in items) + b"]"


def _on_thread(predictor: models.Predictor, tensors: list[Any], size: int, seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def work() -> None:
        predictor.predict(tensors[:size])  # a new thread sets up its own OpenMP state on first use
        out.update(_batches(predictor, tensors, size, seconds))

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    return out


def _in_parallel(
    predictor: models.Predictor, tensors: list[Any], size: int, seconds: float, workers: int
) -> dict[str, Any]:
    """`workers` threads running batches at once, each with its share of the cores; images/s over them all."""
    cores = torch.get_num_threads()
    outs: list[dict[str, Any]] = [{} for _ in range(workers)]

    def work(k: int) -> None:
        torch.set_num_threads(max(1, cores // workers))
        predictor.predict(tensors[:size])  # this thread's first use
        # Each starts at its own place in the images, so that the threads do not run the same batch.
        shifted = tensors[k * len(tensors) // workers :] + tensors[: k * len(tensors) // workers]
        outs[k] = _batches(predictor, shifted, size, seconds)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    torch.set_num_threads(cores)  # the threads changed torch's process-wide default too
    return {
        "workers": workers,
        "torch_threads_each": max(1, cores // workers),
        "images": sum(out["images"] for out in outs),
        # The threads ran for about the same time: their rates add up.
        "images_per_s": round(sum(out["images_per_s"] for out in outs), 2),
        "batch_p50_ms": max(out["batch_p50_ms"] for out in outs),
    }


def _batches(predictor: models.Predictor, tensors: list[Any], size: int, seconds: float) -> dict[str, Any]:
    """Batches of `size` over the images, in order and round again, until `seconds` passed (at least one round)."""
    times: list[float] = []
    done = 0
    started = time.perf_counter()
    while done < len(tensors) or time.perf_counter() - started < seconds:
        batch = [tensors[(done + i) % len(tensors)] for i in range(size)]
        t0 = time.perf_counter()
        predictor.predict(batch)
        times.append(time.perf_counter() - t0)
        done += size
    total = sum(times)
    return {
        "images": done,
        "images_per_s": round(done / total, 2),
        "batch_p50_ms": ms(percentile(times, 50)),
        "batch_p99_ms": ms(percentile(times, 99)),
        "per_image_mean_ms": round(1000 * total / done, 2),
    }


def measure(
    model_dir: Path,
    task: str,
    pictures: Pictures,
    batch_sizes: list[int],
    seconds: float,
    device: str = "cpu",
    workers: int = 1,
) -> dict[str, Any]:
    predictor = models.load_predictor(model_dir, task, device)
    if isinstance(predictor, models.predictors.DetectionPredictor):
        predictor.limit_detections(MAX_DETECTIONS)  # as the service does
    decoded, decode_s = _decode_all(pictures)
    tensors = [image.tensor for image in decoded]
    # Warm up: one round over all the images at each batch size, because first calls pay for lazy
    # initialisation and kernels are chosen (and cached) per input shape, on the CPU and the GPU alike.
    for size in batch_sizes:
        _batches(predictor, tensors, size, seconds=0)
    runs = []
    for size in batch_sizes:
        main, thread = _batches(predictor, tensors, size, seconds), _on_thread(predictor, tensors, size, seconds)
        ways = {"main_thread": main, "worker_thread": thread}
        if workers > 1 and size > 1:
            ways["parallel_workers"] = _in_parallel(predictor, tensors, size, seconds, workers)
        best = {
            "images_per_s": max(way["images_per_s"] for way in ways.values()),
            # A batch's own latency: parallel workers trade it for throughput, so they are left out here.
            "batch_p50_ms": min(main["batch_p50_ms"], thread["batch_p50_ms"]),
        }
        runs.append({"batch_size": size} | best | ways)
    names = {c.id: c.name for c in predictor.manifest.categories}
    encode_s = []
    for result in predictor.predict(tensors[:8]):
        t0 = time.perf_counter()
        _encode(task, result, names)
        encode_s.append(time.perf_counter() - t0)
    del predictor
    gc.collect()
    return {
        "batches": runs,
        "decode_ms_mean": round(1000 * statistics.fmean(decode_s), 2),
        "encode_ms_mean": round(1000 * statistics.fmean(encode_s), 2),
        "pixels_mean": round(statistics.fmean(t.shape[-1] * t.shape[-2] for t in tensors)),
    }
