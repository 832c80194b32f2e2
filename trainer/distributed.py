"""Data-parallel training through the standard launcher: `torchrun --nproc_per_node=N -m trainer train ...`.

torchrun tells each process its rank through the environment (RANK, WORLD_SIZE, LOCAL_RANK); without it
the trainer runs as a single process and nothing here does anything.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

log = logging.getLogger(__name__)

# Rank 0 evaluates and exports while the others wait at a barrier: allow for a long val split.
BARRIER_TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class Processes:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, checkpoints, evaluates and writes the store."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def all_finite(self, loss: torch.Tensor) -> bool:
        """Whether every rank's loss is finite. Each rank asks before its backward pass, so a non-finite loss
        on one rank stops them all at once, instead of leaving the others in DDP's gradient all-reduce until
        the timeout."""
        finite = torch.isfinite(loss.detach()).all()
        if not self.distributed:
            return bool(finite)
        flag = finite.to(torch.int32).reshape(1)
        if self.device.type == "cuda":
            flag = flag.to(self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def start(device: torch.device) -> Processes:
    """Join the torchrun process group (gloo on CPU, nccl on CUDA), or run alone when not launched by it."""
    if not dist.is_torchelastic_launched():
        return Processes(device=device)
    if device.type == "cuda":
        # One GPU per process; `--device cuda` means "this process's GPU".
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=BARRIER_TIMEOUT)
    procs = Processes(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device)
    log.info("rank %d of %d on %s (%s)", procs.rank, procs.world_size, device, backend)
    return procs


def wrap(model: nn.Module, procs: Processes) -> nn.Module:
    """The module to train: DDP averages gradients across ranks (and starts everyone from rank 0's weights)."""
    if not procs.distributed:
        return model
    device_ids = [procs.device.index] if procs.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)
