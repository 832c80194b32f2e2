"""The runtime a model runs with on this device, chosen by measurement at warm-up, at equal answers.

Candidates (`candidates`): every combination of the precisions the device supports (fp32; bf16 on a
CPU with native bf16, AVX512-BF16 or AMX; fp16 and bf16 on CUDA), NHWC or NCHW memory format, and
batch norm folded or not. Each is built from a copy of the fp32 model and
1. predicts the sample images (`sample_images`, coloured shapes at the model's usual input sizes); a
   candidate whose answers differ from fp32's beyond models/parity.py's tolerances is dropped;
2. is timed against fp32 in paired, interleaved rounds (each round runs every runtime once on the same
   images, in a shuffled order, so that a load change on a shared machine hits all of them alike), for
   `min_rounds` rounds; then the `FINALISTS` fastest of them are timed on, `FINALIST_ROUNDS` rounds
   whatever the budget and as many more as `budget_s` allows (on a CPU with native bf16 an R-CNN has 9
   candidates; each round of all 9 costs seconds);
3. `select` keeps the fastest finalist by its median paired ratio to fp32, only if `MIN_SPEEDUP` faster.

The outcome, with every candidate's figures, is a `RuntimeChoice` (logged and shown by the service); it
carries the winner's predictor, already prepared (an ONNX export or a fold is not done twice).
"""

from __future__ import annotations

import copy
import functools
import itertools
import logging
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import torch
from torch import Tensor, nn

from models import onnx_backend
from models.acceleration import Acceleration, AutocastScope, precisions
from models.parity import PARITY_QUERY, Parity, compare
from models.predictors import Predictor, Result, make_predictor
from models.shape_groups import PaddingStats

log = logging.getLogger(__name__)

MIN_SPEEDUP = 1.05  # below this a "win" is within the noise of a shared machine: fp32 stays
FINALISTS = 3  # candidates timed on after the first rounds (models/runtimes.py:_time_rounds)
# Rounds of the finalists however short the budget: an R-CNN's two first rounds of 9 candidates used the
# whole 10 s on a 2-core machine, and a choice made on two ratios was noise (bench run 5: folding alone
# "0.57x", the winner's "1.25x" served at 0.64x fp32's peak).
FINALIST_ROUNDS = 3
BASELINE = Acceleration()
# (height, width) of the sample images: a landscape and a portrait picture, as uploads come.
SAMPLE_SIZES = ((240, 320), (320, 240))

Timer = Callable[[Predictor, Sequence[Tensor]], float]  # seconds for one predict() of the images
_T = TypeVar("_T")


class Place(Protocol):
    """Where a measurement's forward passes run: `place(work)` runs `work` there and returns its result."""

    def __call__(self, work: Callable[[], _T]) -> _T: ...


def here(work: Callable[[], _T]) -> _T:
    return work()


@dataclass
class CandidateReport:
    acceleration: Acceleration
    parity: Parity | None = None  # None for fp32 itself
    ratios: list[float] = field(default_factory=list)  # per round: candidate time / fp32 time
    ms: list[float] = field(default_factory=list)  # per round, for all sample images
    finalist: bool = True  # False: dropped after the first rounds as slower than the finalists

    @property
    def speedup(self) -> float | None:
        return 1 / statistics.median(self.ratios) if self.ratios else None

    def to_json(self) -> dict[str, Any]:
        speedup = self.speedup
        return {"runtime": self.acceleration.name, "parity": self.parity.to_json() if self.parity else None,
                "ms": round(statistics.median(self.ms), 2) if self.ms else None,
                "speedup": round(speedup, 3) if speedup else None, "rounds": len(self.ratios),
                "finalist": self.finalist}  # fmt: skip


@dataclass
class RuntimeChoice:
    """What runs, why, and the figures it was chosen on."""

    task: str
    device: str
    acceleration: Acceleration
    mode: str  # "measured" (PRECISION=auto) or "fixed"
    reason: str
    candidates: list[CandidateReport] = field(default_factory=list)
    seconds: float = 0.0  # time the choice took
    compiled: bool = False
    compile_note: str = ""
    # The winning candidate's predictor, prepared and checked (None when fp32 stays): the service serves it.
    runner: Predictor | None = field(default=None, repr=False, compare=False)

    @property
    def precision(self) -> str:
        return self.acceleration.precision_label

    @property
    def backend(self) -> str:
        return self.acceleration.backend

    @property
    def memory_format(self) -> str:
        return "channels_last" if self.acceleration.channels_last else "contiguous"

    def to_json(self) -> dict[str, Any]:
        return {"runtime": self.acceleration.name, "precision": self.precision, "memory_format": self.memory_format,
                "fold_bn": self.acceleration.fold_bn, "backend": self.backend, "compiled": self.compiled,
                "mode": self.mode, "reason": self.reason, "seconds": round(self.seconds, 3),
                "compile": self.compile_note or None, "candidates": [c.to_json() for c in self.candidates]}  # fmt: skip


def candidates(device: torch.device, autocast_scopes: Sequence[AutocastScope] = ("model",)) -> list[Acceleration]:
    """Every runtime worth trying on `device`, fp32 (NCHW, unfolded) first; a reduced precision once per
    autocast scope asked for (`Predictor.measured_scopes`); on a CPU with ONNX Runtime installed,
    fp32 in ONNX Runtime too (it does its own layout choice and batch-norm fusion)."""
    found = []
    for precision, channels_last, fold in itertools.product(precisions(device), (False, True), (False, True)):
        scopes = autocast_scopes if precision != "fp32" else ("model",)
        found += [Acceleration(precision, channels_last, fold, autocast_scope=scope) for scope in scopes]
    if device.type == "cpu" and onnx_backend.available():
        found.append(Acceleration(backend="onnxruntime"))
    return found


def sample_images(sizes: Sequence[tuple[int, int]] = SAMPLE_SIZES, seed: int = 0) -> list[Tensor]:
    """Pictures like the ones the models are trained on: filled circles, squares and triangles on a
    gradient background. Drawn here (models/ imports no trainer), deterministic for a seed."""
    generator = torch.Generator().manual_seed(seed)
    images = []
    for height, width in sizes:
        y = torch.linspace(0, 1, height).view(height, 1).expand(height, width)
        x = torch.linspace(0, 1, width).view(1, width).expand(height, width)
        colours = torch.rand(2, 3, generator=generator) * 255
        image = colours[0].view(3, 1, 1) * (1 - y) + colours[1].view(3, 1, 1) * y
        for shape in range(4):
            cy, cx = torch.rand(2, generator=generator).tolist()
            r = 0.12 + 0.1 * float(torch.rand(1, generator=generator))
            ry, rx = r * min(height, width) / height, r * min(height, width) / width
            if shape % 3 == 0:  # circle
                inside = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1
            elif shape % 3 == 1:  # square
                inside = ((y - cy).abs() <= ry) & ((x - cx).abs() <= rx)
            else:  # triangle, apex up
                inside = (y <= cy + ry) & ((x - cx).abs() * ry <= (y - cy + ry) * rx / 2)
            image[:, inside] = (torch.rand(3, 1, generator=generator) * 255).expand(3, int(inside.sum()))
        images.append(image.round().clamp(0, 255).to(torch.uint8))
    return images


def variant(predictor: Predictor, acceleration: Acceleration) -> Predictor:
    """A second predictor running the same (fp32, unprepared) weights with `acceleration`."""
    if predictor.acceleration != BASELINE:
        raise ValueError(f"variants are made from an fp32 predictor, not one running {predictor.acceleration.name}")
    return make_predictor(copy.deepcopy(predictor.model), predictor.manifest, predictor.device, acceleration)


def wall_time(predictor: Predictor, images: Sequence[Tensor]) -> float:
    if predictor.device.type == "cuda":
        torch.cuda.synchronize(predictor.device)
    started = time.perf_counter()
    predictor.predict(images, [PARITY_QUERY] * len(images))
    if predictor.device.type == "cuda":
        torch.cuda.synchronize(predictor.device)
    return time.perf_counter() - started


def select(reports: Sequence[CandidateReport], min_speedup: float = MIN_SPEEDUP) -> tuple[Acceleration, str]:
    """The fastest candidate that answers as fp32 does and beats it by `min_speedup`; else fp32. Pure logic."""
    eligible = [r for r in reports if r.acceleration != BASELINE and r.parity is not None and r.parity.ok
                and r.speedup is not None and r.finalist]  # fmt: skip
    if not eligible:
        return BASELINE, "no other runtime answers as fp32 does" if len(reports) > 1 else "fp32 is the only runtime"
    best = max(eligible, key=lambda r: r.speedup or 0.0)
    speedup = best.speedup or 0.0
    if speedup < min_speedup:
        return BASELINE, f"fastest at equal answers, {best.acceleration.name}, is {speedup:.2f}x fp32 (< {min_speedup})"
    return best.acceleration, f"{speedup:.2f}x fp32 at equal answers"


def choose_runtime(
    predictor: Predictor,
    budget_s: float = 1.0,
    min_rounds: int = 2,
    accelerations: Sequence[Acceleration] | None = None,
    images: Sequence[Tensor] | None = None,
    timer: Timer = wall_time,
    batch_size: int = 1,
    place: Place = here,
) -> RuntimeChoice:
    """Measure the candidates on `predictor`'s device: answers on `images`, times on batches of `batch_size`
    copies of each (which runtime wins depends on the batch: ONNX Runtime gains most on single images,
    NHWC and bf16 on larger batches). The predictor itself is left as it is (fp32, its padding counters
    untouched): it may be serving meanwhile, on another thread. Every forward pass runs through `place`
    (the service: on its inference thread, between batches, so that the timings see what batches see;
    candidates are prepared where this function runs)."""
    started = time.perf_counter()
    predictor = twin(predictor)
    images = list(images if images is not None else sample_images())
    batches = [[image] * max(1, batch_size) for image in images]  # a batch per image's shape
    queries = [PARITY_QUERY] * len(images)
    reference = place(lambda: predictor.predict(images, queries))  # also its warm-up for these shapes
    reports = [CandidateReport(BASELINE)]
    runners: list[Predictor] = [predictor]
    if accelerations is None:
        accelerations = candidates(predictor.device, predictor.measured_scopes())
    for acceleration in accelerations:
        if acceleration == BASELINE:
            continue
        report, runner = _try(predictor, acceleration, images, reference, place)
        reports.append(report)
        if runner is not None:
            runners.append(runner)
    timed = [r for r in reports if r.parity is None or r.parity.ok]

    def time_batches(runner: Predictor) -> float:
        # One placed pass per batch: a request arriving meanwhile waits behind one batch's pass at most.
        return sum(place(functools.partial(timer, runner, batch)) for batch in batches)

    _time_rounds(runners, timed, time_batches, started + budget_s, min_rounds)
    acceleration, reason = select(reports)
    runner = next((r for r in runners[1:] if r.acceleration == acceleration), None)
    choice = RuntimeChoice(predictor.manifest.task, str(predictor.device), acceleration, "measured", reason, reports,
                           time.perf_counter() - started, runner=runner)  # fmt: skip
    log.info("%s runtime on %s: %s (%s; %.2f s)", choice.task, choice.device, acceleration.name, reason, choice.seconds)
    for report in reports:
        log.info("  %s", report.to_json())
    return choice


def twin(predictor: Predictor, model: nn.Module | None = None) -> Predictor:
    """The predictor with padding counters of its own, and `model` if given (else its own, shared): the
    served predictor, whose counters are metrics, stays untouched by measurements."""
    copied = copy.copy(predictor)
    copied.model, copied.padding = model if model is not None else predictor.model, PaddingStats()
    return copied


def _try(
    predictor: Predictor, acceleration: Acceleration, images: list[Tensor], reference: list[Result], place: Place
) -> tuple[CandidateReport, Predictor | None]:
    try:
        runner = variant(predictor, acceleration)
        parity = compare(reference, place(lambda: runner.predict(images, [PARITY_QUERY] * len(images))))
    except Exception as exc:  # noqa: BLE001 (a runtime this torch build cannot run is no candidate, not a crash)
        log.warning("%s: runtime %s fails: %s", predictor.manifest.task, acceleration.name, exc)
        return CandidateReport(acceleration, Parity(problems=[f"fails: {exc}"])), None
    return CandidateReport(acceleration, parity), runner if parity.ok else None


def _time_rounds(
    runners: list[Predictor], reports: list[CandidateReport], timer: Callable[[Predictor], float], deadline: float,
    min_rounds: int,
) -> None:  # fmt: skip
    """Paired rounds after one untimed round: every runner once per round on the same images, in an order
    shuffled each round (a rotation would always run the same runner after the same one). After
    `min_rounds`, only fp32 and the `FINALISTS` fastest so far go on, for `FINALIST_ROUNDS` rounds at
    least: the budget buys rounds where the choice is close rather than more rounds of candidates
    already behind."""
    if len(runners) < 2:
        return
    for runner in runners:  # untimed: a batch of a new size makes oneDNN build its kernels first
        timer(runner)
    active = list(range(len(runners)))
    for round_index in itertools.count():
        if round_index >= min_rounds + FINALIST_ROUNDS and time.perf_counter() >= deadline:
            break
        if round_index == min_rounds:
            by_speed = sorted(active[1:], key=lambda k: statistics.median(reports[k].ratios))
            for k in by_speed[FINALISTS:]:
                reports[k].finalist = False
            active = [0, *by_speed[:FINALISTS]]
        seconds = {k: timer(runners[k]) for k in random.Random(round_index).sample(active, len(active))}
        for k in active:
            reports[k].ms.append(1000 * seconds[k])
            reports[k].ratios.append(seconds[k] / seconds[0])
