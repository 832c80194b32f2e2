"""Startup, readiness, the operational endpoints, metrics and shutdown."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from service_helpers import (
    WrappedPredictor,
    as_raw,
    blocks_image,
    encode,
    lifespan,
    metric_samples,
    serve,
    settings_for,
)

from models import TASKS, Predictor
from service import create_app
from service.runtime import curl_examples
from service.threads import inference_threads

pytestmark = pytest.mark.anyio


async def test_readyz_is_503_until_every_model_is_warm(store: Path, predictors: dict[str, Predictor]) -> None:
    gate = threading.Event()
    wrapped = {
        task: WrappedPredictor(p, warmup_gate=gate if task == "detect" else None) for task, p in predictors.items()
    }
    data = encode(blocks_image(500))
    async with serve(settings_for(store), lambda task, device: wrapped[task], wait_ready=False) as client:
        try:
            await asyncio.sleep(0.3)  # segment and instances warm quickly; detect waits for the gate
            not_ready = await client.get("/readyz")
            assert not_ready.status_code == 503
            assert not_ready.json()["error"]["code"] == "not_ready"
            assert "detect warming" in not_ready.json()["error"]["message"]
            refused = await client.post("/detect", **as_raw(data))
            assert refused.status_code == 503
            assert refused.headers["retry-after"]
            assert (await client.get("/healthz")).status_code == 200  # alive while warming
            assert (await client.get("/models")).status_code == 200
        finally:
            gate.set()
        for _ in range(500):
            ready = await client.get("/readyz")
            if ready.status_code == 200:
                break
            await asyncio.sleep(0.02)
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "models": {t: p.manifest.version for t, p in predictors.items()}}
        assert (await client.post("/detect", **as_raw(data))).status_code == 200


async def test_serves_from_the_model_dir_and_describes_itself(store: Path) -> None:
    async with serve(settings_for(store, tasks="detect,segment")) as client:  # the real store loader
        health = (await client.get("/healthz")).json()
        assert health == {"status": "ok", "device": "cpu"}
        described = (await client.get("/models")).json()["models"]
        manifests = {task: json.loads((store / task / "manifest.json").read_text()) for task in ("segment", "detect")}
        assert [m["task"] for m in described] == ["segment", "detect"]
        for entry in described:
            manifest = manifests[entry["task"]]
            assert {key: entry[key] for key in manifest} == manifest
            assert entry["previous_version"] is None  # no reload yet (tests/service/test_reload.py)
            assert entry["loaded_at"].endswith("Z")
        assert (await client.post("/instances", **as_raw(encode(blocks_image(501))))).status_code == 404
        openapi = (await client.get("/openapi.json")).json()
        assert "/instances" not in openapi["paths"]
        assert "/detect" in openapi["paths"]


async def test_metrics_names_labels_and_no_series_for_unknown_paths(
    store: Path, predictors: dict[str, Predictor]
) -> None:
    async with serve(settings_for(store), lambda task, device: predictors[task]) as client:
        data = encode(blocks_image(502))
        for task in TASKS:
            assert (await client.post(f"/{task}", **as_raw(data))).status_code == 200
        await client.post("/detect", **as_raw(b"junk"))
        for i in range(20):
            await client.get(f"/scanner/probe-{i}")
        text = (await client.get("/metrics")).text
    for name in (
        "densepred_request_duration_seconds",
        "densepred_queue_wait_seconds",
        "densepred_inference_duration_seconds",
        "densepred_batch_size",
        "densepred_queue_depth",
        "densepred_requests_rejected_total",
        "densepred_padding_waste_ratio",
        "densepred_forward_passes",
        "densepred_model_info",
        "densepred_model_reloads_total",
    ):
        assert f"# TYPE {name} " in text, name
    durations = metric_samples(text, "densepred_request_duration_seconds_count")
    assert durations['{endpoint="/detect",status="200"}'] == 1
    assert durations['{endpoint="/detect",status="400"}'] == 1
    assert durations['{endpoint="/readyz",status="200"}'] >= 1
    assert not any("scanner" in key for key in durations)
    assert "scanner" not in text
    for task in TASKS:
        assert metric_samples(text, "densepred_queue_wait_seconds_count")[f'{{task="{task}"}}'] == 1
        assert metric_samples(text, "densepred_inference_duration_seconds_count")[f'{{task="{task}"}}'] == 1
        assert metric_samples(text, "densepred_queue_depth")[f'{{task="{task}"}}'] == 0
    assert metric_samples(text, "densepred_requests_rejected_total")['{reason="invalid_image",task="detect"}'] == 1
    for name, predictor in predictors.items():
        m = predictor.manifest
        served = f'{{arch="{m.arch}",task="{name}",version="{m.version}"}}'
        assert metric_samples(text, "densepred_model_info")[served] == 1


async def test_a_damaged_store_fails_startup(store: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "store"
    shutil.copytree(store / "segment", damaged / "segment")
    weights = damaged / "segment" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    with pytest.raises(RuntimeError, match="startup failed"):
        async with serve(settings_for(damaged, tasks="segment")):
            pass
    with pytest.raises(RuntimeError, match="startup failed"):
        async with serve(settings_for(damaged, tasks="detect")):  # no detect model at all
            pass


async def test_shutdown_answers_waiting_requests(store: Path, predictors: dict[str, Predictor]) -> None:
    gate = threading.Event()
    wrapped = WrappedPredictor(predictors["segment"], before_batch=lambda images: gate.wait(30) or None)
    settings = settings_for(store, tasks="segment", max_batch_size=1, max_wait_ms=0)
    app = create_app(settings, lambda task, device: wrapped)
    async with lifespan(app) as state:
        transport = httpx.ASGITransport(app=lambda s, r, w: app({**s, "state": dict(state)}, r, w))
        client = httpx.AsyncClient(transport=transport, base_url="http://testserver")
        while (await client.get("/readyz")).status_code != 200:
            await asyncio.sleep(0.02)
        data = encode(blocks_image(503, 32, 32))
        pending = [asyncio.create_task(client.post("/segment", **as_raw(data))) for _ in range(3)]
        await asyncio.sleep(0.2)
    gate.set()  # the lifespan has ended: nobody is left waiting on the model
    statuses = [r.status_code for r in await asyncio.gather(*pending)]
    assert statuses == [503, 503, 503]
    await client.aclose()


def test_curl_examples_use_a_reachable_host(store: Path) -> None:
    lines = curl_examples(settings_for(store, host="0.0.0.0", port=9000, tasks="instances"))
    assert any("http://127.0.0.1:9000/instances" in line for line in lines)
    assert not any("/detect" in line for line in lines)


class ThreadRecorder:
    """A real predictor that notes which thread each load-time and request-time computation ran on."""

    def __init__(self, inner: Predictor, seen: list[tuple[str, str]]) -> None:
        self.inner, self.seen = inner, seen
        self.manifest, self.device = inner.manifest, inner.device

    def warmup(self) -> None:
        self.seen.append(("warmup", threading.current_thread().name))
        self.inner.warmup()

    def predict(self, images: Any, queries: Any = None, frames: Any = None) -> list[Any]:
        self.seen.append(("predict", threading.current_thread().name))
        self.seen.append(("os name", Path("/proc/thread-self/comm").read_text().strip()))
        return self.inner.predict(images, queries, frames)


async def test_on_a_cpu_every_model_loads_warms_and_predicts_on_one_inference_thread(
    store: Path, predictors: dict[str, Predictor]
) -> None:
    seen: list[tuple[str, str]] = []

    def load(task: str, device: Any) -> ThreadRecorder:
        seen.append(("load", threading.current_thread().name))
        return ThreadRecorder(predictors[task], seen)

    async with serve(settings_for(store), load) as client:
        data = encode(blocks_image(40, 48, 64))
        for task in TASKS:
            assert (await client.post(f"/{task}", **as_raw(data))).status_code == 200
    assert {name for kind, name in seen if kind == "os name"} == {"inference"}  # for top -H and the benchmarks
    assert {kind for kind, _ in seen} == {"load", "warmup", "predict", "os name"}
    threads = {name for kind, name in seen if kind != "os name"}
    assert len(threads) == 1, seen  # one OpenMP team in the process: it keeps spinning between ops
    assert threads != {threading.main_thread().name}


def test_gpu_models_get_a_thread_each_and_cpu_models_share_one() -> None:
    cpu = inference_threads(TASKS, torch.device("cpu"))
    gpu = inference_threads(TASKS, torch.device("cuda"))
    try:
        assert len(set(cpu.values())) == 1
        assert len(set(gpu.values())) == len(TASKS)
    finally:
        for executor in {*cpu.values(), *gpu.values()}:
            executor.shutdown()
