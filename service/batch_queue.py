"""A batcher's waiting items and how a batch is collected from them.

The queue holds submitted items in order; places can be reserved ahead (`admitted`: callers still
reading or decoding their upload). `collect` takes the next batch: it closes at a size, at a cost
budget (an item that would pass it is held over to open the next batch, so order is kept), once the
oldest item has waited `max_wait_s`, or at once when nothing is queued and nobody holds a reservation.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic

from service.batch_runner import In, Out


@dataclass
class Pending(Generic[In, Out]):
    item: In
    enqueued: float
    deadline: float  # perf_counter() time; math.inf for none
    future: asyncio.Future[Out] = field(repr=False)


class BatchQueue(Generic[In, Out]):
    def __init__(self, max_queue: int, max_wait_s: float, max_batch_cost: float, cost: Callable[[In], float]) -> None:
        self.max_queue = max_queue
        self.max_wait_s = max_wait_s
        self.max_batch_cost = max_batch_cost
        self.cost = cost
        self.admitted = 0  # places reserved (tickets handed out) and not yet used or released
        self._queue: asyncio.Queue[Pending[In, Out]] = asyncio.Queue(maxsize=max_queue)
        self._held: Pending[In, Out] | None = None  # taken off the queue but over budget: opens the next batch
        self._collecting: list[Pending[In, Out]] = []  # off the queue, in the batch being collected

    @property
    def depth(self) -> int:
        """Items waiting (the one held over included), not counting reservations."""
        return self._queue.qsize() + (self._held is not None)

    @property
    def full(self) -> bool:
        return self.depth + self.admitted >= self.max_queue

    def put(self, pending: Pending[In, Out]) -> None:
        self._queue.put_nowait(pending)

    def take_all(self) -> list[Pending[In, Out]]:
        """Empty the queue: every item waiting or being collected, for the caller to fail."""
        leftovers = self._collecting + [self._queue.get_nowait() for _ in range(self._queue.qsize())]
        if self._held is not None:
            leftovers.append(self._held)
        self._collecting, self._held = [], None
        return leftovers

    async def collect(self, size_for: Callable[[], int]) -> list[Pending[In, Out]]:
        """The next batch (waits for its first item however long it takes), of at most `size_for()` items,
        asked once the first item is in hand: the size may depend on what is queued behind it."""
        first, self._held = self._held or await self._queue.get(), None
        size = size_for()
        batch = [first]
        self._collecting = batch  # items taken off the queue stay visible to take_all while we collect
        close_at = first.enqueued + self.max_wait_s
        cost = self.cost(first.item)  # an item over the budget on its own still runs, alone
        while len(batch) < size:
            pending = await self._next(close_at)
            if pending is None:
                break
            cost += self.cost(pending.item)
            if cost > self.max_batch_cost:
                self._held = pending  # first in line for the next batch: order is kept
                break
            batch.append(pending)
        self._collecting = []
        return batch

    async def _next(self, close_at: float) -> Pending[In, Out] | None:
        """The next queued item, waiting for one until `close_at` at the latest, and only while another
        caller holds a reservation (reading or decoding its upload): waiting for nobody is pure latency."""
        if not self._queue.empty():
            return self._queue.get_nowait()
        if self.admitted == 0:
            return None
        remaining = close_at - time.perf_counter()
        if remaining <= 0:
            return None
        try:
            async with asyncio.timeout(remaining):
                return await self._queue.get()
        except TimeoutError:
            return None
