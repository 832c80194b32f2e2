"""What a caller of the batching queue (batching.py) is handed: a place in the queue, or why not."""

from __future__ import annotations

from collections.abc import Callable


class QueueFullError(Exception):
    """The queue holds `max_queue` items already; the caller should retry after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineUnreachableError(QueueFullError):
    """The items ahead are estimated to take longer than the caller's deadline allows: refused at once,
    rather than queued only to fail late (or to be answered after the caller stopped caring)."""


class DeadlineExceededError(Exception):
    """The item was still waiting (queued or in its batch) when its deadline passed."""


class BatcherStoppedError(Exception):
    """The batcher is not running (not started yet, or shutting down)."""


class WorkerDiedError(BatcherStoppedError):
    """The worker task ended by itself (a bug, not a shutdown): nothing will be computed any more."""


class Ticket:
    """A place in the queue, held while the caller prepares its item; released unless `submit` uses it."""

    def __init__(self, release: Callable[[], None]) -> None:
        self._release: Callable[[], None] | None = release

    def use(self) -> None:
        release, self._release = self._release, None
        if release is None:
            raise RuntimeError("this ticket was used or released already")
        release()

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._release is not None:
            self.use()
