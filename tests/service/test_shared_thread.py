"""Two models on the one CPU inference thread (issue 16, item 6): a batch that waits for the thread behind
the other model's batch is timed from when it really starts, and its items' deadlines are checked then.

Real models through the app; the detect model is made slow by holding its batch on a gate, so that the
segment batch waits for the thread for as long as the test wants. Timing checks rest on causality (a
batch that starts after the release cannot have run longer than the time since it), not on speed.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from service_helpers import WrappedPredictor, as_raw, blocks_image, encode, metric_samples, serve, settings_for

from models import Predictor
from service.batching import Batcher, DeadlineExceededError

pytestmark = pytest.mark.anyio


async def test_a_batch_behind_another_models_is_timed_from_its_start_and_skips_expired_items(
    store: Path, predictors: dict[str, Predictor]
) -> None:
    gate, entered = threading.Event(), threading.Event()

    def hold(images: Sequence[torch.Tensor]) -> None:
        if not gate.is_set():
            entered.set()
            assert gate.wait(60), "never released"

    served = {"detect": WrappedPredictor(predictors["detect"], before_batch=hold),
              "segment": WrappedPredictor(predictors["segment"])}  # fmt: skip
    settings = settings_for(store, tasks="segment,detect", inference_timeout_s=0.3, max_wait_ms=0)
    image = as_raw(encode(blocks_image(40, 48, 64)))
    async with serve(settings, lambda task, device: served[task]) as client:
        slow = asyncio.create_task(client.post("/detect", **image))
        assert await asyncio.to_thread(entered.wait, 60)  # the thread is now busy with detect
        late = asyncio.create_task(client.post("/segment?timeout=0.5", **image))
        waiting = asyncio.create_task(client.post("/segment", **image))
        expired = await late  # answered by its own deadline while its batch waits for the thread
        health = await client.get("/healthz")  # detect has been running for over 0.5 s by now
        released = time.perf_counter()
        gate.set()
        answered = await waiting
        done = time.perf_counter()
        assert (await slow).status_code == 200
        metrics = (await client.get("/metrics")).text
    assert expired.status_code == 504
    assert answered.status_code == 200, answered.text
    assert served["segment"].batch_sizes == [1], "the expired item was computed"
    # The hung-batch timer counts detect's batch, not segment's, which was waiting for the thread.
    assert health.status_code == 503
    assert "detect batch" in health.json()["error"]["message"]
    # Segment's batch started after the release: it cannot have run longer than the time since.
    timing = answered.json()["timing_ms"]
    assert timing["inference"] / 1000 <= done - released
    assert timing["queue"] + timing["inference"] <= timing["total"]
    inference_sum = metric_samples(metrics, "densepred_inference_duration_seconds_sum")['{task="segment"}']
    assert inference_sum <= done - released


async def test_batchers_sharing_one_thread_start_the_clock_on_the_thread() -> None:
    """The same at the batcher's level, with a plain function: the estimates follow the real batch time,
    and the wait for the thread is kept apart (it still counts towards a newcomer's expected wait)."""
    gate = threading.Event()
    calls: list[list[int]] = []

    def blocked(items: list[int]) -> list[int]:
        assert gate.wait(30)
        return items

    def quick(items: list[int]) -> list[int]:
        calls.append(items)
        return items

    shared = ThreadPoolExecutor(1)
    first: Batcher[int, int] = Batcher(blocked, name="first", max_batch_size=1, max_wait_s=0, max_queue=4,
                                       executor=shared)  # fmt: skip
    second: Batcher[int, int] = Batcher(quick, name="second", max_batch_size=4, max_wait_s=0, max_queue=4,
                                        executor=shared)  # fmt: skip
    first.start()
    second.start()
    try:
        holding = asyncio.create_task(first.submit(1))
        while first.busy_s == 0:
            await asyncio.sleep(0.01)
        expiring = asyncio.create_task(second.submit(2, timeout_s=0.2))
        with pytest.raises(DeadlineExceededError):
            await expiring
        kept = asyncio.create_task(second.submit(3))
        await asyncio.sleep(0.3)
        assert second.busy_s == 0  # waiting for the thread is not running
        assert first.busy_s >= 0.5  # (it was held through the sleeps above)
        released = time.perf_counter()
        gate.set()
        result = await kept
        done = time.perf_counter()
        assert (await holding).value == 1
    finally:
        gate.set()
        await first.stop()
        await second.stop()
        shared.shutdown(wait=True)
    assert calls == [[3]]  # 2's deadline passed before its batch reached the thread: never computed
    assert result.inference_s <= done - released
    assert result.queue_s >= 0.3  # it waited for the thread, and that is queueing
    assert second.thread_wait_s >= 0.3  # kept for the estimates, apart from the batch time
