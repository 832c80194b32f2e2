"""Run the real server (uvicorn, via fault_server.py) in a subprocess on a loopback port, for tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from processes import answers, free_port, wait_for
from service_helpers import metric_samples

REPO = Path(__file__).resolve().parents[2]
ENTRY = Path(__file__).with_name("fault_server.py")


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def high_water_kib(self) -> int:
        """VmHWM: the most resident memory the server process has ever used."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise RuntimeError("no VmHWM")

    def metric(self, name: str, labels: str) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return metric_samples(text, name).get(labels, 0.0)

    def computed(self, task: str) -> float:
        """Images the model has run on (warm-up excluded): the sum of the batch-size histogram."""
        return self.metric("densepred_batch_size_sum", f'{{task="{task}"}}')

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)


@contextlib.contextmanager
def running_server(
    store: Path, log: Path, *args: str, ready_timeout_s: float = 90, **settings: object
) -> Iterator[ServerProcess]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DENSEPRED_")}
    env.update({f"DENSEPRED_{k.upper()}": str(v) for k, v in settings.items()})
    env.update(
        PYTHONPATH=str(REPO),
        DENSEPRED_MODEL_DIR=str(store),
        DENSEPRED_DEVICE="cpu",
        DENSEPRED_HOST="127.0.0.1",
        DENSEPRED_PORT=str(port),
        OMP_NUM_THREADS="1",  # the tests run beside other work on few cores
    )
    with log.open("wb") as sink:
        process = subprocess.Popen([sys.executable, str(ENTRY), *args], env=env, stdout=sink, stderr=subprocess.STDOUT)
    server = ServerProcess(process, f"http://127.0.0.1:{port}", log)
    try:
        _wait_ready(server, ready_timeout_s)
        yield server
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def _wait_ready(server: ServerProcess, timeout_s: float = 90) -> None:
    try:
        wait_for(answers(f"{server.url}/readyz"), timeout_s, "the server", server.process)
    except AssertionError as exc:
        raise RuntimeError(f"{exc}:\n{server.output()}") from None
