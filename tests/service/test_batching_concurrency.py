"""The batching queue with more than one batch running at once (`max_concurrent_batches`, the service's
INFERENCE_WORKERS): plain functions instead of models, real asyncio, real threads."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from service.batching import Batcher, BatcherStoppedError, WorkerDiedError

pytestmark = pytest.mark.anyio


class Occupancy:
    """A batch function that records the batches it saw and how many ran at its busiest moment."""

    def __init__(self, hold_s: float = 0.0, barrier: threading.Barrier | None = None) -> None:
        self.hold_s = hold_s
        self.barrier = barrier
        self.batches: list[list[int]] = []
        self.now = self.most = 0
        self._lock = threading.Lock()

    def __call__(self, items: list[int]) -> list[int]:
        with self._lock:
            self.batches.append(list(items))
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            if self.barrier is not None:
                self.barrier.wait()  # BrokenBarrierError unless its partner batch runs at the same time
            time.sleep(self.hold_s)
            return [x * x for x in items]
        finally:
            with self._lock:
                self.now -= 1


def batcher(fn: Occupancy, slots: int, max_batch_size: int = 2) -> Batcher[int, int]:
    return Batcher(
        fn, name="t", max_batch_size=max_batch_size, max_wait_s=0, max_queue=64, max_concurrent_batches=slots
    )


@asynccontextmanager
async def started(fn: Occupancy, slots: int, max_batch_size: int = 2) -> AsyncIterator[Batcher[int, int]]:
    queue = batcher(fn, slots, max_batch_size)
    queue.start()
    try:
        yield queue
    finally:
        await queue.stop()


async def test_two_slots_run_two_batches_at_the_same_time() -> None:
    # Each batch waits at a barrier for a second batch: with one slot it would time out.
    occupancy = Occupancy(barrier=threading.Barrier(2, timeout=5))
    async with started(occupancy, slots=2, max_batch_size=1) as queue:
        done = await asyncio.gather(queue.submit(3), queue.submit(4))
    assert [c.value for c in done] == [9, 16]
    assert occupancy.most == 2


@pytest.mark.parametrize("slots", [1, 2, 3])
async def test_never_more_batches_at_once_than_slots_and_every_item_answered(slots: int) -> None:
    occupancy = Occupancy(hold_s=0.03)
    async with started(occupancy, slots=slots) as queue:
        done = await asyncio.gather(*(queue.submit(x) for x in range(24)))
    assert [c.value for c in done] == [x * x for x in range(24)]
    assert occupancy.most == slots
    assert sorted(x for batch in occupancy.batches for x in batch) == list(range(24))


async def test_while_every_slot_is_busy_the_queue_fills_into_full_batches() -> None:
    occupancy = Occupancy(hold_s=0.3)
    async with started(occupancy, slots=2, max_batch_size=4) as queue:
        first = []
        for x in (0, 1):  # each runs alone, one per slot
            first.append(asyncio.ensure_future(queue.submit(x)))
            await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(queue.submit(x)) for x in range(2, 10)]
        await asyncio.gather(*first, *rest)
    assert occupancy.batches[:2] == [[0], [1]]
    assert occupancy.batches[2:] == [[2, 3, 4, 5], [6, 7, 8, 9]]  # collected only once a slot was free


async def test_items_arriving_together_are_shared_out_between_free_slots() -> None:
    occupancy = Occupancy(hold_s=0.1)
    async with started(occupancy, slots=2, max_batch_size=8) as queue:
        done = await asyncio.gather(*(queue.submit(x) for x in range(6)))
    assert [c.value for c in done] == [x * x for x in range(6)]
    assert occupancy.batches == [[0, 1, 2], [3, 4, 5]]  # not one batch of six on one slot
    assert occupancy.most == 2


async def test_stop_fails_the_items_of_every_running_batch() -> None:
    occupancy = Occupancy(hold_s=0.5)
    queue = batcher(occupancy, slots=2, max_batch_size=1)
    queue.start()
    waiting = [asyncio.ensure_future(queue.submit(x)) for x in range(3)]
    await asyncio.sleep(0.1)
    assert occupancy.now == 2
    assert queue.busy_s > 0
    await queue.stop()
    outcomes = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(o, BatcherStoppedError) for o in outcomes)


class BatchKiller(BaseException):
    """Escapes the batcher's `except Exception`, as a bug in the worker would."""


async def test_a_batch_that_dies_stops_the_queue_and_fails_the_other_running_batch() -> None:
    def fn(items: list[int]) -> list[int]:
        if items == [0]:
            time.sleep(0.1)
            raise BatchKiller
        time.sleep(1.0)
        return items

    queue: Batcher[int, int] = Batcher(
        fn, name="t", max_batch_size=1, max_wait_s=0, max_queue=8, max_concurrent_batches=2
    )
    queue.start()
    started = time.perf_counter()
    outcomes = await asyncio.gather(*(queue.submit(x, timeout_s=30) for x in range(3)), return_exceptions=True)
    assert time.perf_counter() - started < 0.9  # the slow neighbour's result is not waited for
    assert all(isinstance(o, WorkerDiedError) for o in outcomes)
    assert not queue.running
    with pytest.raises(WorkerDiedError):
        await queue.submit(5)
    await queue.stop()


async def test_the_wait_estimate_shares_the_queue_between_slots() -> None:
    occupancy = Occupancy(hold_s=0.2)
    one, two = batcher(occupancy, slots=1, max_batch_size=1), batcher(occupancy, slots=2, max_batch_size=1)
    for queue in (one, two):
        queue.start()
        await queue.submit(1)  # one batch of 0.2 s sets the estimates
    try:
        for queue in (one, two):
            for _ in range(4):
                queue.admit()  # four callers preparing their images
        assert 0.7 < one.wait_s() < 1.0  # four items at ~0.2 s each, one slot
        assert 0.35 < two.wait_s() < 0.5  # the same over two slots
        assert two.retry_after_s() < one.retry_after_s()
    finally:
        await one.stop()
        await two.stop()
