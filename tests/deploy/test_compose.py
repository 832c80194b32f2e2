"""`docker compose --profile cpu up --scale api-cpu=2` with the shipped docker-compose.yml.

tests/deploy/compose.test.yml swaps in the image under test and the nginx and Prometheus stand-ins
built from Debian's packages (tests/deploy/standins), publishes on 127.0.0.1 only, and leaves Grafana
out. The project gets a name of its own, and `down --volumes` runs however the test ends.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from docker_helpers import (
    COMPOSE_FILE,
    IMAGE,
    answers,
    build_standin,
    compose_cli,
    docker,
    require_image,
    wait_until,
)
from test_image import PARAMS, TASKS

# The first test also brings the stack up: stand-in builds, two replicas loading three models each.
pytestmark = pytest.mark.timeout(1800)
OVERRIDE = Path(__file__).with_name("compose.test.yml")
PROJECT_LABEL = "com.docker.compose.project"


@dataclass
class Stack:
    project: str
    env: dict[str, str]

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [compose_cli(), "-f", str(COMPOSE_FILE), "-f", str(OVERRIDE), "-p", self.project, "--profile", "cpu"]
        result = subprocess.run([*cmd, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"compose {' '.join(args)} exited {result.returncode}:\n{result.stderr[-4000:]}")
        return result

    def url(self, service: str, port: int) -> str:
        return f"http://{self.compose('port', service, str(port)).stdout.strip()}"

    def left(self) -> dict[str, list[str]]:
        label = f"{PROJECT_LABEL}={self.project}"
        return {
            "containers": docker("ps", "--all", "--quiet", "--filter", f"label={label}").stdout.split(),
            "networks": docker("network", "ls", "--format", "{{.Name}}", "--filter", f"label={label}").stdout.split(),
            "volumes": docker("volume", "ls", "--format", "{{.Name}}", "--filter", f"label={label}").stdout.split(),
        }

    def replicas(self) -> list[dict[str, Any]]:
        ids = self.compose("ps", "--quiet", "api-cpu").stdout.split()
        return list(json.loads(docker("inspect", *ids).stdout)) if ids else []


@pytest.fixture(scope="module")
def stack(store: Path) -> Iterator[Stack]:
    require_image(IMAGE)
    compose_cli()
    build_standin("nginx")
    build_standin("prometheus")
    env = {**os.environ, "DENSEPRED_MODELS": str(store), "DENSEPRED_TEST_IMAGE": IMAGE}
    env["DENSEPRED_TEST_PID"] = str(os.getpid())
    stack = Stack(f"densepred-test-{uuid.uuid4().hex[:8]}", env)
    try:
        began = time.monotonic()
        # --wait: until every started service is healthy (nginx waits for the replicas by itself).
        stack.compose("up", "--detach", "--no-build", "--scale", "api-cpu=2", "--wait", timeout=900)
        print(f"\ncompose up (2 replicas healthy, nginx and Prometheus started): {time.monotonic() - began:.0f} s")
        yield stack
    finally:
        logs = stack.compose("logs", "--no-color", check=False).stdout
        stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "30", check=False)
        if stack.left() != {"containers": [], "networks": [], "volumes": []}:
            print(logs[-6000:])


def test_serves_every_task_through_nginx(stack: Stack, photo: bytes) -> None:
    assert len(stack.replicas()) == 2
    assert all(r["State"]["Health"]["Status"] == "healthy" for r in stack.replicas())
    api = stack.url("nginx", 8080)
    for task in TASKS:
        response = httpx.post(f"{api}/{task}", params=PARAMS[task], files={"image": photo}, timeout=60)
        assert response.status_code == 200, response.text
        assert response.json()["model"]["task"] == task
    # nginx keeps the replicas' counters to themselves, in the service's error format.
    assert httpx.get(f"{api}/metrics").json()["error"]["code"] == "not_found"


def _targets(prometheus: str) -> list[dict[str, Any]]:
    return list(httpx.get(f"{prometheus}/api/v1/targets", timeout=5).json()["data"]["activeTargets"])


def test_prometheus_scrapes_both_replicas(stack: Stack, photo: bytes) -> None:
    prometheus = stack.url("prometheus", 9090)
    wait_until(answers(f"{prometheus}/-/ready"), 60, "Prometheus ready")
    addresses = {f"{r['NetworkSettings']['Networks'][f'{stack.project}_default']['IPAddress']}:8000" for r in
                 stack.replicas()}  # fmt: skip
    assert len(addresses) == 2

    def both_up() -> bool:
        up = {t["labels"]["instance"] for t in _targets(prometheus) if t["health"] == "up"}
        return up == addresses

    wait_until(both_up, 90, "a healthy scrape of each replica")
    # Requests through nginx reach both replicas, and each replica's own counter says so.
    api = stack.url("nginx", 8080)
    for _ in range(8):
        assert httpx.post(f"{api}/detect", params=PARAMS["detect"], files={"image": photo}, timeout=60).is_success
    query = 'sum by (instance) (densepred_request_duration_seconds_count{endpoint="/detect"})'

    def counted_by_both() -> bool:
        result = httpx.get(f"{prometheus}/api/v1/query", params={"query": query}, timeout=5).json()["data"]["result"]
        return {r["metric"]["instance"] for r in result if float(r["value"][1]) > 0} == addresses

    wait_until(counted_by_both, 60, "/detect counted on both replicas")


def test_down_leaves_nothing_behind(stack: Stack) -> None:
    assert stack.left()["containers"]
    stack.compose("down", "--timeout", "30")
    left = stack.left()
    assert (left["containers"], left["networks"]) == ([], [])
    # Plain `down` keeps the named volume that holds Prometheus' data, as it should; --volumes removes it.
    assert left["volumes"] == [f"{stack.project}_prometheus-data"]
    stack.compose("down", "--volumes")
    assert stack.left() == {"containers": [], "networks": [], "volumes": []}
