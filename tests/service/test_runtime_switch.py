"""RUNTIME_SELECTION=background over ASGI: fp32 serves from readiness on, then the measured runtime of the
same version takes over at a batch boundary. Real models and store; only the clock that decides which
candidate "wins" is fake (which runtime is faster on a shared machine is not the test's business)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from reload_helpers import copy_store, publish
from service_helpers import as_raw, blocks_image, encode, lifespan, metric_samples, settings_for

import models.runtimes as runtimes
import service.warming as warming
from models import Acceleration
from service import create_app

pytestmark = pytest.mark.anyio

FOLD = Acceleration(fold_bn=True)
ORT = Acceleration(backend="onnxruntime")
IMAGE = encode(blocks_image(3))
TIMED_ON: set[str] = set()  # the threads the fake clock was read on


@asynccontextmanager
async def background_app(store: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """Only Faster R-CNN, PRECISION=auto measured in the background, over ASGI, once /readyz is 200."""
    app = create_app(settings_for(store, tasks="detect", precision="auto", runtime_selection="background"))
    async with lifespan(app) as state:

        async def with_state(scope: Any, receive: Any, send: Any) -> None:
            await app(scope | {"state": dict(state)}, receive, send)

        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=with_state), base_url="http://t",
                                     timeout=60) as client:  # fmt: skip
            while (await client.get("/readyz")).status_code != 200:
                await asyncio.sleep(0.02)
            yield client, app


@pytest.fixture(params=[FOLD, ORT], ids=lambda a: a.name)
def winner(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Acceleration:
    """The candidate the fake clock makes win. Preparing it (folding, an ONNX export) runs on the reload
    thread while the fp32 model serves requests on the inference thread."""
    acceleration: Acceleration = request.param
    if acceleration.backend == "onnxruntime":
        pytest.importorskip("onnxruntime")

    def choose(
        predictor: Any, budget_s: float = 1.0, batch_size: int = 1, place: runtimes.Place = runtimes.here
    ) -> runtimes.RuntimeChoice:
        def timer(runner: Any, images: Any) -> float:
            TIMED_ON.add(threading.current_thread().name)
            return 0.5 if runner.acceleration == acceleration else 1.0

        return runtimes.choose_runtime(
            predictor, budget_s=0, accelerations=[acceleration], timer=timer, batch_size=batch_size, place=place
        )

    TIMED_ON.clear()

    monkeypatch.setattr(warming, "choose_runtime", choose)
    return acceleration


async def test_fp32_serves_until_the_measured_runtime_switches_in(store: Path, winner: Acceleration) -> None:
    async with background_app(store) as (client, app):
        model = app.state.runtime.models["detect"]
        served_first = model.predictor
        answers = [(await client.post("/detect", **as_raw(IMAGE))).json()]
        for _ in range(600):
            if model.choice.mode != warming.PENDING:
                break
            answers.append((await client.post("/detect", **as_raw(IMAGE))).json())
            await asyncio.sleep(0.05)
        answers.append((await client.post("/detect", **as_raw(IMAGE))).json())
        described = (await client.get("/models")).json()["models"][0]
        for _ in range(100):  # the measurement's thread ends with it (its OpenMP team would slow the batches)
            if not any(t.name.startswith("reload") for t in threading.enumerate()):
                break
            await asyncio.sleep(0.05)
        reload_threads = [t.name for t in threading.enumerate() if t.name.startswith("reload")]
        metrics = (await client.get("/metrics")).text

    assert reload_threads == []
    # Prepared on the reload thread, timed between batches on the inference thread (where batches run).
    assert TIMED_ON
    assert all(name.startswith("inference") for name in TIMED_ON), TIMED_ON
    assert model.choice.mode == "measured"
    assert model.choice.acceleration == winner
    assert model.predictor is not served_first
    assert model.predictor.acceleration == winner
    assert described["runtime"]["runtime"] == winner.name
    assert described["previous_version"] is None  # a runtime switch is not a reload
    assert all("model" in a for a in answers), [a for a in answers if "model" not in a][:2]
    assert {a["model"]["version"] for a in answers} == {served_first.manifest.version}
    first, last = answers[0]["detections"], answers[-1]["detections"]
    assert [d["label"] for d in first] == [d["label"] for d in last]  # the winner answers as fp32 did
    for a, b in zip(first, last, strict=True):
        assert a["box"] == pytest.approx(b["box"], abs=0.05)
    info = metric_samples(metrics, "densepred_runtime_info")
    fields = f'backend="{winner.backend}",compiled="false",memory_format="contiguous",precision="fp32"'
    assert list(info) == [f'{{{fields},task="detect"}}']  # one series: fp32's went (folding is not a label)
    # The padding counters go on across the switch: every request's forward pass is counted.
    passes = metric_samples(metrics, "densepred_forward_passes")['{task="detect"}']
    assert passes == len(answers) + 1  # + the warm-up pass; the measurement's own passes are not counted


async def test_a_reload_during_the_measurement_waits_for_it_then_serves_the_new_version(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = copy_store(store, tmp_path / "store")
    gate, measuring = threading.Event(), threading.Event()
    real = runtimes.choose_runtime

    def choose(
        predictor: Any, budget_s: float = 1.0, batch_size: int = 1, place: runtimes.Place = runtimes.here
    ) -> runtimes.RuntimeChoice:
        measuring.set()
        assert gate.wait(30)  # the background measurement holds until the reload is asked for
        return real(predictor, budget_s=0, accelerations=[FOLD], batch_size=1, place=place)

    monkeypatch.setattr(warming, "choose_runtime", choose)
    async with background_app(own) as (client, app):
        assert await asyncio.to_thread(measuring.wait, 30)
        new = publish(own, "detect", seed=21)
        reload = asyncio.create_task(client.post("/models/reload"))
        await asyncio.sleep(0.5)
        assert not reload.done()  # waits for the measurement (no 409, no two computations at once)
        assert (await client.post("/detect", **as_raw(IMAGE))).status_code == 200  # fp32 serves meanwhile
        gate.set()
        answer = await reload
        version = (await client.post("/detect", **as_raw(IMAGE))).json()["model"]["version"]
        described = (await client.get("/models")).json()["models"][0]
    assert answer.status_code == 200, answer.text
    assert version == new
    assert described["runtime"]["mode"] == "measured"  # the new version measured its own runtime
    assert described["previous_version"] is not None
