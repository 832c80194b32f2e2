"""bench/cpuuse.py against a real process whose threads burn known amounts of CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import cpuuse  # noqa: E402

# Each thread spins until it has used its share of CPU (thread_time counts this thread only).
_WORKLOAD = """
import sys, threading, time
from service.threads import name_os_thread

def burn(seconds):
    while time.thread_time() < seconds:
        pass

def inference():
    name_os_thread("inference")
    burn(0.6)
    finished.set()
    stop.wait()  # lives on, as the service's inference thread does

finished, stop = threading.Event(), threading.Event()
threading.Thread(target=inference).start()
decoder = threading.Thread(target=burn, args=(0.3,))
decoder.start()
decoder.join()
finished.wait()
print("done", flush=True)
sys.stdin.read()
stop.set()
"""


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_service_cpu_splits_by_thread_role_and_counts_ended_threads() -> None:
    env = os.environ | {"PYTHONPATH": str(REPO)}
    with subprocess.Popen([sys.executable, "-c", _WORKLOAD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          env=env, text=True) as process:  # fmt: skip
        assert process.stdout is not None
        assert process.stdin is not None
        assert process.stdout.readline().strip() == "done"
        used = cpuuse.service_cpu(process.pid)
        session = cpuuse.session_cpu(os.getsid(process.pid))
        process.stdin.close()
    assert 0.55 <= used["inference"] <= 0.8
    assert 0.25 <= used["other"] <= 0.5  # its thread has ended: counted from the process's total
    assert used["total"] == pytest.approx(used["event_loop"] + used["inference"] + used["other"])
    assert session["total"] >= used["total"]  # this test's own process tree includes the workload


def test_per_request_figures() -> None:
    before = {"event_loop": 1.0, "total": 3.0}
    after = {"event_loop": 1.5, "total": 5.0}
    assert cpuuse.per_request_ms(before, after, 100) == {"event_loop": 5.0, "total": 20.0}
    assert cpuuse.per_request_ms(before, after, 0) is None
