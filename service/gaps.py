"""The gaps between batches: where a runtime measurement's forward passes run while the service serves.

A measurement (RUNTIME_SELECTION=background, or a reload's with PRECISION=auto) times its candidates on
the inference thread, where batches run, so that its timings see what a batch will see (models/runtimes.py
places every pass through a `Place`). Placed as soon as asked, its passes took most of that thread: with
two replicas measuring on two cores under six clients, a batch waited behind 3-4 s passes back to back,
the wait estimates grew until admission refused most requests (429 queue_too_slow) and queued ones passed
their deadline (504). Requests go first here: a pass waits while any batch that shares the thread is
queued, being prepared or running, and under load that never lets up it waits at most `patience` times
its predecessor's duration after that one ended, so the measurement keeps to about 1 / (1 + patience) of
the thread and still ends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TypeVar

_T = TypeVar("_T")

PATIENCE = 3.0  # under steady load: a pass after three times its predecessor's duration of batches
FIRST_PASS_S = 1.0  # what the first pass's predecessor is taken to have lasted (the bound of its wait)
POLL_S = 0.005  # how often a waiting pass looks for a gap (the thread asking is the reload thread)


class BetweenBatches:
    """A `models.runtimes.Place` that runs work on `executor` (the inference thread) when `busy()` says no
    batch is waiting or running, or once it has waited its turn (see the module's docstring)."""

    def __init__(self, executor: Executor, busy: Callable[[], bool], patience: float = PATIENCE) -> None:
        self.executor, self.busy, self.patience = executor, busy, patience
        self._lock = threading.Lock()  # passes are placed one at a time: their turns follow each other
        self._last_ended = time.perf_counter()  # when the previous pass ended on the thread
        self._last_s = FIRST_PASS_S  # and how long it ran there

    def __call__(self, work: Callable[[], _T]) -> _T:
        with self._lock:
            self._wait_for_gap()
            return self.executor.submit(self._timed, work).result()

    def _wait_for_gap(self) -> None:
        turn = self._last_ended + self.patience * self._last_s
        while self.busy() and time.perf_counter() < turn:
            time.sleep(POLL_S)

    def _timed(self, work: Callable[[], _T]) -> _T:
        started = time.perf_counter()
        try:
            return work()
        finally:
            self._last_ended = time.perf_counter()
            self._last_s = self._last_ended - started
