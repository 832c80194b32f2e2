"""Shared by bench/overload.py and bench/soak.py: a service subprocess, its memory and fds, test images.

The service is the real one (`python -m service`) on a loopback port, over a store of untrained
default-architecture models unless --model-dir names a trained store (same networks, same cost per
image; untrained heads find more objects, which is the expensive case for masks).
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models import DEFAULT_ARCH, TASKS, Category, Manifest, build_model, get_arch, save_entry  # noqa: E402

# As deployed (README, "Operations and limits"): glibc gives each thread that allocates (event loop,
# decoders, batch worker) its own arena, and memory freed in one is not reused by another, so RSS
# creeps up under mixed image sizes; two arenas keep it flat at no measurable cost. (oneDNN's kernel cache
# stays at its default: a cap of 64 made the servers recompile kernels for the mixed sizes, 10-25 % slower.)
PROCESS_ENVIRONMENT = {"MALLOC_ARENA_MAX": "2"}


def random_store(root: Path, archs: dict[str, str] | None = None) -> Path:
    """Untrained models for every task: the default architectures, or those `archs` names per task."""
    torch.manual_seed(0)
    for task in TASKS:
        spec = get_arch(task, (archs or {}).get(task, DEFAULT_ARCH[task]))
        categories = [Category(1, "circle"), Category(2, "square"), Category(3, "triangle")]
        manifest = Manifest(task=task, arch=spec.name, num_classes=4, categories=categories, input=dict(spec.input))
        save_entry(root, manifest, build_model(task, spec.name, num_classes=4).state_dict())
    return root


@dataclass
class Service:
    process: subprocess.Popen[bytes]
    url: str
    settings: dict[str, str]
    log: Any
    ready_s: float = 0.0  # from spawning the process to /readyz answering 200
    runtime_s: float = 0.0  # ... to every model's runtime chosen (PRECISION=auto measures in the background)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return str(self.log.read().decode(errors="replace"))

    def stats(self) -> dict[str, int]:
        """Resident memory now and at its highest (KiB), and open file descriptors, of the server process."""
        if self.process.poll() is not None:
            raise SystemExit(f"the service exited with {self.process.returncode}:\n{self.output()[-5000:]}")
        status = Path(f"/proc/{self.process.pid}/status").read_text().splitlines()
        fields = {line.split(":")[0]: line.split()[1] for line in status if line.startswith(("VmRSS", "VmHWM"))}
        fds = len(os.listdir(f"/proc/{self.process.pid}/fd"))
        return {"rss_kib": int(fields["VmRSS"]), "hwm_kib": int(fields["VmHWM"]), "fds": fds}


@contextlib.contextmanager
def service(model_dir: Path | None, ready_timeout_s: float = 120, **settings: object) -> Iterator[Service]:
    with contextlib.ExitStack() as stack:
        if model_dir is None:
            model_dir = random_store(Path(stack.enter_context(tempfile.TemporaryDirectory())))
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("DENSEPRED_")}
        chosen = {f"DENSEPRED_{k.upper()}": str(v) for k, v in settings.items()}
        env.update(chosen, DENSEPRED_MODEL_DIR=str(model_dir), DENSEPRED_PORT=str(port), PYTHONPATH=python_path())
        env.update(PROCESS_ENVIRONMENT)
        log = stack.enter_context(tempfile.NamedTemporaryFile("w+b", suffix=".log"))
        process = subprocess.Popen([sys.executable, "-m", "service"], env=env, stdout=log, stderr=subprocess.STDOUT)
        served = Service(process, f"http://127.0.0.1:{port}", chosen, log)
        spawned = time.perf_counter()
        try:
            _wait_ready(served, ready_timeout_s)
            served.ready_s = time.perf_counter() - spawned
            # Load starts on the runtime the service will keep, not on fp32 during its measurement.
            _wait_runtime_chosen(served, ready_timeout_s)
            served.runtime_s = time.perf_counter() - spawned
            yield served
        finally:
            process.terminate()
            process.wait(60)


def python_path() -> str:
    """The repository first, then whatever PYTHONPATH this process had (e.g. packages carried as wheels)."""
    return os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))


def wait_until_up(
    process: subprocess.Popen[bytes], url: str, name: str, output: Callable[[], str], timeout_s: float
) -> None:
    """Poll `url` until it answers 200; exit with the server's output if the process dies first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{name} exited:\n{output()[-5000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise SystemExit(f"{name} was not up within {timeout_s:g} s")


def _wait_ready(served: Service, timeout_s: float = 120) -> None:
    wait_until_up(served.process, f"{served.url}/readyz", "the service", served.output, timeout_s)


def _wait_runtime_chosen(served: Service, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        models = httpx.get(f"{served.url}/models", timeout=5).json()["models"]
        if all((m.get("runtime") or {}).get("mode") != "pending" for m in models):
            return
        time.sleep(0.2)
    raise SystemExit(f"the service chose no runtime within {timeout_s:g} s:\n{served.output()[-3000:]}")


def images(count: int, seed: int = 0, sizes: tuple[int, int] = (160, 480)) -> list[tuple[bytes, str]]:
    """Pictures of coloured rectangles, mixed sizes, alternately PNG and JPEG."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        height, width = (int(v) for v in rng.integers(*sizes, 2))
        pixels = np.empty((height, width, 3), dtype=np.uint8)
        pixels[:] = rng.integers(0, 256, 3)
        for _ in range(int(rng.integers(1, 6))):
            y, x = int(rng.integers(0, height - 16)), int(rng.integers(0, width - 16))
            h, w = int(rng.integers(16, height // 2)), int(rng.integers(16, width // 2))
            pixels[y : y + h, x : x + w] = rng.integers(0, 256, 3)
        fmt, media = ("PNG", "image/png") if i % 2 else ("JPEG", "image/jpeg")
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format=fmt)
        out.append((buffer.getvalue(), media))
    return out


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "service_environment": PROCESS_ENVIRONMENT,
    }


def metric(text: str, name: str, labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(f"{name}{labels} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
