"""Warming a model with the runtime it will run on: the one path start-up and reloads share.

`warm` chooses a loaded predictor's runtime (PRECISION=auto: measured on this device, parity-checked,
models/runtimes.py; else the fixed PRECISION) and runs its warm-up pass, on the thread that will run its
batches (start-up) or on a reload thread (a reload, while the old version serves). There, on a CPU, the
measurement's forward passes still run on the inference thread, between batches (`place`): a second
OpenMP team, even an idle one, makes libgomp stop spinning for all teams, which slowed torch's
runtimes far more than ONNX Runtime's and skewed the choice towards it (service/threads.py). The
warm-up pass stays on the reload thread: a slow one must not stall the batches.

With PRECISION=auto and RUNTIME_SELECTION=background (the default), start-up does not wait for the
measurement: `warm(..., measure=False)` warms fp32 and the model serves it (/readyz as soon as every model
is warm, as with a fixed precision); `measure` then runs on the reload thread (service/reload.py,
`Reloader.measure_runtimes`) and the winner is switched in at a batch boundary, as a reload is.

With COMPILE=true, `compile_in_background` then compiles a copy off the inference thread while the
eager model serves, and switches it in at a batch boundary only if it answers as eager does and is
faster (models/compiling.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Protocol

import torch

from models import Acceleration, Manifest, Predictor
from models.runtimes import Place, RuntimeChoice, choose_runtime, here
from service.settings import Settings

log = logging.getLogger(__name__)

PENDING = "pending"  # RuntimeChoice.mode while fp32 serves and the measurement has yet to run


class Warmable(Protocol):
    manifest: Manifest
    device: torch.device

    def warmup(self) -> None: ...


def warm(predictor: Warmable, settings: Settings, measure: bool = True, place: Place = here) -> RuntimeChoice:
    """Choose the runtime (in place: the same predictor object serves), the measurement's forward passes
    through `place` (models/runtimes.py), and run the warm-up pass. With `measure` false, PRECISION=auto
    warms fp32 and leaves the choice pending (`measure` makes it later)."""
    task, device = predictor.manifest.task, str(predictor.device)
    if settings.precision == "auto" and isinstance(predictor, Predictor):
        if measure:
            choice = _choose(predictor, settings, place)
            if choice.runner is not None:
                predictor.adopt(choice.runner)
                choice.runner = None  # the predictor now runs its network
        else:
            choice = RuntimeChoice(task, device, Acceleration(), PENDING, "fp32 serves while the runtimes are measured")
    else:
        # A fixed PRECISION (applied when loading), or a predictor that is not ours to measure (a test double).
        acceleration = getattr(predictor, "acceleration", Acceleration())
        choice = RuntimeChoice(task, device, acceleration, "fixed", f"PRECISION={settings.precision}")
        log.info("%s runtime on %s: %s (fixed by PRECISION=%s)", task, device, acceleration.name, settings.precision)
    predictor.warmup()  # here, not through `place`: a slow first pass (CUDA's is) must not stall the batches
    return choice


def timing_batch(settings: Settings) -> int:
    """Candidates are timed on batches like the ones the service runs under load: a full batch
    (MAX_BATCH_SIZE, at most 8) of mixed-size uploads runs as groups of similar shapes, about half each."""
    return max(1, min(settings.max_batch_size, 8) // 2)


def measure(predictor: Predictor, settings: Settings, place: Place = here) -> RuntimeChoice:
    """The measured choice for a serving fp32 predictor, which stays untouched; the winner, if another
    runtime wins, comes as `choice.runner`, warmed up and ready to be switched in."""
    choice = _choose(predictor, settings, place)
    if choice.runner is not None:
        choice.runner.warmup()
    return choice


def _choose(predictor: Predictor, settings: Settings, place: Place) -> RuntimeChoice:
    budget, batch = settings.runtime_budget_s, timing_batch(settings)
    return choose_runtime(predictor, budget_s=budget, batch_size=batch, place=place)


def compile_in_background(
    predictor: Warmable, choice: RuntimeChoice, executor: Executor, on_done: Callable[[RuntimeChoice], None]
) -> threading.Thread | None:
    """Compile a copy on a thread of its own; the switch runs on the inference thread, between batches."""
    if not isinstance(predictor, Predictor):
        return None
    from models.compiling import try_compile  # torch._dynamo is imported only when compiling is asked for

    def work() -> None:
        try:
            model, note = try_compile(predictor)
        except Exception as exc:  # noqa: BLE001 (a compile failure leaves eager serving: report, do not crash)
            log.exception("%s: compiling failed; eager keeps serving", predictor.manifest.task)
            model, note = None, f"failed: {exc}"
        choice.compile_note = note

        def switch() -> None:
            if model is not None:
                predictor.model = model
                choice.compiled = True
            log.info("%s compiled: %s (%s)", predictor.manifest.task, choice.compiled, note)
            on_done(choice)

        executor.submit(switch)

    thread = threading.Thread(target=work, name=f"compile-{predictor.manifest.task}", daemon=True)
    thread.start()
    return thread
