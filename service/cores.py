"""How many cores this process may compute with: its CPU affinity, capped by its cgroup's CPU quota.

torch sizes its OpenMP team by the cores it can be scheduled on and ignores CPU quotas. A container
started with `--cpus 2` (or a pod with a CPU limit of 2) on a 64-core host would then run teams of 64
spinning threads on two cores' worth of time, and be throttled. The quota is read where the kernel
shows a container its own cgroup: cgroup v2's `cpu.max`, or cgroup v1's CFS quota and period.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

CGROUP = Path("/sys/fs/cgroup")


def available_cores(cgroup: Path | None = None) -> int:
    """The cores this process may use: its affinity, capped by the cgroup CPU quota rounded up."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cpu_quota(cgroup)
    return max(1, min(cores, math.ceil(quota))) if quota is not None else cores


def cpu_quota(cgroup: Path | None = None) -> float | None:
    """CPU time per period allowed to this cgroup, in cores; None when there is no quota (or no cgroup)."""
    cgroup = cgroup or CGROUP
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]  # cgroup v2: "max 100000" or "200000 100000"
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        pass
    for folder in (cgroup / "cpu", cgroup / "cpu,cpuacct"):  # cgroup v1: quota -1 means none
        try:
            quota_us = int((folder / "cpu.cfs_quota_us").read_text())
            period_us = int((folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    return None


def torch_cores(configured: int, available: int) -> int:
    """The cores the inference threads share: CPU_THREADS when set; else the `available_cores()` when
    torch's default is more (a CPU quota); else 0, which leaves torch's default alone."""
    if configured:
        return configured
    return available if available < torch.get_num_threads() else 0
