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

The parts read on their own: batch_queue.py (the waiting items and how a batch is collected),
batch_estimates.py (recent latencies and the wait guesses admission and Retry-After use),
batch_slots.py (the batches running, timed on their thread), batch_runner.py (one batch's call,
retries and splits); this module admits, submits, runs the collecting worker and handles its faults.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Generic

from service.admission import (
    BatcherStoppedError,
    DeadlineExceededError,
    DeadlineUnreachableError,
    QueueFullError,
    Ticket,
    WorkerDiedError,
)
from service.batch_estimates import LatencyEstimates
from service.batch_queue import BatchQueue, Pending
from service.batch_runner import BatchRunner, In, Out
from service.batch_slots import BatchObserver, BatchSlots, Completed, NoObserver

# (The errors, Ticket, BatchObserver and Completed, imported above, are part of this module's interface.)
__all__ = [
    "BatchObserver",
    "Batcher",
    "BatcherStoppedError",
    "Completed",
    "DeadlineExceededError",
    "DeadlineUnreachableError",
    "QueueFullError",
    "Ticket",
    "WorkerDiedError",
]

log = logging.getLogger(__name__)


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
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.max_concurrent_batches = max_concurrent_batches
        self._split_on, self._on_split = split_on, on_split
        self._observer: BatchObserver = observer or NoObserver()
        self._queue: BatchQueue[In, Completed[Out]] = BatchQueue(
            max_queue, max_wait_s, max_batch_cost, cost or (lambda item: 1.0)
        )
        self._estimates = LatencyEstimates()
        runner = BatchRunner(fn, name=name, split_on=split_on, on_split=on_split)
        self._slots = BatchSlots(name, max_concurrent_batches, runner, self._observer, self._estimates)
        self._worker: asyncio.Task[None] | None = None
        self._shared_executor = executor
        self._died: BaseException | None = None

    @property
    def depth(self) -> int:
        return self._queue.depth

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    @property
    def idle(self) -> bool:
        """Nothing queued, admitted (a caller preparing an item) or running: safe to read off the loop, as
        a hint (an item may arrive the next instant)."""
        return self.depth == 0 and self._queue.admitted == 0 and self._slots.taken == 0

    @property
    def busy_s(self) -> float:
        """How long the oldest batch now running on a thread has been running; 0 when idle. A batch still
        waiting for the thread (behind another model's) is not running."""
        return self._slots.busy_s

    @property
    def thread_wait_s(self) -> float:
        """The recent wait of a batch for a thread, once handed over (others' batches on a shared one)."""
        return self._estimates.thread_wait_s or 0.0

    def retry_after_s(self) -> float:
        """A guess at when a place will be free: the batches ahead of a newcomer times recent batch latency."""
        ahead = (self.depth + self._queue.admitted) / self.max_batch_size / self.max_concurrent_batches + 1
        # A batch running longer than usual is the better guess (a slow or stuck model).
        return ahead * max(self._estimates.per_batch_s(), self.busy_s, self.max_wait_s)

    def wait_s(self) -> float:
        """A guess at a newcomer's wait for its batch to start: when every slot is taken, the rest of the
        batch that ends first; then the items ahead of it at the recent seconds per item, plus each of
        their batches' recent wait for a thread, shared by the slots (0 until a batch has run)."""
        work = self._estimates.work_s(self.depth + self._queue.admitted, self.max_batch_size)
        return self._slots.first_free_s() + work / self.max_concurrent_batches

    def start(self) -> None:
        if self._worker is not None:
            raise RuntimeError(f"batcher {self.name!r} already started")
        # Threads of its own unless the caller shares some: never more batches at once than slots.
        self._slots.open()
        self._slots.executor = self._shared_executor or ThreadPoolExecutor(
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
        self._slots.cancel()
        self._fail_waiting(BatcherStoppedError(f"{self.name} is shutting down"))
        executor, self._slots.executor = self._slots.executor, None
        if executor is not None and executor is not self._shared_executor:
            # Do not wait here: a batch still on the thread finishes on its own, its result is dropped.
            executor.shutdown(wait=False, cancel_futures=True)

    def swap(
        self, fn: Callable[[list[In]], Sequence[Out]], cost: Callable[[In], float] | None = None
    ) -> set[asyncio.Task[None]]:
        """Run every batch that starts from now on through `fn` (a batch boundary: those running finish with
        the function they started with). Returns those batches, for the caller to await before it frees what
        the old function holds. Queued items stay queued: nothing is dropped or failed."""
        self._slots.runner = BatchRunner(fn, name=self.name, split_on=self._split_on, on_split=self._on_split)
        if cost is not None:
            self._queue.cost = cost
        return self._slots.tasks

    def admit(self, within_s: float | None = None) -> Ticket:
        """Reserve a place before preparing an item; raises QueueFullError at once when there is none, and
        DeadlineUnreachableError when the caller needs its result `within_s` seconds and the work ahead,
        plus a batch of its own, is estimated to take longer. Nobody ahead: always admitted."""
        self._check_running()
        if self._queue.full:
            raise QueueFullError(f"{self.name} queue is full ({self.max_queue} waiting)", self.retry_after_s())
        wait = self.wait_s()
        if self._estimates.too_slow(wait, within_s):
            message = f"{self.name}: about {wait:.3g} s of work ahead, the caller can wait {within_s:.3g} s"
            raise DeadlineUnreachableError(message, self.retry_after_s())
        self._queue.admitted += 1

        def release() -> None:
            self._queue.admitted -= 1

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
        self._queue.put(Pending(item, now, deadline, future))
        self._observer.queue_depth(self.depth)
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
        leftovers = self._queue.take_all()
        leftovers += self._slots.items()
        for pending in leftovers:
            if not pending.future.done():
                pending.future.set_exception(error)
        self._observer.queue_depth(0)

    async def _run(self) -> None:
        while True:
            await self._slots.acquire()  # before collecting: while every slot is busy, the queue fills
            try:
                batch = self._live(await self._queue.collect(self._batch_size))
            except BaseException:  # cancelled while collecting (stop): the slot was never used
                self._slots.release()
                raise
            self._observer.queue_depth(self.depth)
            if batch:
                self._slots.launch(batch, on_escape=self._die)
            else:
                self._slots.release()

    def _live(self, batch: list[Pending[In, Completed[Out]]]) -> list[Pending[In, Completed[Out]]]:
        """Drop items nobody waits for: cancelled, or past a deadline whose timer has not fired yet."""
        now = time.perf_counter()
        for pending in batch:
            if pending.deadline <= now and not pending.future.done():
                pending.future.set_exception(DeadlineExceededError(f"deadline passed in the {self.name} queue"))
        return [p for p in batch if not p.future.done()]

    def _batch_size(self) -> int:
        coming = 1 + self.depth + self._queue.admitted  # the batch's first item, those queued, those being prepared
        return self._slots.share(coming, self.max_batch_size)
