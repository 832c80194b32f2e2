"""What rank 0 records about a run, in its folder: `run.json` (the job), `metrics.csv` (one row per step),
TensorBoard scalars (if tensorboard is installed), `checkpoint.pt` and `loss.png` every few steps.
"""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from trainer.checkpoint import CHECKPOINT_FILE, TrainState, save_checkpoint
from trainer.plots import plot_losses

METRICS_FILE = "metrics.csv"
JOB_FILE = "run.json"


def default_run_dir(task: str, root: Path = Path("artifacts/runs")) -> Path:
    """`artifacts/runs/<task>-<UTC timestamp>`, with a suffix if that second is already taken."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = root / f"{task}-{stamp}"
    suffix = 1
    while path.exists():
        suffix += 1
        path = root / f"{task}-{stamp}-{suffix}"
    return path


class RunLog:
    """Per-step records: kept in memory (for the plots and the manifest), appended to CSV, sent to TensorBoard.

    Opening at `start_step > 0` (a resume) keeps the CSV rows up to that step and drops the rest: steps the
    interrupted run took after its last checkpoint are retrained, and logged again.
    """

    def __init__(self, run_dir: Path, start_step: int = 0) -> None:
        self.path = run_dir / METRICS_FILE
        self.history: list[dict[str, float]] = []
        if start_step > 0 and self.path.is_file():
            self.history = [row for row in read_metrics(self.path) if row["step"] <= start_step]
        self.columns: list[str] = list(self.history[0]) if self.history else []
        self._rewrite()
        self.tensorboard = _tensorboard_writer(run_dir / "tensorboard", start_step)

    def log(self, record: dict[str, float]) -> None:
        if not self.columns:
            self.columns = list(record)
            self._rewrite()
        self.history.append(record)
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, self.columns, extrasaction="ignore").writerow(record)
        if self.tensorboard is not None:
            step = int(record["step"])
            for key, value in record.items():
                if key != "step":
                    self.tensorboard.add_scalar(f"train/{key}", value, step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()

    def _rewrite(self) -> None:
        with self.path.open("w", newline="") as f:
            if self.columns:
                writer = csv.DictWriter(f, self.columns, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(self.history)


def read_metrics(path: Path) -> list[dict[str, float]]:
    with path.open(newline="") as f:
        return [{key: int(value) if key == "step" else float(value) for key, value in row.items()}
                for row in csv.DictReader(f)]  # fmt: skip


def _tensorboard_writer(folder: Path, start_step: int) -> Any:
    """A SummaryWriter when the optional `tensorboard` package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch ships the module, but it imports tensorboard itself
        return None
    # purge_step drops events a resumed run is about to log again.
    return SummaryWriter(str(folder), purge_step=start_step + 1 if start_step else None)


class Reporter:
    """Called after every step: logs it and moves the progress bar; every `checkpoint_every` steps, and after
    the last one, saves the checkpoint and redraws `loss.png`."""

    def __init__(
        self,
        run_dir: Path,
        desc: str,
        total_steps: int,
        checkpoint_every: int,
        start_step: int = 0,
        world_size: int = 1,
        progress: bool = True,
    ) -> None:
        self.run_dir = run_dir
        self.total_steps = total_steps
        self.checkpoint_every = checkpoint_every
        self.world_size = world_size
        self.runlog = RunLog(run_dir, start_step)
        self.bar = tqdm(total=total_steps, initial=start_step, desc=desc, unit="step", disable=not progress,
                        dynamic_ncols=True)  # fmt: skip

    @property
    def history(self) -> list[dict[str, float]]:
        return self.runlog.history

    def __call__(self, state: TrainState, record: dict[str, float]) -> None:
        self.runlog.log(record)  # under DDP: rank 0's own losses, not the average over ranks
        self.bar.update()
        self.bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.1e}")
        if state.step % self.checkpoint_every == 0 or state.step == self.total_steps:
            save_checkpoint(self.run_dir / CHECKPOINT_FILE, state, self.world_size)
            plot_losses(self.history, self.run_dir / "loss.png")

    def close(self) -> None:
        self.bar.close()
        self.runlog.close()
