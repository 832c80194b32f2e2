"""`--resume`: a run interrupted after its checkpoint and resumed ends with the same weights, bit for bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models import load_entry, read_manifest
from trainer.checkpoint import CHECKPOINT_FILE
from trainer.cli import main
from trainer.runlog import METRICS_FILE, Reporter, read_metrics


class Interrupted(Exception):
    """Stands in for a kill: raised right after a step, so nothing after it runs."""


def _argv(task: str, data: Path, store: Path, run_dir: Path) -> list[str]:
    # 6 images in batches of 2: 3 steps an epoch. The checkpoint at step 4 sits inside the second epoch, and
    # the resumed run crosses into the third.
    return ["train", "--task", task, "--data", str(data), "--out", str(store), "--preset", "smoke", "--steps", "7",
            "--batch-size", "2", "--checkpoint-every", "4", "--run-dir", str(run_dir), "--no-progress"]  # fmt: skip


@pytest.mark.parametrize("task", ["detect", "segment"])
def test_resumed_run_matches_an_uninterrupted_one(
    tiny_shapes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, task: str
) -> None:
    assert main(_argv(task, tiny_shapes, tmp_path / "straight", tmp_path / "run_a")) == 0

    report = Reporter.__call__

    def killed_after_step_5(self: Reporter, state: object, record: dict[str, float]) -> None:
        report(self, state, record)  # type: ignore[arg-type]
        if record["step"] == 5:
            raise Interrupted

    run_b = tmp_path / "run_b"
    with monkeypatch.context() as patch:
        patch.setattr(Reporter, "__call__", killed_after_step_5)
        with pytest.raises(Interrupted):
            main(_argv(task, tiny_shapes, tmp_path / "resumed", run_b))
    assert not (tmp_path / "resumed" / task).exists()
    assert torch.load(run_b / CHECKPOINT_FILE, weights_only=True)["step"] == 4  # step 5 is lost
    assert [row["step"] for row in read_metrics(run_b / METRICS_FILE)] == [1, 2, 3, 4, 5]

    # Mid-epoch (epoch 1, batch 1 of 3), with nothing but the run folder to go on.
    assert main(["train", "--resume", str(run_b), "--no-progress"]) == 0

    _, straight = load_entry(tmp_path / "straight", task)
    _, resumed = load_entry(tmp_path / "resumed", task)
    assert straight.keys() == resumed.keys()
    different = [name for name in straight if not torch.equal(straight[name], resumed[name])]
    assert different == []
    # Step 5 is logged once, as retrained; every loss matches the uninterrupted run's.
    assert read_metrics(run_b / METRICS_FILE) == read_metrics(tmp_path / "run_a" / METRICS_FILE)
    assert read_manifest(tmp_path / "resumed", task).trained["steps"] == 7


def test_resume_refuses_settings_that_would_make_another_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert main(["train", "--resume", str(tmp_path), "--steps", "9", "--lr", "0.1"]) == 2
    assert "drop --steps, --lr" in caplog.text
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "not a run folder" in caplog.text
    assert main(["train", "--task", "detect"]) == 2
    assert "train needs --data, --out" in caplog.text
