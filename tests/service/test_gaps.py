"""Runtime measurement passes in the gaps between batches (service/gaps.py): requests go first, and a
measurement under load that never lets up still ends. A real Batcher on a real one-thread executor, as the
service shares its CPU inference thread; the order things ran in on that thread is the evidence."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from service.batching import Batcher
from service.gaps import BetweenBatches

pytestmark = pytest.mark.anyio


async def test_a_pass_asked_for_while_batches_wait_runs_after_them() -> None:
    ran: list[str] = []
    gate, first_started = threading.Event(), threading.Event()

    def batch(items: list[str]) -> list[str]:
        if items == ["first"]:
            first_started.set()
            assert gate.wait(30), "never released"
        ran.extend(items)
        return items

    thread = ThreadPoolExecutor(1)
    batcher: Batcher[str, str] = Batcher(batch, name="t", max_batch_size=1, max_wait_s=0, max_queue=8, executor=thread)
    batcher.start()
    try:
        first = asyncio.create_task(batcher.submit("first"))
        assert await asyncio.to_thread(first_started.wait, 30)
        queued = [asyncio.create_task(batcher.submit(name)) for name in ("second", "third")]
        await asyncio.sleep(0)  # both are in the queue now
        place = BetweenBatches(thread, lambda: not batcher.idle, patience=1e6)

        def measurement_pass() -> str:
            ran.append("pass")
            return "timed"

        measurement = asyncio.create_task(asyncio.to_thread(place, measurement_pass))
        await asyncio.sleep(0.2)  # the pass is asking while the first batch runs and two wait
        gate.set()
        await asyncio.gather(first, *queued)
        assert await measurement == "timed"
    finally:
        gate.set()
        await batcher.stop()
        thread.shutdown()
    # Placed as soon as asked, the pass would have gone right after the first batch.
    assert ran == ["first", "second", "third", "pass"]
    assert batcher.idle


def test_under_load_that_never_lets_up_a_pass_runs_once_its_turn_comes() -> None:
    thread = ThreadPoolExecutor(1, thread_name_prefix="inference")
    try:
        never_idle = BetweenBatches(thread, lambda: True, patience=0)
        assert never_idle(lambda: threading.current_thread().name).startswith("inference")
        with pytest.raises(ZeroDivisionError):  # a pass's error reaches the measurement, which reports it
            never_idle(lambda: 1 / 0)
    finally:
        thread.shutdown()
