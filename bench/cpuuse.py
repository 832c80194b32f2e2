"""Where a server's CPU goes: seconds used so far, read from /proc (Linux), per thread role or process tree.

The service names its inference threads for the OS ("inference", or "infer-TASK" on a GPU), and the
OpenMP and CUDA threads they start inherit the name, so its CPU splits three ways: the event loop (the
main thread: HTTP, FastAPI, the queues), inference (forward passes and building answers) and the rest
(mostly the image-decoding pool). Read before and after a load point, the differences per request show
which part of the host path a figure is paying for.
"""

from __future__ import annotations

import os
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(stat_file: Path) -> list[str]:
    """/proc stat fields from the third on (state, ppid, ...): after "pid (comm) ", whatever comm holds."""
    stat = stat_file.read_text()
    return stat[stat.rindex(")") + 2 :].split()


def _cpu_seconds(fields: list[str]) -> float:
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


def service_cpu(pid: int) -> dict[str, float]:
    """The service process's CPU seconds by role; `other` is the rest, threads already ended included."""
    total = _cpu_seconds(_stat_fields(Path(f"/proc/{pid}/stat")))
    loop = inference = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            seconds = _cpu_seconds(_stat_fields(task / "stat"))
            name = (task / "comm").read_text().strip()
        except (FileNotFoundError, ProcessLookupError):  # the thread ended meanwhile
            continue
        if int(task.name) == pid:
            loop = seconds
        elif name.startswith(("inference", "infer-")):
            inference += seconds
    return {"event_loop": loop, "inference": inference, "other": max(0.0, total - loop - inference), "total": total}


def session_cpu(session: int) -> dict[str, float]:
    """CPU seconds of the live processes of a session (a server that forks workers, such as LitServe)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat_fields(entry / "stat")
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[3]) == session:  # field 6 of stat: the session id
            total += _cpu_seconds(fields)
    return {"total": total}


def per_request_ms(before: dict[str, float], after: dict[str, float], requests: int) -> dict[str, float] | None:
    if not requests:
        return None
    return {role: round(1000 * (after[role] - before[role]) / requests, 2) for role in after}
