"""A dynamic batching queue, generic over what it batches: it knows nothing of HTTP or of models.

Callers `submit` one item and await its own result. One worker task per queue collects items into a
batch, closed at `max_batch_size` items or once the oldest item has waited `max_wait_s`, and runs the
batch function on a dedicated thread so the event loop never does the heavy work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")

log = logging.getLogger(__name__)


class QueueFullError(Exception):
    """The queue holds `max_queue` items already; the caller should retry later."""


class DeadlineExceededError(Exception):
    """The item was still waiting (queued or in its batch) when its deadline passed."""


class BatcherStoppedError(Exception):
    """The batcher is not running (not started yet, or shutting down)."""


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
    queue_s: float  # from submit until its batch started
    inference_s: float  # the whole batch call, retries included
    batch_size: int


@dataclass
class _Pending(Generic[In, Out]):
    item: In
    enqueued: float
    future: asyncio.Future[Completed[Out]] = field(repr=False)


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
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1 and max_wait_s >= 0")
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._fn = fn
        self._observer: BatchObserver = observer or _NoObserver()
        self._queue: asyncio.Queue[_Pending[In, Out]] = asyncio.Queue(maxsize=max_queue)
        self._inflight: list[_Pending[In, Out]] = []
        self._worker: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    def start(self) -> None:
        if self._worker is not None:
            raise RuntimeError(f"batcher {self.name!r} already started")
        # One thread per queue: a model never runs two batches at once, and queues do not share a pool.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"batch-{self.name}")
        self._worker = asyncio.create_task(self._run(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        """Stop taking items, fail whatever is still waiting, and release the worker thread."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        leftovers = self._inflight + [self._queue.get_nowait() for _ in range(self._queue.qsize())]
        self._inflight = []
        for pending in leftovers:
            if not pending.future.done():
                pending.future.set_exception(BatcherStoppedError(f"{self.name} is shutting down"))
        self._observer.queue_depth(0)
        if self._executor is not None:
            # Do not wait here: a batch still on the thread finishes on its own, its result is dropped.
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def submit(self, item: In, timeout_s: float | None = None) -> Completed[Out]:
        """Queue `item` and wait for its result; raises its own error, never a neighbour's."""
        if not self.running:
            raise BatcherStoppedError(f"{self.name} is not running")
        future: asyncio.Future[Completed[Out]] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Pending(item, time.perf_counter(), future))
        except asyncio.QueueFull:
            raise QueueFullError(f"{self.name} queue is full ({self._queue.maxsize} waiting)") from None
        self._observer.queue_depth(self._queue.qsize())
        try:
            # shield: a timeout must not cancel the future before we mark it abandoned ourselves.
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            raise DeadlineExceededError(f"no result from {self.name} within {timeout_s:.3g} s") from None
        finally:
            # Timed out or the caller went away: the worker skips cancelled items it has not started.
            future.cancel()

    async def _run(self) -> None:
        while True:
            batch = await self._collect()
            self._observer.queue_depth(self._queue.qsize())
            batch = [p for p in batch if not p.future.done()]
            if not batch:
                continue
            try:
                await self._process(batch)
            except Exception as exc:  # a bug here must not kill the queue: fail this batch, keep serving
                log.exception("%s: batch worker error", self.name)
                self._inflight = []
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(exc)

    async def _process(self, batch: list[_Pending[In, Out]]) -> None:
        started = time.perf_counter()
        for pending in batch:
            self._observer.queue_wait(started - pending.enqueued)
        self._inflight = batch
        loop = asyncio.get_running_loop()
        outcomes = await loop.run_in_executor(self._executor, self._call, [p.item for p in batch])
        seconds = time.perf_counter() - started
        # Left set if we are cancelled while the thread works, so that stop() can fail these items.
        self._inflight = []
        self._observer.batch_done(len(batch), seconds)
        for pending, outcome in zip(batch, outcomes, strict=True):
            if pending.future.done():
                continue
            if isinstance(outcome, BaseException):
                pending.future.set_exception(outcome)
            else:
                pending.future.set_result(Completed(outcome, started - pending.enqueued, seconds, len(batch)))

    async def _collect(self) -> list[_Pending[In, Out]]:
        first = await self._queue.get()
        batch = [first]
        self._inflight = batch  # items taken off the queue stay visible to stop() while we collect
        close_at = first.enqueued + self.max_wait_s
        while len(batch) < self.max_batch_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = close_at - time.perf_counter()
            if remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    batch.append(await self._queue.get())
            except TimeoutError:
                break
        return batch

    def _call(self, items: list[In]) -> list[Out | Exception]:
        """Run on the worker thread. If the batch fails, retry each item alone so only the culprit fails."""
        try:
            return list(self._checked(items))
        except Exception as exc:
            if len(items) == 1:
                return [exc]
            log.warning(
                "%s: batch of %d failed (%s: %s); retrying items one by one",
                self.name,
                len(items),
                type(exc).__name__,
                exc,
            )
        outcomes: list[Out | Exception] = []
        for item in items:
            try:
                outcomes.extend(self._checked([item]))
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    def _checked(self, items: list[In]) -> Sequence[Out]:
        outputs = self._fn(items)
        if len(outputs) != len(items):
            raise RuntimeError(f"{self.name}: batch function returned {len(outputs)} outputs for {len(items)} inputs")
        return outputs
