"""How long a batcher's newcomer will wait: moving averages of recent batches, and the guesses built on them.

The batcher records every batch it runs (its wait for a thread, its duration, its size); admission and
`Retry-After` ask these estimates, so the arithmetic of "how much work is ahead" reads on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Headroom on the wait estimate before refusing a deadline: batch times vary, and reading and decoding
# the upload come on top. Without it (bench/overload.py, 2x load, 1 s budget) 5.7 % of the admitted
# requests still missed their deadline.
MARGIN = 1.25


@dataclass
class LatencyEstimates:
    """Recent batch latencies of one batcher; every figure is 0 until a batch has run."""

    batch_s: float | None = None  # moving average of recent batch durations on the thread
    item_s: float | None = None  # ... and of batch seconds per item
    thread_wait_s: float | None = None  # ... and of a batch's wait for a thread (a shared executor)

    def record(self, waited_s: float, seconds: float, size: int) -> None:
        """A batch waited `waited_s` for its thread, then ran `size` items in `seconds`."""
        self.record_wait(waited_s)
        self.batch_s = _average(self.batch_s, seconds)
        self.item_s = _average(self.item_s, seconds / size)

    def record_wait(self, waited_s: float) -> None:
        """A batch's wait for its thread (also when every item of it expired meanwhile)."""
        self.thread_wait_s = _average(self.thread_wait_s, waited_s)

    def per_batch_s(self) -> float:
        """A batch's recent latency once handed over: the wait for the thread, then the batch itself."""
        return (self.thread_wait_s or 0.0) + (self.batch_s or 0.0)

    def remaining_s(self, submitted: float, started: float | None, now: float) -> float:
        """The rest of a batch handed over at `submitted` (and started at `started`, None while it waits)."""
        if started is None:
            return max(0.0, (self.thread_wait_s or 0.0) - (now - submitted)) + (self.batch_s or 0.0)
        return max(0.0, (self.batch_s or 0.0) - (now - started))

    def work_s(self, items: int, batch_size: int) -> float:
        """`items` waiting, in batches of `batch_size`: their seconds on the thread plus each batch's wait."""
        batches = math.ceil(items / batch_size)
        return items * (self.item_s or 0.0) + batches * (self.thread_wait_s or 0.0)

    def too_slow(self, wait_s: float, within_s: float | None) -> bool:
        """Whether a caller who can wait `within_s` should be refused, with `wait_s` of work ahead of it and a
        batch of its own to come. Nothing ahead: never too slow (the estimate could only be noise)."""
        return within_s is not None and wait_s > 0 and MARGIN * (wait_s + self.per_batch_s()) > within_s


def _average(previous: float | None, latest: float) -> float:
    """An exponential moving average that follows a change of load within a few batches."""
    return latest if previous is None else 0.8 * previous + 0.2 * latest
