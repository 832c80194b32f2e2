"""The batching queue on its own: plain functions instead of models, real asyncio, real threads."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import pytest

from service.batching import (
    Batcher,
    BatcherStoppedError,
    DeadlineExceededError,
    DeadlineUnreachableError,
    QueueFullError,
    WorkerDiedError,
)

pytestmark = pytest.mark.anyio


class Recorder:
    """Observer that keeps what it was told."""

    def __init__(self) -> None:
        self.depths: list[int] = []
        self.waits: list[float] = []
        self.batches: list[tuple[int, float]] = []

    def queue_depth(self, depth: int) -> None:
        self.depths.append(depth)

    def queue_wait(self, seconds: float) -> None:
        self.waits.append(seconds)

    def batch_done(self, size: int, seconds: float) -> None:
        self.batches.append((size, seconds))


@asynccontextmanager
async def running(
    fn: Callable[[list[int]], Sequence[int]], cost: Callable[[int], float] | None = None, **options: float
) -> AsyncIterator[tuple[Batcher[int, int], Recorder]]:
    recorder = Recorder()
    config = {"max_batch_size": 4, "max_wait_s": 0.05, "max_queue": 16, "max_batch_cost": float("inf"), **options}
    batcher: Batcher[int, int] = Batcher(
        fn,
        name="test",
        max_batch_size=int(config["max_batch_size"]),
        max_wait_s=config["max_wait_s"],
        max_queue=int(config["max_queue"]),
        observer=recorder,
        cost=cost,
        max_batch_cost=config["max_batch_cost"],
    )
    batcher.start()
    try:
        yield batcher, recorder
    finally:
        await batcher.stop()


def squares(items: list[int]) -> list[int]:
    return [x * x for x in items]


async def test_concurrent_items_share_a_batch_and_each_gets_its_own_result() -> None:
    async with running(squares, max_batch_size=4, max_wait_s=0.5) as (batcher, recorder):
        done = await asyncio.gather(*(batcher.submit(x) for x in range(8)))
    assert [c.value for c in done] == [x * x for x in range(8)]
    assert [size for size, _ in recorder.batches] == [4, 4]  # closed by size, well before the 0.5 s wait
    assert all(c.batch_size == 4 for c in done)
    assert len(recorder.waits) == 8


async def test_a_lone_item_with_nobody_on_the_way_runs_at_once() -> None:
    async with running(squares, max_wait_s=0.5) as (batcher, recorder):
        done = await batcher.submit(3)
    assert done.value == 9
    assert done.queue_s < 0.1  # not the 0.5 s max_wait: nobody else holds a ticket
    assert recorder.batches[0][0] == 1


async def test_an_item_waits_at_most_max_wait_for_a_caller_that_was_admitted() -> None:
    async with running(squares, max_wait_s=0.05) as (batcher, recorder):
        with batcher.admit():  # another caller, still reading its upload, never arrives
            loop = asyncio.get_running_loop()
            start = loop.time()
            done = await batcher.submit(3)
            elapsed = loop.time() - start
    assert done.value == 9
    assert done.queue_s >= 0.04
    assert elapsed < 1.0
    assert recorder.batches[0][0] == 1


async def test_an_admitted_caller_that_arrives_in_time_joins_the_batch() -> None:
    async with running(squares, max_wait_s=0.5) as (batcher, recorder):
        ticket = batcher.admit()

        async def late() -> int:
            await asyncio.sleep(0.05)  # e.g. decoding
            return (await batcher.submit(4, ticket=ticket)).value

        first, second = await asyncio.gather(batcher.submit(3), late())
    assert (first.value, second) == (9, 16)
    assert [size for size, _ in recorder.batches] == [2]


async def test_the_batch_function_runs_off_the_event_loop_thread() -> None:
    threads: set[str] = set()

    def fn(items: list[int]) -> list[int]:
        threads.add(threading.current_thread().name)
        return items

    async with running(fn) as (batcher, _):
        await asyncio.gather(*(batcher.submit(x) for x in range(6)))
    assert threading.current_thread().name not in threads
    assert len(threads) == 1  # one worker thread per queue


async def test_a_failing_item_fails_alone() -> None:
    def fn(items: list[int]) -> list[int]:
        if 13 in items:
            raise ValueError("13 is unlucky")
        return squares(items)

    async with running(fn, max_batch_size=8, max_wait_s=0.2) as (batcher, recorder):
        outcomes = await asyncio.gather(*(batcher.submit(x) for x in (1, 13, 2, 3)), return_exceptions=True)
    assert [o if isinstance(o, Exception) else o.value for o in outcomes[::2]] == [1, 4]
    assert isinstance(outcomes[1], ValueError)
    assert outcomes[3].value == 9  # type: ignore[union-attr]
    assert recorder.batches[0][0] == 4  # one batch, whose failure was retried item by item


async def test_a_wrong_number_of_outputs_is_an_error_not_a_mixup() -> None:
    async with running(lambda items: items[:1], max_wait_s=0.2) as (batcher, _):
        outcomes = await asyncio.gather(*(batcher.submit(x) for x in range(3)), return_exceptions=True)
    # Retried one by one, each call returns one output for one input: everyone is answered correctly.
    assert [o.value for o in outcomes] == [0, 1, 2]  # type: ignore[union-attr]


async def test_full_queue_rejects_at_once() -> None:
    gate, entered = threading.Event(), threading.Event()

    def blocked(items: list[int]) -> list[int]:
        entered.set()
        gate.wait(10)
        return items

    async with running(blocked, max_batch_size=1, max_wait_s=0, max_queue=2) as (batcher, recorder):
        first = asyncio.create_task(batcher.submit(0))
        assert await asyncio.to_thread(entered.wait, 5)  # item 0 is on the worker thread, out of the queue
        queued = [asyncio.create_task(batcher.submit(x)) for x in (1, 2)]
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFullError):
            await batcher.submit(3)
        gate.set()
        assert [t.value for t in await asyncio.gather(first, *queued)] == [0, 1, 2]
    assert max(recorder.depths) == 2


async def test_deadline_exceeded_and_the_abandoned_item_is_skipped() -> None:
    gate = threading.Event()
    seen: list[int] = []

    def blocked(items: list[int]) -> list[int]:
        seen.extend(items)
        gate.wait(10)
        return items

    async with running(blocked, max_batch_size=1, max_wait_s=0) as (batcher, _):
        first = asyncio.create_task(batcher.submit(0, timeout_s=5))
        await asyncio.sleep(0.05)
        with pytest.raises(DeadlineExceededError):
            await batcher.submit(1, timeout_s=0.05)  # queued behind the blocked batch
        gate.set()
        assert (await first).value == 0
        assert (await batcher.submit(2, timeout_s=5)).value == 2
    assert seen == [0, 2]  # item 1 timed out while queued: it never reached the function


async def test_stop_fails_waiting_items_and_refuses_new_ones() -> None:
    gate = threading.Event()

    def blocked(items: list[int]) -> list[int]:
        gate.wait(10)
        return items

    recorder = Recorder()
    batcher: Batcher[int, int] = Batcher(
        blocked, name="t", max_batch_size=1, max_wait_s=0, max_queue=4, observer=recorder
    )
    batcher.start()
    tasks = [asyncio.create_task(batcher.submit(x)) for x in range(3)]
    await asyncio.sleep(0.05)
    await batcher.stop()
    gate.set()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(o, BatcherStoppedError) for o in outcomes)
    with pytest.raises(BatcherStoppedError):
        await batcher.submit(9)
    assert recorder.depths[-1] == 0


def test_invalid_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        Batcher(squares, name="x", max_batch_size=0, max_wait_s=0, max_queue=1)


async def test_stop_while_collecting_a_batch_fails_the_collected_items() -> None:
    batcher: Batcher[int, int] = Batcher(squares, name="t", max_batch_size=8, max_wait_s=30, max_queue=8)
    batcher.start()
    coming = batcher.admit()  # a third caller on its way: the worker waits for it
    tasks = [asyncio.create_task(batcher.submit(x)) for x in range(2)]
    await asyncio.sleep(0.05)  # the worker holds both, waiting 30 s for more
    coming.use()
    await batcher.stop()
    outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 1)
    assert all(isinstance(o, BatcherStoppedError) for o in outcomes)


class FakeOutOfMemory(Exception):
    """Stands in for torch.cuda.OutOfMemoryError: the batcher splits on whatever kinds it is given."""


async def test_an_out_of_memory_batch_is_halved_until_it_fits() -> None:
    sizes: list[int] = []
    splits: list[int] = []

    def fn(items: list[int]) -> list[int]:
        sizes.append(len(items))
        if len(items) > 2:
            raise FakeOutOfMemory(f"{len(items)} items do not fit")
        return squares(items)

    recorder = Recorder()
    batcher: Batcher[int, int] = Batcher(
        fn, name="oom", max_batch_size=8, max_wait_s=0.3, max_queue=16, observer=recorder,
        split_on=(FakeOutOfMemory,), on_split=lambda: splits.append(1),
    )  # fmt: skip
    batcher.start()
    try:
        done = await asyncio.gather(*(batcher.submit(x) for x in range(8)))
    finally:
        await batcher.stop()
    assert [c.value for c in done] == [x * x for x in range(8)]
    assert sizes == [8, 4, 2, 2, 4, 2, 2]  # halved, never retried one by one
    assert len(splits) == 3  # memory released before each retry
    assert recorder.batches[0][0] == 8


async def test_an_item_that_runs_out_of_memory_alone_fails_alone() -> None:
    def fn(items: list[int]) -> list[int]:
        if 5 in items:
            raise FakeOutOfMemory("item 5 is huge")
        return squares(items)

    batcher: Batcher[int, int] = Batcher(
        fn, name="oom", max_batch_size=4, max_wait_s=0.3, max_queue=8, split_on=(FakeOutOfMemory,)
    )
    batcher.start()
    try:
        outcomes = await asyncio.gather(*(batcher.submit(x) for x in (4, 5, 6, 7)), return_exceptions=True)
    finally:
        await batcher.stop()
    assert isinstance(outcomes[1], FakeOutOfMemory)
    assert outcomes[1].__traceback__ is not None  # raised again in the caller, with a fresh traceback
    assert [o.value for o in outcomes if not isinstance(o, BaseException)] == [16, 36, 49]


async def test_admission_reserves_a_place_and_gives_it_back() -> None:
    gate = threading.Event()
    async with running(lambda items: gate.wait(10) and items, max_batch_size=1, max_wait_s=0, max_queue=2) as (
        batcher,
        _,
    ):
        first = asyncio.create_task(batcher.submit(0))
        await asyncio.sleep(0.05)  # item 0 is on the worker thread
        held = batcher.admit()
        with batcher.admit():
            with pytest.raises(QueueFullError) as full:  # two places, both reserved
                batcher.admit()
            assert full.value.retry_after_s > 0
        with batcher.admit() as ticket:  # the released place is free again
            queued = asyncio.create_task(batcher.submit(1, ticket=ticket))
            await asyncio.sleep(0.01)
        held.use()  # given back unused
        with pytest.raises(RuntimeError, match="used or released"):
            held.use()
        gate.set()
        assert [c.value for c in await asyncio.gather(first, queued)] == [0, 1]


async def test_retry_after_grows_with_the_queue_and_batch_latency() -> None:
    gate = threading.Event()

    def slow(items: list[int]) -> list[int]:
        gate.wait(10)
        return items

    async with running(slow, max_batch_size=2, max_wait_s=0, max_queue=64) as (batcher, _):
        gate.set()
        await batcher.submit(0)  # one batch measured, almost instantly
        quick = batcher.retry_after_s()
        gate.clear()
        blocked = [asyncio.create_task(batcher.submit(x)) for x in range(1, 12)]
        await asyncio.sleep(0.3)  # 0.3 s into a batch, 9 items (5 batches) queued behind it
        assert batcher.busy_s >= 0.25
        deeper = batcher.retry_after_s()
        gate.set()
        await asyncio.gather(*blocked)
        after_slow_batch = batcher.retry_after_s()
    assert deeper > quick  # more batches ahead
    assert after_slow_batch > quick  # and a slower recent batch


async def test_an_item_whose_deadline_passed_in_the_queue_is_never_computed() -> None:
    gate = threading.Event()
    seen: list[int] = []

    def blocked(items: list[int]) -> list[int]:
        seen.extend(items)
        gate.wait(10)
        return items

    async with running(blocked, max_batch_size=4, max_wait_s=0) as (batcher, _):
        first = asyncio.create_task(batcher.submit(0))
        await asyncio.sleep(0.05)
        late = [asyncio.create_task(batcher.submit(x, timeout_s=0.05)) for x in (1, 2)]
        patient = asyncio.create_task(batcher.submit(3, timeout_s=10))
        await asyncio.sleep(0.2)
        gate.set()
        outcomes = await asyncio.gather(first, *late, patient, return_exceptions=True)
    assert all(isinstance(o, DeadlineExceededError) for o in outcomes[1:3])
    assert seen == [0, 3]


class WorkerKiller(BaseException):
    """Escapes the batcher's `except Exception`, as a bug in the worker would."""


async def test_a_dead_worker_fails_waiting_items_at_once_and_refuses_new_ones() -> None:
    def fatal(items: list[int]) -> list[int]:
        raise WorkerKiller

    batcher: Batcher[int, int] = Batcher(fatal, name="dies", max_batch_size=1, max_wait_s=0, max_queue=8)
    batcher.start()
    loop = asyncio.get_running_loop()
    started = loop.time()
    outcomes = await asyncio.gather(*(batcher.submit(x, timeout_s=30) for x in range(3)), return_exceptions=True)
    assert loop.time() - started < 5  # nobody waits for the 30 s deadline
    assert not batcher.running
    assert all(isinstance(o, WorkerDiedError) for o in outcomes)  # the culprit's item included
    with pytest.raises(WorkerDiedError):
        await batcher.submit(9)
    await batcher.stop()


async def test_a_batch_closes_at_its_cost_budget_and_keeps_the_order() -> None:
    seen: list[list[int]] = []

    def record(items: list[int]) -> list[int]:
        seen.append(list(items))
        return squares(items)

    items = [4, 4, 4, 4, 9, 20, 1]
    async with running(record, cost=float, max_batch_size=8, max_wait_s=0.5, max_batch_cost=10) as (batcher, _):
        done = await asyncio.gather(*(batcher.submit(x) for x in items))
    assert [c.value for c in done] == [x * x for x in items]
    # 4+4 fits and 4 more would not; 9 alone; 20 is over the budget on its own and still runs, alone.
    assert seen == [[4, 4], [4, 4], [9], [20], [1]]
    assert [item for batch in seen for item in batch] == items


async def test_an_item_held_over_for_the_next_batch_is_failed_on_stop() -> None:
    release = threading.Event()

    def slow(items: list[int]) -> list[int]:
        release.wait(5)
        return squares(items)

    async with running(slow, cost=float, max_batch_size=8, max_wait_s=0.5, max_batch_cost=10) as (batcher, _):
        first = asyncio.ensure_future(batcher.submit(6))
        await asyncio.sleep(0.05)  # the lone 6 is collecting; 7 arrives, cannot fit, and is held over
        held = asyncio.ensure_future(batcher.submit(7))
        await asyncio.sleep(0.05)
        assert batcher.depth == 1
        await batcher.stop()
        release.set()
        for future in (first, held):
            with pytest.raises(BatcherStoppedError):
                await future


async def test_a_caller_whose_deadline_the_queue_cannot_meet_is_refused_at_once() -> None:
    def tenth_of_a_second(items: list[int]) -> list[int]:
        threading.Event().wait(0.1)
        return items

    async with running(tenth_of_a_second, max_batch_size=1, max_wait_s=0, max_queue=16) as (batcher, _):
        assert batcher.wait_s() == 0
        with batcher.admit(within_s=0.001):  # nobody ahead: tried whatever its deadline
            pass
        await batcher.submit(0)  # one batch timed: 0.1 s per item
        backlog = [asyncio.create_task(batcher.submit(x)) for x in range(1, 6)]
        await asyncio.sleep(0.02)  # item 1 runs, 4 wait: about 0.48 s before a newcomer's batch starts
        assert 0.35 < batcher.wait_s() < 0.7
        with pytest.raises(DeadlineUnreachableError) as refused:
            batcher.admit(within_s=0.3)
        assert isinstance(refused.value, QueueFullError)  # a 429 like a full queue, with its Retry-After
        assert refused.value.retry_after_s > 0
        with batcher.admit(within_s=5.0) as ticket:  # a patient caller still gets in
            late = asyncio.create_task(batcher.submit(6, timeout_s=5.0, ticket=ticket))
            await asyncio.sleep(0)
        assert [c.value for c in await asyncio.gather(*backlog, late)] == [1, 2, 3, 4, 5, 6]


async def test_swap_applies_from_the_next_batch_and_the_running_one_finishes_on_the_old_function() -> None:
    started, release = threading.Event(), threading.Event()

    def old(items: list[int]) -> list[int]:
        started.set()
        assert release.wait(10)
        return [-i for i in items]

    async with running(old, max_batch_size=1) as (batcher, _):
        first = asyncio.ensure_future(batcher.submit(1))
        assert await asyncio.to_thread(started.wait, 10)
        queued = asyncio.ensure_future(batcher.submit(2))  # waits behind the running batch
        await asyncio.sleep(0.05)
        still_running = batcher.swap(lambda items: [10 * i for i in items])
        assert len(still_running) == 1
        release.set()
        assert (await first).value == -1  # started before the swap: the old function
        assert (await queued).value == 20  # queued at the swap, computed after it: the new one
        await asyncio.wait(still_running)
        assert (await batcher.submit(3)).value == 30
