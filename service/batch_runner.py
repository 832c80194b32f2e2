"""What the batching worker thread does with one batch, failures included (see batching.Batcher).

A batch that fails is not failed as a whole: errors of the `split_on` kinds (CUDA out-of-memory) halve
it until the halves fit, and any other error retries its items one by one, so that only the items
that fail alone get an error and their neighbours get their results.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")

log = logging.getLogger(__name__)


class BatchRunner(Generic[In, Out]):
    def __init__(
        self,
        fn: Callable[[list[In]], Sequence[Out]],
        *,
        name: str,
        split_on: tuple[type[Exception], ...] = (),
        on_split: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self._fn = fn
        self._split_on = split_on
        self._on_split = on_split or (lambda: None)

    def run(self, items: list[In]) -> list[Out | Exception]:
        """One outcome per item, in order: its output, or the exception it raised on its own."""
        outcome = self._attempt(items)
        if not isinstance(outcome, Exception):
            return list(outcome)
        if isinstance(outcome, self._split_on):
            return self._split(items, outcome)
        if len(items) == 1:
            return [outcome]
        log.warning(
            "%s: batch of %d failed (%s: %s); retrying items one by one",
            self.name,
            len(items),
            type(outcome).__name__,
            outcome,
        )
        return [self.run([item])[0] for item in items]

    def _split(self, items: list[In], error: Exception) -> list[Out | Exception]:
        # The traceback pins the failed frames and their tensors: drop it before freeing the cache, which
        # is why this runs here and not inside the `except` block that caught the error.
        error.__traceback__ = None
        self._on_split()
        if len(items) == 1:
            return [error]
        log.warning("%s: batch of %d ran out of memory (%s); halving it", self.name, len(items), error)
        del error
        middle = len(items) // 2
        return self.run(items[:middle]) + self.run(items[middle:])

    def _attempt(self, items: list[In]) -> Sequence[Out] | Exception:
        try:
            outputs = self._fn(items)
        except Exception as exc:
            return exc
        if len(outputs) != len(items):
            return RuntimeError(f"{self.name}: batch function returned {len(outputs)} outputs for {len(items)} inputs")
        return outputs
