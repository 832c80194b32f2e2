"""The batches a batcher has running: at most `count` at once, each computed on an executor thread.

A batch is handed to the executor when collected, but it may wait there (on a CPU every model shares
the inference thread): it is timed from when it really starts on the thread, and its items' deadlines
are checked then, so a batch that waited behind another model's is neither timed as inference nor
computed for callers whose deadline has passed. What each batch took feeds the batcher's estimates.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Generic, Protocol

from service.admission import DeadlineExceededError
from service.batch_estimates import LatencyEstimates
from service.batch_queue import Pending
from service.batch_runner import BatchRunner, In, Out

log = logging.getLogger(__name__)


class BatchObserver(Protocol):
    """Hooks for instrumentation; called on the event loop."""

    def queue_depth(self, depth: int) -> None: ...

    def queue_wait(self, seconds: float) -> None: ...

    def batch_done(self, size: int, seconds: float) -> None: ...


class NoObserver:
    def queue_depth(self, depth: int) -> None:
        pass

    def queue_wait(self, seconds: float) -> None:
        pass

    def batch_done(self, size: int, seconds: float) -> None:
        pass


@dataclass(frozen=True)
class Completed(Generic[Out]):
    value: Out
    queue_s: float  # from submit until its batch started on the thread
    inference_s: float  # the whole batch call on the thread, retries included
    batch_size: int


@dataclass(eq=False)
class _Running(Generic[In, Out]):
    items: list[Pending[In, Completed[Out]]]
    submitted: float  # perf_counter() time it was handed to the executor
    started: float | None = None  # when it started on the thread (set there); None while it waits for one


class BatchSlots(Generic[In, Out]):
    def __init__(
        self, name: str, count: int, runner: BatchRunner[In, Out], observer: BatchObserver, estimates: LatencyEstimates
    ) -> None:
        self.name, self.count = name, count
        self.runner = runner  # read on the thread as each batch starts: replacing it is a batch boundary
        self.executor: Executor | None = None
        self._observer, self._estimates = observer, estimates
        self._free = asyncio.Semaphore(count)  # replaced by open(), on the loop that runs the batches
        self._running: dict[asyncio.Task[None], _Running[In, Out]] = {}

    @property
    def taken(self) -> int:
        return len(self._running)

    @property
    def tasks(self) -> set[asyncio.Task[None]]:
        return set(self._running)

    def items(self) -> list[Pending[In, Completed[Out]]]:
        return [pending for batch in self._running.values() for pending in batch.items]

    def open(self) -> None:
        """Fresh slots for a (re)started worker: those a stopped worker held are not carried over."""
        self._free = asyncio.Semaphore(self.count)

    async def acquire(self) -> None:
        await self._free.acquire()

    def release(self) -> None:
        self._free.release()

    def launch(self, items: list[Pending[In, Completed[Out]]], on_escape: Callable[[BaseException], None]) -> None:
        """Run `items` as a batch in the slot acquired for it, which frees when the batch is done.
        `on_escape` gets an error that escaped the batch's own handling (a bug in this module)."""
        running = _Running(items, time.perf_counter())
        task = asyncio.create_task(self._process(running), name=f"batch-{self.name}")
        self._running[task] = running
        free = self._free  # the slot came from these, even if a restart has made new ones since

        def finished(done: asyncio.Task[None]) -> None:
            error = None if done.cancelled() else done.exception()
            if error is not None:
                on_escape(error)
            self._running.pop(done, None)
            free.release()

        task.add_done_callback(finished)

    def cancel(self) -> None:
        """Stop waiting for the running batches: their threads finish on their own, their results are dropped."""
        for task in list(self._running):
            task.cancel()

    @property
    def busy_s(self) -> float:
        """How long the oldest batch now running on a thread has been running; 0 when idle. A batch still
        waiting for the thread (behind another model's) is not running."""
        now = time.perf_counter()
        starts = [batch.started for batch in self._running.values() if batch.started is not None]
        return max((now - started for started in starts), default=0.0)

    def first_free_s(self) -> float:
        """When every slot is taken, the estimated rest of the batch that ends first; else 0."""
        if len(self._running) < self.count:
            return 0.0
        now = time.perf_counter()
        return min(self._estimates.remaining_s(b.submitted, b.started, now) for b in self._running.values())

    def share(self, coming: int, max_batch_size: int) -> int:
        """The size to aim for: full when this is the only free slot; otherwise the items on their way
        shared out between the free slots, so that no slot, and the cores it would compute on, idles
        while another runs everything."""
        free = self.count - len(self._running)
        if free <= 1:
            return max_batch_size
        return max(1, min(max_batch_size, math.ceil(coming / free)))

    async def _process(self, running: _Running[In, Out]) -> None:
        try:
            await self._compute(running)
        except Exception as exc:  # a bug here must not kill the queue: fail this batch, keep serving
            log.exception("%s: batch worker error", self.name)
            for pending in running.items:
                if not pending.future.done():
                    pending.future.set_exception(exc)

    def _on_thread(
        self, running: _Running[In, Out]
    ) -> tuple[list[Pending[In, Completed[Out]]], list[Out | Exception], float]:
        """Run on the executor's thread: the batch starts now, for the items still wanted now."""
        started = running.started = time.perf_counter()
        # Reading a future's state off the loop is a race at worst: an item cancelled this instant is computed.
        live = [p for p in running.items if p.deadline > started and not p.future.done()]
        outcomes = self.runner.run([p.item for p in live]) if live else []
        return live, outcomes, time.perf_counter() - started

    async def _compute(self, running: _Running[In, Out]) -> None:
        loop = asyncio.get_running_loop()
        batch, outcomes, seconds = await loop.run_in_executor(self.executor, self._on_thread, running)
        started = running.started
        assert started is not None  # set by _on_thread
        computed = {id(pending) for pending in batch}
        for pending in running.items:  # its deadline passed while the batch waited for the thread
            if id(pending) not in computed and not pending.future.done():
                pending.future.set_exception(DeadlineExceededError(f"deadline passed in the {self.name} queue"))
        if not batch:
            self._estimates.record_wait(started - running.submitted)
            return
        for pending in batch:
            self._observer.queue_wait(started - pending.enqueued)
        self._estimates.record(started - running.submitted, seconds, len(batch))
        self._observer.batch_done(len(batch), seconds)
        for pending, outcome in zip(batch, outcomes, strict=True):
            if pending.future.done():
                continue
            if isinstance(outcome, BaseException):
                pending.future.set_exception(outcome)
            else:
                pending.future.set_result(Completed(outcome, started - pending.enqueued, seconds, len(batch)))
