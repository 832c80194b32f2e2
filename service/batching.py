"""A dynamic batching queue, generic over what it batches: it knows nothing of HTTP or of models.

Callers `submit` one item and await its own result. One worker task per queue collects items into a
batch, closed at `max_batch_size` items, at `max_batch_cost` (the items' summed `cost`: for images, the
pixels the model computes on), once the oldest item has waited `max_wait_s`, or as soon as the queue is
empty and no admitted caller is still preparing an item (nobody to wait for), and runs the batch
function on a dedicated thread so the event loop never does the heavy work. That thread may be shared
with other batchers (on a CPU every model shares the inference thread): a batch is timed from when it
really starts on the thread, and its items' deadlines are checked then, so a batch that waited behind
another model's is neither timed as inference nor computed for callers whose deadline has passed. Up to
`max_concurrent_batches` batches run at once (on as many threads); the next batch is collected only
once a slot is free, so under load the queue fills and batches grow rather than wait ready-made.

Overload and faults are handled here too: a caller may `admit` itself before doing its own preparation
(so a full queue, or one estimated too slow for the caller's deadline, refuses at once, before any
upload is read), an item whose deadline passes while it waits is never computed, a failing batch is
retried item by item or halved (batch_runner.py), and a worker that dies fails its waiting items at once.
`swap` changes the batch function between batches (a model reload) without touching the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, Protocol

from service.admission import (
    BatcherStoppedError,
    DeadlineExceededError,
    DeadlineUnreachableError,
    QueueFullError,
    Ticket,
    WorkerDiedError,
)
from service.batch_runner import BatchRunner, In, Out

# (The errors and Ticket, imported above, are part of this module's interface; admission.py keeps them.)

log = logging.getLogger(__name__)

# Headroom on the wait estimate before refusing a deadline: batch times vary, and reading and decoding
# the upload come on top. Without it (bench/overload.py, 2x load, 1 s budget) 5.7 % of the admitted
# requests still missed their deadline.
_MARGIN = 1.25


class BatchObserver(Protocol):
    """Hooks for instrumentation; called on the event loop."""

    def queue_depth(self, depth: int) -> None: ...

    def queue_wait(self, seconds: float) -> None: ...

    def batch_done(self, size: int, seconds: float) -> None: ...


class _NoObserver:
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


@dataclass
class _Pending(Generic[In, Out]):
    item: In
    enqueued: float
    deadline: float  # perf_counter() time; math.inf for none
    future: asyncio.Future[Completed[Out]] = field(repr=False)


@dataclass(eq=False)
class _Running(Generic[In, Out]):
    items: list[_Pending[In, Out]]
    submitted: float  # perf_counter() time it was handed to the executor
    started: float | None = None  # when it started on the thread (set there); None while it waits for one


class Batcher(Generic[In, Out]):
    """Batches `submit`ted items through `fn`, which must return one output per input, in order."""

    def __init__(
        self,
        fn: Callable[[list[In]], Sequence[Out]],
        *,
        name: str,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        observer: BatchObserver | None = None,
        split_on: tuple[type[Exception], ...] = (),
        on_split: Callable[[], None] | None = None,
        cost: Callable[[In], float] | None = None,
        max_batch_cost: float = math.inf,
        executor: Executor | None = None,
        max_concurrent_batches: int = 1,
    ) -> None:
        """`executor`: the thread(s) batches run on, owned by the caller (it needs one thread per concurrent
        batch); by default the batcher's own, with one thread per concurrent batch."""
        if min(max_batch_size, max_queue, max_concurrent_batches) < 1 or max_wait_s < 0 or max_batch_cost <= 0:
            raise ValueError(
                "max_batch_size, max_queue and max_concurrent_batches must be >= 1, max_wait_s >= 0, max_batch_cost > 0"
            )
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_batch_cost = max_batch_cost
        self._cost = cost or (lambda item: 1.0)
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.max_concurrent_batches = max_concurrent_batches
        self._split_on, self._on_split = split_on, on_split
        self._runner = BatchRunner(fn, name=name, split_on=split_on, on_split=on_split)
        self._observer: BatchObserver = observer or _NoObserver()
        self._queue: asyncio.Queue[_Pending[In, Out]] = asyncio.Queue(maxsize=max_queue)
        self._held: _Pending[In, Out] | None = None  # taken off the queue but over budget: opens the next batch
        self._admitted = 0  # tickets handed out and not yet used or released
        self._collecting: list[_Pending[In, Out]] = []  # off the queue, in the batch being collected
        self._running: dict[asyncio.Task[None], _Running[In, Out]] = {}
        self._batch_s: float | None = None  # moving average of recent batch durations on the thread
        self._item_s: float | None = None  # ... and of batch seconds per item
        self._thread_wait_s: float | None = None  # ... and of a batch's wait for a thread (shared executor)
        self._worker: asyncio.Task[None] | None = None
        self._shared_executor = executor
        self._executor: Executor | None = None
        self._died: BaseException | None = None

    @property
    def depth(self) -> int:
        return self._queue.qsize() + (self._held is not None)

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    @property
    def busy_s(self) -> float:
        """How long the oldest batch now running on a thread has been running; 0 when idle. A batch still
        waiting for the thread (behind another model's) is not running."""
        now = time.perf_counter()
        starts = [batch.started for batch in self._running.values() if batch.started is not None]
        return max((now - started for started in starts), default=0.0)

    @property
    def thread_wait_s(self) -> float:
        """The recent wait of a batch for a thread, once handed over (others' batches on a shared one)."""
        return self._thread_wait_s or 0.0

    def _per_batch_s(self) -> float:
        """A batch's recent latency once handed over: the wait for the thread, then the batch itself."""
        return (self._thread_wait_s or 0.0) + (self._batch_s or 0.0)

    def retry_after_s(self) -> float:
        """A guess at when a place will be free: the batches ahead of a newcomer times recent batch latency."""
        ahead = (self.depth + self._admitted) / self.max_batch_size / self.max_concurrent_batches + 1
        # A batch running longer than usual is the better guess (a slow or stuck model).
        return ahead * max(self._per_batch_s(), self.busy_s, self.max_wait_s)

    def wait_s(self) -> float:
        """A guess at a newcomer's wait for its batch to start: when every slot is taken, the rest of the
        batch that ends first; then the items ahead of it at the recent seconds per item, plus each of
        their batches' recent wait for a thread, shared by the slots (0 until a batch has run)."""
        first_free = 0.0
        if len(self._running) >= self.max_concurrent_batches:
            now = time.perf_counter()
            first_free = min(self._remaining_s(batch, now) for batch in self._running.values())
        ahead = self.depth + self._admitted
        batches = math.ceil(ahead / self.max_batch_size)
        work = ahead * (self._item_s or 0.0) + batches * (self._thread_wait_s or 0.0)
        return first_free + work / self.max_concurrent_batches

    def _remaining_s(self, batch: _Running[In, Out], now: float) -> float:
        if batch.started is None:  # still waiting for the thread
            return max(0.0, (self._thread_wait_s or 0.0) - (now - batch.submitted)) + (self._batch_s or 0.0)
        return max(0.0, (self._batch_s or 0.0) - (now - batch.started))

    def start(self) -> None:
        if self._worker is not None:
            raise RuntimeError(f"batcher {self.name!r} already started")
        # Threads of its own unless the caller shares some: never more batches at once than slots.
        self._executor = self._shared_executor or ThreadPoolExecutor(
            self.max_concurrent_batches, thread_name_prefix=f"batch-{self.name}"
        )
        self._worker = asyncio.create_task(self._run(), name=f"batcher-{self.name}")
        self._worker.add_done_callback(self._worker_exited)

    async def stop(self) -> None:
        """Stop taking items, fail whatever is still waiting, and release the worker thread."""
        worker, self._worker = self._worker, None
        if worker is not None and not worker.done():  # a dead worker's error was logged when it died
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        for running in list(self._running):  # their threads finish on their own; results are dropped
            running.cancel()
        self._fail_waiting(BatcherStoppedError(f"{self.name} is shutting down"))
        if self._executor is not None and self._executor is not self._shared_executor:
            # Do not wait here: a batch still on the thread finishes on its own, its result is dropped.
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = None

    def swap(
        self, fn: Callable[[list[In]], Sequence[Out]], cost: Callable[[In], float] | None = None
    ) -> set[asyncio.Task[None]]:
        """Run every batch that starts from now on through `fn` (a batch boundary: those running finish with
        the function they started with). Returns those batches, for the caller to await before it frees what
        the old function holds. Queued items stay queued: nothing is dropped or failed."""
        self._runner = BatchRunner(fn, name=self.name, split_on=self._split_on, on_split=self._on_split)
        if cost is not None:
            self._cost = cost
        return set(self._running)

    def admit(self, within_s: float | None = None) -> Ticket:
        """Reserve a place before preparing an item; raises QueueFullError at once when there is none, and
        DeadlineUnreachableError when the caller needs its result `within_s` seconds and the work ahead,
        plus a batch of its own, is estimated to take longer. Nobody ahead: always admitted."""
        self._check_running()
        if self.depth + self._admitted >= self.max_queue:
            raise QueueFullError(f"{self.name} queue is full ({self.max_queue} waiting)", self.retry_after_s())
        wait = self.wait_s()
        if within_s is not None and wait > 0 and _MARGIN * (wait + self._per_batch_s()) > within_s:
            message = f"{self.name}: about {wait:.3g} s of work ahead, the caller can wait {within_s:.3g} s"
            raise DeadlineUnreachableError(message, self.retry_after_s())
        self._admitted += 1

        def release() -> None:
            self._admitted -= 1

        return Ticket(release)

    async def submit(self, item: In, timeout_s: float | None = None, ticket: Ticket | None = None) -> Completed[Out]:
        """Queue `item` and wait for its result; raises its own error, never a neighbour's.

        Cancelling the caller (its client went away) or passing the deadline drops the item from the
        queue: the worker skips it unless its batch has already started.
        """
        if ticket is not None:
            ticket.use()  # its reserved place becomes the queue slot below
        else:
            self.admit().use()  # the same checks, so a submit cannot take a place someone reserved
        self._check_running()
        now = time.perf_counter()
        deadline = math.inf if timeout_s is None else now + timeout_s
        future: asyncio.Future[Completed[Out]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(item, now, deadline, future))
        self._observer.queue_depth(self._queue.qsize())
        try:
            # shield: a timeout must not cancel the future before we mark it abandoned ourselves.
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            raise DeadlineExceededError(f"no result from {self.name} within {timeout_s:.3g} s") from None
        finally:
            future.cancel()  # a no-op once answered; otherwise the worker skips the item

    def _check_running(self) -> None:
        if self._died is not None:
            raise WorkerDiedError(f"the {self.name} worker has stopped: {self._died!r}")
        if not self.running:
            raise BatcherStoppedError(f"{self.name} is not running")

    def _worker_exited(self, worker: asyncio.Task[None]) -> None:
        if worker.cancelled():
            return  # stop() did it and fails the waiting items itself, or a batch died (_die)
        self._die(worker.exception() or RuntimeError("worker returned"))

    def _die(self, error: BaseException) -> None:
        self._died = error
        log.critical("%s: batching worker died: %r", self.name, error)
        self._fail_waiting(WorkerDiedError(f"the {self.name} worker has stopped"))
        if self._worker is not None:
            self._worker.cancel()

    def _fail_waiting(self, error: Exception) -> None:
        leftovers = self._collecting + [self._queue.get_nowait() for _ in range(self._queue.qsize())]
        leftovers += [pending for batch in self._running.values() for pending in batch.items]
        if self._held is not None:
            leftovers.append(self._held)
        self._collecting, self._held = [], None
        for pending in leftovers:
            if not pending.future.done():
                pending.future.set_exception(error)
        self._observer.queue_depth(0)

    async def _run(self) -> None:
        slots = asyncio.Semaphore(self.max_concurrent_batches)
        while True:
            await slots.acquire()  # before collecting: while every slot is busy, the queue fills
            batch = self._live(await self._collect())
            self._collecting = []
            self._observer.queue_depth(self.depth)
            if not batch:
                slots.release()
                continue
            running = _Running(batch, time.perf_counter())
            task = asyncio.create_task(self._process(running), name=f"batch-{self.name}")
            self._running[task] = running

            def finished(done: asyncio.Task[None]) -> None:
                error = None if done.cancelled() else done.exception()
                if error is not None:  # it escaped _process's `except Exception`
                    self._die(error)
                self._running.pop(done, None)
                slots.release()

            task.add_done_callback(finished)

    def _live(self, batch: list[_Pending[In, Out]]) -> list[_Pending[In, Out]]:
        """Drop items nobody waits for: cancelled, or past a deadline whose timer has not fired yet."""
        now = time.perf_counter()
        for pending in batch:
            if pending.deadline <= now and not pending.future.done():
                pending.future.set_exception(DeadlineExceededError(f"deadline passed in the {self.name} queue"))
        return [p for p in batch if not p.future.done()]

    async def _process(self, running: _Running[In, Out]) -> None:
        try:
            await self._compute(running)
        except Exception as exc:  # a bug here must not kill the queue: fail this batch, keep serving
            log.exception("%s: batch worker error", self.name)
            for pending in running.items:
                if not pending.future.done():
                    pending.future.set_exception(exc)

    def _on_thread(self, running: _Running[In, Out]) -> tuple[list[_Pending[In, Out]], list[Out | Exception], float]:
        """Run on the executor's thread: the batch starts now, for the items still wanted now."""
        started = running.started = time.perf_counter()
        # Reading a future's state off the loop is a race at worst: an item cancelled this instant is computed.
        live = [p for p in running.items if p.deadline > started and not p.future.done()]
        outcomes = self._runner.run([p.item for p in live]) if live else []
        return live, outcomes, time.perf_counter() - started

    async def _compute(self, running: _Running[In, Out]) -> None:
        loop = asyncio.get_running_loop()
        batch, outcomes, seconds = await loop.run_in_executor(self._executor, self._on_thread, running)
        started = running.started
        assert started is not None  # set by _on_thread
        self._thread_wait_s = _average(self._thread_wait_s, started - running.submitted)
        computed = {id(pending) for pending in batch}
        for pending in running.items:  # its deadline passed while the batch waited for the thread
            if id(pending) not in computed and not pending.future.done():
                pending.future.set_exception(DeadlineExceededError(f"deadline passed in the {self.name} queue"))
        if not batch:
            return
        for pending in batch:
            self._observer.queue_wait(started - pending.enqueued)
        self._batch_s = _average(self._batch_s, seconds)
        self._item_s = _average(self._item_s, seconds / len(batch))
        self._observer.batch_done(len(batch), seconds)
        for pending, outcome in zip(batch, outcomes, strict=True):
            if pending.future.done():
                continue
            if isinstance(outcome, BaseException):
                pending.future.set_exception(outcome)
            else:
                pending.future.set_result(Completed(outcome, started - pending.enqueued, seconds, len(batch)))

    async def _collect(self) -> list[_Pending[In, Out]]:
        first, self._held = self._held or await self._queue.get(), None
        batch = [first]
        self._collecting = batch  # items taken off the queue stay visible to stop() while we collect
        close_at = first.enqueued + self.max_wait_s
        cost = self._cost(first.item)  # an item over the budget on its own still runs, alone
        size = self._share()
        while len(batch) < size:
            pending = await self._next(close_at)
            if pending is None:
                break
            cost += self._cost(pending.item)
            if cost > self.max_batch_cost:
                self._held = pending  # first in line for the next batch: order is kept
                break
            batch.append(pending)
        return batch

    def _share(self) -> int:
        """The size to aim for: full when this is the only free slot; otherwise the items on their way
        (this one, those queued and those being prepared) shared out between the free slots, so that no
        slot, and the cores it would compute on, idles while another runs everything."""
        free = self.max_concurrent_batches - len(self._running)
        if free <= 1:
            return self.max_batch_size
        coming = 1 + self.depth + self._admitted
        return max(1, min(self.max_batch_size, math.ceil(coming / free)))

    async def _next(self, close_at: float) -> _Pending[In, Out] | None:
        """The next queued item, waiting for one until `close_at` at the latest, and only while another
        caller holds a ticket (reading or decoding its upload): waiting for nobody is pure latency."""
        if not self._queue.empty():
            return self._queue.get_nowait()
        if self._admitted == 0:
            return None
        remaining = close_at - time.perf_counter()
        if remaining <= 0:
            return None
        try:
            async with asyncio.timeout(remaining):
                return await self._queue.get()
        except TimeoutError:
            return None


def _average(previous: float | None, latest: float) -> float:
    """An exponential moving average that follows a change of load within a few batches."""
    return latest if previous is None else 0.8 * previous + 0.2 * latest
