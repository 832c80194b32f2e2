"""POST /models/reload, its refusals, polling and coalesced signals, over ASGI against a real store.

The behaviour under load, SIGHUP, broken versions and memory over many reloads are tested against a
real uvicorn process in test_reload_live.py.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from reload_helpers import copy_store, publish, publish_damaged
from service_helpers import WrappedPredictor, as_raw, blocks_image, encode, lifespan, metric_samples, settings_for

import models
from service import create_app
from service.reload import Reloader

pytestmark = pytest.mark.anyio

IMAGE = encode(blocks_image(7))


@pytest.fixture
def own_store(store: Path, tmp_path: Path) -> Path:
    return copy_store(store, tmp_path / "store")


@asynccontextmanager
async def serving(
    store: Path, loader: Callable[[str, torch.device], Any] | None = None, **settings: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """The app over ASGI, and the app itself (for its reloader and runtime)."""
    app = create_app(settings_for(store, **{"tasks": "segment,detect", **settings}), loader)
    async with lifespan(app) as state:

        async def with_state(scope: Any, receive: Any, send: Any) -> None:
            await app(scope | {"state": dict(state)}, receive, send)

        transport = httpx.ASGITransport(app=with_state)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=60) as client:
            while (await client.get("/readyz")).status_code != 200:
                await asyncio.sleep(0.02)
            yield client, app


def metrics_of(text: str, name: str) -> dict[str, float]:
    return metric_samples(text, name)


async def test_a_new_version_is_served_after_a_reload_and_described(own_store: Path) -> None:
    async with serving(own_store) as (client, _):
        before = (await client.post("/detect", **as_raw(IMAGE))).json()["model"]["version"]
        nothing = await client.post("/models/reload")
        assert nothing.status_code == 200
        assert [t["result"] for t in nothing.json()["tasks"]] == ["unchanged", "unchanged"]

        new = publish(own_store, "detect", seed=11)
        answer = await client.post("/models/reload")
        assert answer.status_code == 200, answer.text
        report = answer.json()
        assert report["ok"] is True
        assert "error" not in report
        detect = next(t for t in report["tasks"] if t["task"] == "detect")
        assert (detect["result"], detect["before"], detect["after"], detect["store"]) == ("reloaded", before, new, new)
        assert (await client.post("/detect", **as_raw(IMAGE))).json()["model"]["version"] == new

        described = {m["task"]: m for m in (await client.get("/models")).json()["models"]}
        assert (described["detect"]["version"], described["detect"]["previous_version"]) == (new, before)
        assert described["detect"]["last_reload"]["result"] == "reloaded"
        assert described["segment"]["previous_version"] is None
        assert (await client.get("/readyz")).json()["models"]["detect"] == new

        text = (await client.get("/metrics")).text
        info = metrics_of(text, "densepred_model_info")
        assert info[f'{{arch="fasterrcnn_small",task="detect",version="{new}"}}'] == 1
        assert not any(before in labels for labels in info), "the replaced version's series must go"
        reloads = metrics_of(text, "densepred_model_reloads_total")
        assert reloads['{result="reloaded",task="detect"}'] == 1
        assert reloads['{result="failed",task="segment"}'] == 0


async def test_a_damaged_version_is_refused_with_409_and_the_old_one_serves(own_store: Path) -> None:
    async with serving(own_store) as (client, _):
        before = (await client.post("/segment", **as_raw(IMAGE))).json()["model"]["version"]
        bad = publish_damaged(own_store, "segment", seed=12)
        answer = await client.post("/models/reload")
        assert answer.status_code == 409
        body = answer.json()
        assert body["ok"] is False
        assert body["error"]["code"] == "reload_failed"
        segment = next(t for t in body["tasks"] if t["task"] == "segment")
        assert (segment["result"], segment["after"], segment["store"]) == ("failed", before, bad)
        assert "checksum mismatch" in segment["reason"]
        assert (await client.post("/segment", **as_raw(IMAGE))).json()["model"]["version"] == before
        text = (await client.get("/metrics")).text
        assert metrics_of(text, "densepred_model_reloads_total")['{result="failed",task="segment"}'] == 1


async def test_out_of_memory_while_loading_keeps_the_old_version(own_store: Path) -> None:
    failing: set[str] = set()

    def load(task: str, device: torch.device) -> Any:
        predictor = models.load_predictor(own_store, task, device)
        if predictor.manifest.version in failing:  # a GPU's allocator refusing the second copy (faked here)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return predictor

    async with serving(own_store, load) as (client, _):
        before = (await client.post("/detect", **as_raw(IMAGE))).json()["model"]["version"]
        failing.add(publish(own_store, "detect", seed=13))
        answer = await client.post("/models/reload")
        assert answer.status_code == 409
        detect = next(t for t in answer.json()["tasks"] if t["task"] == "detect")
        assert detect["reason"].startswith("load: OutOfMemoryError")
        assert (await client.post("/detect", **as_raw(IMAGE))).json()["model"]["version"] == before


async def test_a_second_reload_while_one_runs_is_refused_and_nothing_interleaves(own_store: Path) -> None:
    gate, warming = threading.Event(), threading.Event()

    def load(task: str, device: torch.device) -> Any:
        predictor = models.load_predictor(own_store, task, device)
        if predictor.manifest.trained.get("seed") != 14:
            return predictor
        warming.set()
        return WrappedPredictor(predictor, warmup_gate=gate)

    async with serving(own_store, load) as (client, _):
        new = publish(own_store, "detect", seed=14)
        first = asyncio.create_task(client.post("/models/reload"))
        try:
            assert await asyncio.to_thread(warming.wait, 30)
            second = await client.post("/models/reload")
            assert second.status_code == 409
            assert second.json()["error"]["code"] == "reload_in_progress"
            assert second.headers["retry-after"]
            # Still serving the old version while the new one warms.
            assert (await client.post("/detect", **as_raw(IMAGE))).json()["model"]["version"] != new
        finally:
            gate.set()
        assert (await first).status_code == 200
        assert (await client.post("/detect", **as_raw(IMAGE))).json()["model"]["version"] == new


async def test_reload_needs_the_api_key_and_is_refused_while_draining(own_store: Path) -> None:
    async with serving(own_store, api_key="s3cret") as (client, app):
        assert (await client.post("/models/reload")).status_code == 401
        assert (await client.post("/models/reload", headers={"X-API-Key": "s3cret"})).status_code == 200
        app.state.runtime.draining = True
        refused = await client.post("/models/reload", headers={"X-API-Key": "s3cret"})
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "shutting_down"


async def test_signals_during_a_reload_make_one_more_reload(own_store: Path) -> None:
    gate, warming = threading.Event(), threading.Event()
    loads: list[int] = []

    def load(task: str, device: torch.device) -> Any:
        predictor = models.load_predictor(own_store, task, device)
        loads.append(predictor.manifest.trained.get("seed", -1))
        if predictor.manifest.trained.get("seed") != 15:
            return predictor
        warming.set()
        return WrappedPredictor(predictor, warmup_gate=gate)

    async with serving(own_store, load) as (client, app):
        reloader: Reloader = app.state.reloader
        loads.clear()
        publish(own_store, "detect", seed=15)
        reloader.request("SIGHUP")
        try:
            assert await asyncio.to_thread(warming.wait, 30)
            latest = publish(own_store, "detect", seed=16)  # published while the first reload warms
            for _ in range(5):  # five more SIGHUPs: one more reload once the running one is done
                reloader.request("SIGHUP")
        finally:
            gate.set()
        for _ in range(600):
            if reloader._follow_up is not None and reloader._follow_up.done():
                break
            await asyncio.sleep(0.05)
        assert (await client.post("/detect", **as_raw(IMAGE))).json()["model"]["version"] == latest
        assert loads == [15, 16]  # two reloads of detect, none of the unchanged segment model
        text = (await client.get("/metrics")).text
        assert metrics_of(text, "densepred_model_reloads_total")['{result="reloaded",task="detect"}'] == 2


async def test_polling_reloads_a_new_version_and_does_not_retry_a_failed_one(own_store: Path) -> None:
    async with serving(own_store, reload_interval_s=0.1) as (client, _):
        new = publish(own_store, "detect", seed=17)
        for _ in range(600):
            described = {m["task"]: m for m in (await client.get("/models")).json()["models"]}
            if described["detect"]["version"] == new:
                break
            await asyncio.sleep(0.05)
        assert described["detect"]["version"] == new
        publish_damaged(own_store, "detect", seed=18)
        for _ in range(600):
            last = {m["task"]: m for m in (await client.get("/models")).json()["models"]}["detect"]["last_reload"]
            if last["result"] == "failed":
                break
            await asyncio.sleep(0.05)
        assert "checksum mismatch" in last["reason"]
        await asyncio.sleep(1.0)  # ten more polls
        text = (await client.get("/metrics")).text
        assert metrics_of(text, "densepred_model_reloads_total")['{result="failed",task="detect"}'] == 1
        assert (await client.post("/detect", **as_raw(IMAGE))).json()["model"]["version"] == new
