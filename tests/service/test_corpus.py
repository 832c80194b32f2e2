"""The hostile corpus (hostile.py) against all three endpoints of one app: no 5xx, JSON errors, fast bombs."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from hostile import corpus
from service_helpers import serve, settings_for

import models

pytestmark = pytest.mark.anyio

TASKS = ("segment", "detect", "instances")
BOMB_BUDGET_S = 0.1


@pytest.fixture(scope="module")
async def hostile_target(store: Path) -> AsyncIterator[httpx.AsyncClient]:
    # Own predictors: max_detections limits them in place. Few detections keep the valid cases quick.
    own = {task: models.load_predictor(store, task, "cpu") for task in TASKS}
    settings = settings_for(store, max_image_bytes=2 << 20, max_detections=5, max_queue=8)
    async with serve(settings, lambda task, device: own[task]) as client:
        yield client


def _check_error_body(response: httpx.Response) -> None:
    assert response.headers["content-type"] == "application/json", response.text[:200]
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["code"]
    assert body["error"]["message"]
    assert "Traceback" not in response.text
    assert 'File "' not in response.text


async def test_hostile_corpus_gets_4xx_json_and_bombs_are_refused_fast(hostile_target: httpx.AsyncClient) -> None:
    cases = corpus()
    statuses: dict[int, int] = {}
    bomb_times: dict[str, float] = {}
    sent = 0
    for name, request, is_bomb in cases:
        for task in TASKS:
            started = time.perf_counter()
            response = await hostile_target.post(f"/{task}", **request)
            elapsed = time.perf_counter() - started
            sent += 1
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            assert response.status_code < 500, (name, task, response.status_code, response.text[:300])
            if response.status_code != 200:
                _check_error_body(response)
            if is_bomb:
                assert response.status_code in (400, 413, 415, 422), (name, response.text)
                bomb_times[f"{name} {task}"] = elapsed
            if sent % 50 == 0:
                assert (await hostile_target.get("/healthz")).status_code == 200
    assert sent >= 500, f"only {sent} hostile requests"
    assert statuses.get(200, 0) > 0, "the corpus should include images that are odd but valid"
    slow = {name: round(t, 3) for name, t in bomb_times.items() if t >= BOMB_BUDGET_S}
    assert not slow, f"bombs slower than {BOMB_BUDGET_S} s: {slow}"
    print(f"{sent} hostile requests: {dict(sorted(statuses.items()))}; bomb p100 {max(bomb_times.values()):.3f} s")


async def test_random_paths_create_no_metric_series(hostile_target: httpx.AsyncClient) -> None:
    before = (await hostile_target.get("/metrics")).text
    rng = np.random.default_rng(5)
    for i in range(1000):
        path = "/" + "/".join(rng.choice(list("abcxyz019._-%"), size=int(rng.integers(1, 30))).tolist())
        method = ("GET", "POST", "PUT", "DELETE")[i % 4]
        response = await hostile_target.request(method, path)
        assert response.status_code in (404, 405), (path, response.status_code)
        _check_error_body(response)
    after = (await hostile_target.get("/metrics")).text
    series = {line.rpartition(" ")[0] for line in after.splitlines() if not line.startswith("#")}
    old = {line.rpartition(" ")[0] for line in before.splitlines() if not line.startswith("#")}
    new = series - old
    # Only the /metrics scrape itself may add series (its own duration histogram, first time round).
    assert all('endpoint="/metrics"' in s for s in new), sorted(new)[:10]
