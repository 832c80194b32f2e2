"""Real programs for the tests: `python -m service` as a subprocess, and the Debian binaries beside it.

Everything listens on loopback ports chosen by the kernel, logs into the test's temp folder, and is
stopped (then killed if need be) when the test is done.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_binary(name: str) -> str:
    """The path of a system program; in CI (CI=true) a missing one fails the test instead of skipping it."""
    # /usr/sbin is not on every user's PATH, and nginx lives there.
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if found:
        return found
    message = f"{name} is not installed (apt-get install {name}; .ci/run does it)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def wait_for(
    check: Callable[[], bool], timeout_s: float, what: str, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited with status {proc.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(0.1)


def answers(url: str, status: int = 200) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.get(url, timeout=2).status_code == status
        except httpx.HTTPError:
            return False

    return check


@contextlib.contextmanager
def running(cmd: Sequence[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """Run `cmd` for the duration of the block; its output goes to `log` (shown when something fails)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@dataclass(frozen=True)
class Service:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path


@contextlib.contextmanager
def service(store: Path, log: Path, tasks: str = "segment,detect,instances", **settings: str) -> Iterator[Service]:
    """`python -m service` on a free loopback port, once /readyz answers 200."""
    port = free_port()
    env = {
        **os.environ,
        "DENSEPRED_MODEL_DIR": str(store),
        "DENSEPRED_HOST": "127.0.0.1",
        "DENSEPRED_PORT": str(port),
        "DENSEPRED_DEVICE": "cpu",
        "DENSEPRED_TASKS": tasks,
        **{f"DENSEPRED_{name.upper()}": value for name, value in settings.items()},
    }
    url = f"http://127.0.0.1:{port}"
    with running([sys.executable, "-m", "service"], log, env) as proc:
        try:
            wait_for(answers(f"{url}/readyz"), 120, f"service on port {port}", proc)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{log.read_text(errors='replace')[-3000:]}") from None
        yield Service(url, proc, log)
