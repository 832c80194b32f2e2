"""torch.compile for a served model, kept only where it answers as eager does and is faster.

The FCN is compiled whole, the R-CNNs' backbone and FPN only (the RPN and RoI heads are data-dependent
Python that dynamo would break into many graphs). Shapes are symbolic (`dynamic=True`) from the first
call: mixed upload sizes and batch sizes reuse one graph instead of compiling one per shape, so the
recompiles are bounded (tests/models/test_compiling.py counts them). The first call compiles: on a CPU
with inductor that takes tens of seconds to minutes, so the service does it in the background.
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any, cast

import torch
from torch import nn

from models.parity import PARITY_QUERY, compare
from models.predictors import Predictor
from models.runtimes import MIN_SPEEDUP, sample_images, twin, wall_time


def compiled_model(predictor: Predictor, backend: str = "inductor") -> nn.Module:
    """A compiled copy of the predictor's (prepared) model; the predictor itself is untouched."""
    model: Any = copy.deepcopy(predictor.model)
    if predictor.task == "segment":
        compiled: Any = torch.compile(model, backend=backend, dynamic=True)  # an OptimizedModule
        return cast(nn.Module, compiled)
    model.backbone = torch.compile(model.backbone, backend=backend, dynamic=True)
    return cast(nn.Module, model)


def try_compile(predictor: Predictor, backend: str = "inductor", rounds: int = 5) -> tuple[nn.Module | None, str]:
    """Compile, check parity on the sample images, time paired rounds; the compiled model if it wins, and why."""
    images = sample_images()
    eager = twin(predictor, predictor.model)
    reference = eager.predict(images, [PARITY_QUERY] * len(images))
    started = time.perf_counter()
    fast = twin(predictor, compiled_model(predictor, backend))
    parity = compare(reference, fast.predict(images, [PARITY_QUERY] * len(images)))
    compile_s = time.perf_counter() - started
    if not parity.ok:
        return None, f"compiled in {compile_s:.1f} s, answers differ: {parity.problems[0]}"
    ratios = []
    for k in range(rounds):
        pair = (eager, fast) if k % 2 == 0 else (fast, eager)
        first, second = (wall_time(p, images) for p in pair)
        ratios.append(second / first if k % 2 == 0 else first / second)
    speedup = 1 / statistics.median(ratios)
    note = f"compiled in {compile_s:.1f} s, {speedup:.2f}x eager"
    return (fast.model, note) if speedup >= MIN_SPEEDUP else (None, f"{note} (< {MIN_SPEEDUP}): eager kept")
