"""Runtime selection on a GPU: run by bench/gpu_check.sh on a CUDA machine, skipped elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models import load_predictor
from models.acceleration import precisions
from models.compiling import try_compile
from models.runtimes import candidates, choose_runtime

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
CUDA = torch.device("cuda")


def test_cuda_candidates_include_half_precisions() -> None:
    assert precisions(CUDA)[:2] == ["fp32", "fp16"]
    assert {a.precision for a in candidates(CUDA)} >= {"fp32", "fp16"}


@pytest.mark.parametrize("task", ["segment", "detect", "instances"])
def test_choose_runtime_on_cuda_checks_parity_and_times_every_candidate(random_store: Path, task: str) -> None:
    predictor = load_predictor(random_store, task, CUDA)
    choice = choose_runtime(predictor, budget_s=1.0)
    print(task, choice.to_json())  # the figures, for gpu_tests.log
    assert choice.device.startswith("cuda")
    assert len(choice.candidates) == len(candidates(CUDA, predictor.measured_scopes()))
    chosen = next(c for c in choice.candidates if c.acceleration == choice.acceleration)
    assert chosen.parity is None or chosen.parity.ok
    predictor.accelerate(choice.acceleration)
    assert len(predictor.predict([torch.zeros(3, 200, 300, dtype=torch.uint8)])) == 1


def test_compiling_the_fcn_on_cuda(random_store: Path) -> None:
    predictor = load_predictor(random_store, "segment", CUDA)
    model, note = try_compile(predictor)
    print("compile:", note)
    assert "compiled in" in note
    assert (model is None) == ("eager kept" in note or "differ" in note)
