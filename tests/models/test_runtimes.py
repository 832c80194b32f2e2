"""Runtime selection: the pure choice (fake timings), the parity check and batch-norm folding (real tiny models)."""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

import models.runtimes as runtimes
from models import Detections, InstanceMasks, SemanticMap
from models.acceleration import Acceleration, cpu_flags, fold_batch_norms, precisions
from models.parity import PARITY_QUERY, Parity, compare
from models.predictors import Predictor
from models.registry import build_model
from models.runtimes import BASELINE, CandidateReport, choose_runtime, sample_images, select
from tests.conftest import tiny_predictor

CPU = torch.device("cpu")
FOLD = Acceleration(fold_bn=True)
NHWC = Acceleration(channels_last=True)
BF16 = Acceleration("bf16")
BF16_BACKBONE = Acceleration("bf16", autocast_scope="backbone")


def _report(acceleration: Acceleration, ratio: float, ok: bool = True) -> CandidateReport:
    parity = Parity(images=2, problems=[] if ok else ["label maps disagree"])
    return CandidateReport(acceleration, parity, ratios=[ratio] * 3, ms=[10 * ratio] * 3)


def test_select_takes_the_fastest_candidate_at_equal_answers() -> None:
    reports = [CandidateReport(BASELINE, None, [1.0] * 3), _report(FOLD, 0.8), _report(NHWC, 0.6)]
    chosen, reason = select(reports)
    assert chosen == NHWC
    assert "1.67x" in reason


def test_select_never_takes_a_candidate_that_answers_differently() -> None:
    reports = [CandidateReport(BASELINE, None, [1.0] * 3), _report(FOLD, 0.8), _report(NHWC, 0.3, ok=False)]
    assert select(reports)[0] == FOLD
    assert select(reports[:1] + reports[2:])[0] == BASELINE


def test_select_keeps_fp32_unless_the_win_passes_five_percent() -> None:
    reports = [CandidateReport(BASELINE, None, [1.0] * 3), _report(FOLD, 0.96), _report(NHWC, 1.2)]
    chosen, reason = select(reports)
    assert chosen == BASELINE
    assert "< 1.05" in reason
    assert select([*reports, _report(Acceleration("fp32", True, True), 1 / 1.06)])[0] == Acceleration(
        "fp32", True, True
    )


def test_speedup_is_the_median_of_paired_ratios() -> None:
    # One round disturbed by another process (ratio 3.0) does not decide.
    assert CandidateReport(NHWC, Parity(), ratios=[0.5, 3.0, 0.5]).speedup == 2.0


def test_bf16_is_a_cpu_candidate_only_with_native_support(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nflags : fpu avx2 avx512f avx512_bf16\n")
    assert {"avx512_bf16", "avx2"} <= cpu_flags(info)
    assert cpu_flags(tmp_path / "missing") == frozenset()
    monkeypatch.setattr("models.acceleration.native_cpu_bf16", lambda: False)
    assert precisions(CPU) == ["fp32"]
    assert {a.precision for a in runtimes.candidates(CPU)} == {"fp32"}
    monkeypatch.setattr("models.acceleration.native_cpu_bf16", lambda: True)
    assert precisions(CPU) == ["fp32", "bf16"]
    assert len([a for a in runtimes.candidates(CPU) if a.backend == "torch"]) == 8
    assert runtimes.candidates(CPU)[0] == BASELINE
    # An R-CNN also tries bf16 on its backbone alone: 4 fp32 + 4 bf16 + 4 bf16-backbone runtimes.
    rcnn = [a for a in runtimes.candidates(CPU, ("model", "backbone")) if a.backend == "torch"]
    assert len(rcnn) == 12
    assert {a.precision_label for a in rcnn} == {"fp32", "bf16", "bf16-backbone"}
    # What is measured: on a CPU an R-CNN's heads stay fp32 (whole-model bf16 cost accuracy on cross).
    assert tiny_predictor("instances").measured_scopes() == ("backbone",)
    assert tiny_predictor("segment").measured_scopes() == ("model",)


def test_only_the_finalists_are_timed_past_the_first_rounds() -> None:
    speed = {BASELINE: 1.0, FOLD: 0.9, NHWC: 0.5, BF16: 0.6, BF16_BACKBONE: 0.7, Acceleration("fp32", True, True): 1.2}
    reports = [CandidateReport(acceleration, None if acceleration == BASELINE else Parity()) for acceleration in speed]
    runners: Any = [SimpleNamespace(acceleration=acceleration) for acceleration in speed]
    runtimes._time_rounds(runners, reports, lambda runner: speed[runner.acceleration],
                          deadline=time.perf_counter() + 0.01, min_rounds=2)  # fmt: skip
    assert [r.acceleration for r in reports if r.finalist] == [BASELINE, NHWC, BF16, BF16_BACKBONE]
    assert [len(r.ratios) for r in reports if not r.finalist] == [2, 2]  # dropped after min_rounds
    assert all(len(r.ratios) >= 2 + runtimes.FINALIST_ROUNDS for r in reports if r.finalist)  # however short the budget
    assert select(reports)[0] == NHWC
    # A candidate dropped early is never chosen, whatever its first rounds said.
    reports[1].ratios, reports[1].parity = [0.1, 0.1], Parity()
    assert select(reports)[0] == NHWC


def test_bf16_backbone_autocasts_the_backbone_and_keeps_the_heads_fp32() -> None:
    predictor = tiny_predictor("instances")
    model: Any = predictor.model
    seen: dict[str, torch.dtype] = {}
    model.backbone.register_forward_hook(lambda m, i, out: seen.update(backbone=next(iter(out.values())).dtype))
    model.rpn.head.register_forward_hook(lambda m, i, out: seen.update(rpn=out[0][0].dtype))
    model.roi_heads.box_predictor.register_forward_hook(lambda m, i, out: seen.update(boxes=out[1].dtype))
    predictor.accelerate(BF16_BACKBONE)
    predictor.predict(sample_images())
    assert seen == {"backbone": torch.bfloat16, "rpn": torch.float32, "boxes": torch.float32}
    assert predictor.acceleration.name == "bf16-backbone"
    predictor.accelerate(BF16)  # the whole forward pass, heads included
    predictor.predict(sample_images())
    assert seen == {"backbone": torch.bfloat16, "rpn": torch.bfloat16, "boxes": torch.bfloat16}
    with pytest.raises(ValueError, match="backbone alone"):  # an FCN is all backbone: no such runtime
        tiny_predictor("segment").accelerate(BF16_BACKBONE)


@pytest.mark.parametrize("task", ["segment", "detect"])
def test_choose_runtime_with_fake_timings_takes_the_fast_candidate(task: str) -> None:
    predictor = tiny_predictor(task)

    def timer(runner: Predictor, images: object) -> float:  # channels_last "twice as fast"
        return 0.5 if runner.acceleration.channels_last else 1.0

    choice = choose_runtime(predictor, budget_s=0, accelerations=[BASELINE, FOLD, NHWC], timer=timer)
    assert choice.acceleration == NHWC
    assert choice.precision == "fp32"
    assert choice.memory_format == "channels_last"
    assert [c.speedup for c in choice.candidates] == [1.0, 1.0, 2.0]
    # min_rounds, then the finalists' own rounds (all are finalists here), budget spent
    assert all(len(c.ratios) == 2 + runtimes.FINALIST_ROUNDS for c in choice.candidates)
    assert predictor.acceleration == BASELINE  # measuring leaves the predictor as it was
    assert choice.to_json()["candidates"][2]["parity"]["ok"] is True


def test_the_choice_carries_the_winner_prepared_and_the_served_predictor_adopts_it() -> None:
    predictor = tiny_predictor("detect")
    choice = choose_runtime(predictor, budget_s=0, accelerations=[FOLD, NHWC],
                            timer=lambda runner, images: 0.5 if runner.acceleration == FOLD else 1.0)  # fmt: skip
    assert choice.acceleration == FOLD
    assert choice.runner is not None
    assert choice.runner.acceleration == FOLD
    assert not any(isinstance(m, nn.BatchNorm2d) for m in choice.runner.model.backbone.modules())
    assert predictor.padding.forwards == 0  # the served predictor's counters (metrics) are untouched
    images = sample_images()
    expected = choice.runner.predict(images, [PARITY_QUERY] * 2)
    predictor.adopt(choice.runner)  # no second preparation: the very network the measurement built
    assert predictor.model is choice.runner.model
    assert predictor.acceleration == FOLD
    assert compare(expected, predictor.predict(images, [PARITY_QUERY] * 2)).ok
    with pytest.raises(ValueError, match="same model"):
        predictor.adopt(tiny_predictor("segment"))


def test_fp32_staying_carries_no_runner() -> None:
    choice = choose_runtime(tiny_predictor("segment"), budget_s=0, accelerations=[NHWC],
                            timer=lambda runner, images: 1.0)  # fmt: skip
    assert choice.acceleration == BASELINE
    assert choice.runner is None


def test_choose_runtime_drops_a_faster_candidate_whose_answers_differ(monkeypatch: pytest.MonkeyPatch) -> None:
    predictor, other = tiny_predictor("segment"), tiny_predictor("segment")
    fcn: Any = other.model
    scorer = fcn.head32[-1]
    with torch.no_grad():  # as a wrong kernel would: class 2 scores far higher everywhere
        scorer.bias[2] += 4.0
    real_variant = runtimes.variant

    def variant(base: Predictor, acceleration: Acceleration) -> Predictor:
        # The NHWC candidate runs other weights: as a broken kernel would, it answers differently.
        return real_variant(other if acceleration.channels_last else base, acceleration)

    monkeypatch.setattr(runtimes, "variant", variant)
    choice = choose_runtime(predictor, budget_s=0, accelerations=[FOLD, NHWC],
                            timer=lambda runner, images: 0.1 if runner.acceleration.channels_last else 1.0)  # fmt: skip
    bad = choice.candidates[2]
    assert bad.parity is not None
    assert not bad.parity.ok
    assert bad.ratios == []
    assert "label maps agree" in bad.parity.problems[0]
    assert choice.acceleration == BASELINE  # folding alone was not faster by the fake clock


@pytest.mark.parametrize("task", ["segment", "detect", "instances"])
def test_folded_and_nhwc_models_answer_as_fp32(task: str) -> None:
    predictor = tiny_predictor(task)
    images = sample_images()
    reference = predictor.predict(images, [PARITY_QUERY] * 2)
    folded = runtimes.variant(predictor, Acceleration("fp32", channels_last=True, fold_bn=True))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.model.modules())
    kernels = [p for p in folded.model.parameters() if p.ndim == 4 and p.shape[-1] > 1]
    assert kernels
    assert all(k.is_contiguous(memory_format=torch.channels_last) for k in kernels)
    parity = compare(reference, folded.predict(images, [PARITY_QUERY] * 2))
    assert parity.ok, parity.problems


def test_fold_batch_norms_changes_nothing_where_nothing_follows_a_convolution() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    assert fold_batch_norms(model) is model
    x = torch.randn(2, 3, 16, 16)
    conv_bn = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)).eval()
    norm = conv_bn[1]
    assert isinstance(norm, nn.BatchNorm2d)
    assert norm.running_mean is not None
    norm.running_mean.uniform_(-1, 1)
    folded = fold_batch_norms(conv_bn)
    assert torch.allclose(folded(x), conv_bn(x), atol=1e-5)


@pytest.mark.parametrize("arch", ["fcn_resnet50", "fasterrcnn_mobilenet_v3_large_320_fpn"])
def test_fold_batch_norms_folds_torchvision_architectures_by_structure(arch: str) -> None:
    task = "segment" if arch.startswith("fcn") else "detect"
    model = build_model(task, arch, 4).eval()
    torch.manual_seed(0)
    for module in model.modules():  # statistics a trained model would have, not the identity of a new one
        if isinstance(module, nn.BatchNorm2d | FrozenBatchNorm2d) and module.running_mean is not None:
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    norms = sum(isinstance(m, nn.BatchNorm2d | FrozenBatchNorm2d) for m in model.modules())
    x = torch.rand(1, 3, 96, 128)
    with torch.inference_mode():
        reference = model(x)["out"] if task == "segment" else model.backbone(x)
        folded = fold_batch_norms(copy.deepcopy(model))
        left = sum(isinstance(m, nn.BatchNorm2d | FrozenBatchNorm2d) for m in folded.modules())
        assert norms > 20
        assert left == 0
        if task == "segment":
            assert torch.allclose(folded(x)["out"], reference, atol=1e-3, rtol=1e-3)
        else:
            for name, tensor in folded.backbone(x).items():
                assert torch.allclose(tensor, reference[name], atol=1e-3, rtol=1e-3), name


def _detections(boxes: list[list[float]], scores: list[float], labels: list[int]) -> Detections:
    return Detections(torch.tensor(boxes), torch.tensor(labels), torch.tensor(scores))


def test_detection_parity_tolerances() -> None:
    ref = _detections([[10, 10, 50, 50], [60, 60, 90, 100]], [0.9, 0.52], [1, 2])
    assert compare([ref], [_detections([[11, 9, 52, 50], [60, 60, 90, 100]], [0.88, 0.48], [1, 2])]).ok
    moved = compare([ref], [_detections([[15, 10, 50, 50], [60, 60, 90, 100]], [0.9, 0.52], [1, 2])])
    assert not moved.ok
    assert moved.unmatched == 2  # missing one way, extra the other
    assert "px off" in moved.problems[0]
    assert not compare([ref], [_detections([[10, 10, 50, 50], [60, 60, 90, 100]], [0.9, 0.52], [1, 3])]).ok
    assert not compare([ref], [_detections([[10, 10, 50, 50], [60, 60, 90, 100]], [0.8, 0.52], [1, 2])]).ok
    extra = _detections([[10, 10, 50, 50], [60, 60, 90, 100], [0, 0, 5, 5]], [0.9, 0.52, 0.7], [1, 2, 1])
    assert not compare([ref], [extra]).ok  # a confident detection fp32 does not have


def test_mask_and_label_map_parity_tolerances() -> None:
    def masks(probs: torch.Tensor) -> InstanceMasks:
        return InstanceMasks(probs, torch.tensor([[0.0, 0.0, 28.0, 28.0]]), (32, 32))

    ref = dataclasses.replace(_detections([[0, 0, 28, 28]], [0.9], [1]), masks=masks(torch.ones(1, 28, 28)))
    half = torch.ones(1, 28, 28)
    half[:, :, 14:] = 0
    cand = dataclasses.replace(ref, masks=masks(half))
    assert compare([ref], [ref]).ok
    assert not compare([ref], [cand]).ok
    assert compare([ref], [cand]).mask_iou < 0.6
    labels = torch.zeros(100, 100, dtype=torch.uint8)
    nearly = labels.clone()
    nearly[0, :50] = 1  # 0.5 % of pixels
    assert compare([SemanticMap(labels)], [SemanticMap(nearly)]).ok
    nearly[1:3] = 1
    assert not compare([SemanticMap(labels)], [SemanticMap(nearly)]).ok


def test_accelerate_switches_memory_format_both_ways() -> None:
    predictor = tiny_predictor("segment")
    predictor.accelerate(NHWC)
    weight = next(p for p in predictor.model.parameters() if p.ndim == 4)
    assert weight.is_contiguous(memory_format=torch.channels_last)
    assert predictor.channels_last
    predictor.accelerate(BASELINE)
    weight = next(p for p in predictor.model.parameters() if p.ndim == 4)
    assert weight.is_contiguous()
    assert not predictor.channels_last
