"""Training checkpoints: everything a run needs to continue as if it had never stopped.

The file holds only tensors and plain Python values, so `torch.load(weights_only=True)` reads it back:
no pickled objects, not even numpy's RNG state (stored as a list of ints).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class TrainState:
    """What changes while training; `model` is the bare module (never the DDP wrapper)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None = None
    step: int = 0
    seconds: float = 0.0  # training time so far, over every resumed segment


def rng_state() -> dict[str, Any]:
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = numpy_state["state"]["key"].tolist()  # plain ints for weights_only
    state: dict[str, Any] = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    key = np.array(numpy_state["state"]["key"], dtype=np.uint32)
    np.random.set_state({**numpy_state, "state": {**numpy_state["state"], "key": key}})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: TrainState, world_size: int = 1) -> None:
    """Write atomically (temp file, then rename): a kill mid-write leaves the previous checkpoint intact."""
    payload = {
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "schedule": state.schedule.state_dict(),
        "scaler": state.scaler.state_dict() if state.scaler is not None else None,
        "step": state.step,
        "seconds": state.seconds,
        "world_size": world_size,
        # Under DDP this is rank 0's; other ranks resume from it too (exact replay is promised on one CPU).
        "rng": rng_state(),
    }
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, state: TrainState) -> None:
    """Restore `state` and the RNGs in place from a checkpoint written by `save_checkpoint`."""
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    state.model.load_state_dict(payload["model"])
    state.optimizer.load_state_dict(payload["optimizer"])
    state.schedule.load_state_dict(payload["schedule"])
    if state.scaler is not None and payload["scaler"] is not None:
        state.scaler.load_state_dict(payload["scaler"])
    state.step = int(payload["step"])
    state.seconds = float(payload["seconds"])
    set_rng_state(payload["rng"])
