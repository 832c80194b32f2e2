"""The threads the service computes on, and their OpenMP teams.

On a CPU every model shares `INFERENCE_WORKERS` inference threads, which split the cores between their
OpenMP teams; on a GPU each model has threads of its own. Reloads (and the background runtime
measurement) load and prepare on a thread of their own with a team of one, one per reload, ended
afterwards (`Runtime.reload_worker`: an idle thread's team slows every other team); their forward passes
run on the inference thread, between batches.
Threads are named for the OS too, so `top -H` and bench/cpuuse.py can tell where the CPU goes.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

_PR_SET_NAME = 15  # prctl option, from <linux/prctl.h>


def inference_threads(
    tasks: Sequence[str], device: torch.device, workers: int = 1, cpu_threads: int = 0
) -> dict[str, ThreadPoolExecutor]:
    """The threads batches run on: on a CPU `workers` threads shared by every model, splitting the cores
    (`cpu_threads` of them, or torch's default) between them; on a GPU `workers` threads per model."""
    if device.type == "cpu":
        return dict.fromkeys(tasks, _inference_threads("inference", workers, _team(workers, cpu_threads)))
    return {task: _inference_threads(f"infer-{task}", workers) for task in tasks}


def reload_thread(device: torch.device) -> ThreadPoolExecutor:
    """The thread reloads (and the runtime measurement) load and prepare models on, beside the batches. On a
    CPU its OpenMP team is one thread: with a second team, even an idle one, more threads than cores
    belong to teams and libgomp stops spinning for all of them (torch's forward passes ran 1.45-1.6x
    slower, ONNX Runtime's 0.9-1.2x: bench/omp_teams.py). A runtime measurement's forward passes run on
    the inference thread (`Runtime.on_inference`)."""
    if device.type != "cpu":
        return _inference_threads("reload", 1)
    default = torch.get_num_threads()
    executor = _inference_threads("reload", 1, 1)
    # Its thread starts now and takes its team of one (torch sets a thread's team at its first call);
    # torch.set_num_threads also set the default of threads made later (and none before): restore it.
    executor.submit(torch.get_num_threads).result()
    torch.set_num_threads(default)
    return executor


def _team(workers: int, cpu_threads: int) -> int | None:
    """Threads per inference thread's OpenMP team on a CPU; None: torch's default, untouched."""
    # torch's default is the physical cores; one worker on all of them keeps torch's settings untouched.
    cores = cpu_threads or torch.get_num_threads()
    return max(1, cores // workers) if workers > 1 or cpu_threads else None


def _inference_threads(name: str, workers: int, torch_threads: int | None = None) -> ThreadPoolExecutor:
    def start() -> None:
        name_os_thread(name)
        if torch_threads is not None:
            torch.set_num_threads(torch_threads)  # this thread's OpenMP team size

    return ThreadPoolExecutor(workers, thread_name_prefix=name, initializer=start)


def name_os_thread(name: str) -> None:
    """Name the calling thread for the OS too (top -H, /proc/PID/task/*/comm), so that an operator, and
    bench/compare.py, can tell where the CPU goes; the OpenMP and CUDA threads it starts inherit the name.
    Linux only, best effort: Python 3.11 names threads for itself alone."""
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)
