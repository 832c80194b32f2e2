"""Loading and warming one model, with the runtime it will run on: the one path start-up and reload share.

`load_and_warm` loads a task's predictor, chooses its runtime (PRECISION=auto: measured on this device,
parity-checked, models/runtimes.py; else the fixed PRECISION) and runs its warm-up pass. Start-up runs
the two halves apart, `load` in the lifespan (a bad store fails start-up) and `warm` in the background
(so that /healthz answers meanwhile); a reload calls `load_and_warm` for the model it loads beside the
served one. Both run on the model's inference thread, as every torch computation does.

With COMPILE=true, `compile_in_background` then compiles a copy off the inference thread while the
eager model serves, and switches it in at a batch boundary only if it answers as eager does and is
faster (models/compiling.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, Protocol

import torch

from models import Acceleration, Manifest, Predictor
from models.runtimes import RuntimeChoice, choose_runtime
from service.settings import Settings

log = logging.getLogger(__name__)


class Warmable(Protocol):
    manifest: Manifest
    device: torch.device

    def warmup(self) -> None: ...


def load_and_warm(
    load: Callable[[str, torch.device], Any], task: str, device: torch.device, settings: Settings
) -> tuple[Any, RuntimeChoice]:
    """Load `task`'s model, choose its runtime and warm it up, on the calling (inference) thread."""
    predictor = load(task, device)
    return predictor, warm(predictor, settings)


def warm(predictor: Warmable, settings: Settings) -> RuntimeChoice:
    """Choose the runtime (in place: the same predictor object serves) and run the warm-up pass."""
    task, device = predictor.manifest.task, str(predictor.device)
    if settings.precision == "auto" and isinstance(predictor, Predictor):
        choice = choose_runtime(predictor, budget_s=settings.runtime_budget_s)
        predictor.accelerate(choice.acceleration)
    else:
        # A fixed PRECISION (applied when loading), or a predictor that is not ours to measure (a test double).
        acceleration = getattr(predictor, "acceleration", Acceleration())
        choice = RuntimeChoice(task, device, acceleration, "fixed", f"PRECISION={settings.precision}")
        log.info("%s runtime on %s: %s (fixed by PRECISION=%s)", task, device, acceleration.name, settings.precision)
    predictor.warmup()
    return choice


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
