"""The servers bench/compare.py measures, each a subprocess on a loopback port, started one at a time.

Only one server runs at once: on a 2-core machine a second idle server would still cost memory, and
a busy one would steal cores. Each exposes how many batches it ran and how many images they held, so
mean batch sizes can be reported for every run (the service from its own Prometheus histogram,
LitServe from a line per batch that bench/litserve_app.py appends to a file).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cpuuse
import front
import loadgen
from harness import PROCESS_ENVIRONMENT, REPO, metric, python_path, service, wait_until_up

HOST = "127.0.0.1"


@dataclass
class Server:
    name: str
    port: int
    started_s: float  # from spawning the process to its readiness probe answering 200
    batches: Callable[[], Awaitable[tuple[float, float]]]  # (images, batches) so far, for mean batch sizes
    settings: dict[str, str]
    cpu: Callable[[], dict[str, float]]  # CPU seconds so far (cpuuse.py): per role, or the process tree's total
    replica_ports: tuple[int, ...] = ()  # further replicas of the same server, which the clients spread over
    runtime_s: float | None = None  # densepred: from spawning to every runtime chosen (in the background)

    def host(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.port, *self.replica_ports)


def _service_batches(port: int, task: str) -> Callable[[], Awaitable[tuple[float, float]]]:
    async def read() -> tuple[float, float]:
        status, body = await loadgen.fetch(HOST, port, loadgen.get_request(f"{HOST}:{port}", "/metrics"))
        text = body.decode() if status == 200 else ""
        labels = f'{{task="{task}"}}'
        return metric(text, "densepred_batch_size_sum", labels), metric(text, "densepred_batch_size_count", labels)

    return read


@contextlib.contextmanager
def densepred(
    name: str, model_dir: Path, task: str, max_batch_size: int, max_wait_ms: float, **settings: str
) -> Iterator[Server]:
    """`python -m service` with the default settings (all three models served) but the batching given,
    and any other DENSEPRED_* settings (device, max_batch_pixels...)."""
    with service(model_dir, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, **settings) as served:
        pid = served.process.pid
        port = served.port
        yield Server(name, port, served.ready_s, _service_batches(port, task), served.settings,
                     lambda: cpuuse.service_cpu(pid), runtime_s=served.runtime_s)  # fmt: skip


@contextlib.contextmanager
def densepred_replicas(
    name: str,
    model_dir: Path,
    task: str,
    replicas: int,
    max_batch_size: int,
    max_wait_ms: float,
    through_nginx: bool = False,
    **settings: str,
) -> Iterator[Server]:
    """`replicas` service processes, as `docker compose --scale api=N` runs them on one machine. Each
    computes with its share of the cores (CPU_THREADS), as an operator sets it for replicas that share a
    host. They start one after another. The clients reach them through nginx (docker/nginx.conf, its
    CPU counted as the role `nginx`), or spread their connections over them directly."""
    threads = str(max(1, (os.cpu_count() or 1) // replicas))
    batching = {"max_batch_size": str(max_batch_size), "max_wait_ms": str(max_wait_ms)}
    spawned = time.perf_counter()
    with contextlib.ExitStack() as stack:
        served = [
            stack.enter_context(service(model_dir, **batching, cpu_threads=threads, **settings))
            for _ in range(replicas)
        ]
        ready = time.perf_counter() - spawned
        ports = [s.port for s in served]
        readers = [_service_batches(port, task) for port in ports]
        pids = [s.process.pid for s in served]

        async def batches() -> tuple[float, float]:
            counts = [await read() for read in readers]
            return sum(c[0] for c in counts), sum(c[1] for c in counts)

        def cpu() -> dict[str, float]:
            usage = [cpuuse.service_cpu(pid) for pid in pids]
            return {role: sum(u[role] for u in usage) for role in usage[0]}

        settings_used = served[0].settings | {"replicas": str(replicas)}
        if not through_nginx:
            yield Server(name, ports[0], ready, batches, settings_used, cpu, tuple(ports[1:]))
            return
        port = _free_port()
        balancer = stack.enter_context(front.nginx([f"{HOST}:{p}" for p in ports], port))

        def cpu_with_nginx() -> dict[str, float]:
            usage = cpu() | {"nginx": cpuuse.session_cpu(balancer.pid)["total"]}
            return usage | {"total": usage["total"] + usage["nginx"]}

        settings_used |= {"front": "nginx, docker/nginx.conf, worker_processes auto"}
        yield Server(name, port, time.perf_counter() - spawned, batches, settings_used, cpu_with_nginx)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def litserve(
    model_dir: Path, task: str, max_batch_size: int, max_wait_ms: float, workers: int = 1, name: str = "litserve"
) -> Iterator[Server]:
    """LitServe with `workers` inference processes; with more than one, each computes with its share of the
    cores (OMP_NUM_THREADS), as the service's INFERENCE_WORKERS threads do."""
    port = _free_port()
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(tempfile.NamedTemporaryFile("w+b", suffix=".log"))
        batch_log = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "batches.txt"
        batch_log.touch()
        settings = {"max_batch_size": str(max_batch_size), "batch_timeout_ms": str(max_wait_ms), "timeout_s": "10"}
        settings["workers_per_device"] = str(workers)
        command = [sys.executable, str(REPO / "bench" / "litserve_app.py"), "--model-dir", str(model_dir)]
        command += ["--task", task, "--port", str(port), "--batch-log", str(batch_log)]
        command += ["--max-batch-size", str(max_batch_size), "--batch-timeout-ms", str(max_wait_ms)]
        command += ["--workers", str(workers)]
        env = os.environ | PROCESS_ENVIRONMENT | {"PYTHONPATH": python_path()}
        if workers > 1:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
        spawned = time.perf_counter()
        # A session of its own: LitServe forks an API server and an inference worker, and all of them
        # (and only them) must go when the run ends.
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_healthy(process, port, log)
            ready = time.perf_counter() - spawned

            async def batches() -> tuple[float, float]:
                sizes = batch_log.read_text().split()
                return float(sum(int(s) for s in sizes)), float(len(sizes))

            yield Server(name, port, ready, batches, settings, lambda: cpuuse.session_cpu(process.pid))
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _wait_healthy(process: subprocess.Popen[bytes], port: int, log: tempfile._TemporaryFileWrapper[bytes]) -> None:
    def output() -> str:
        log.seek(0)
        return log.read().decode(errors="replace")

    wait_until_up(process, f"http://{HOST}:{port}/health", "LitServe", output, 180)
