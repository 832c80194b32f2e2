"""A real nginx (the Debian package) running the repo's docker/nginx.conf in front of two service processes.

Only two lines of the file change for loopback: the `server api:8000` upstream (one line per process)
and `listen 8080`. Everything else (retries, timeouts, body limits, error pages) is what ships.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from PIL import Image
from processes import REPO, Service, answers, free_port, require_binary, running, service, wait_for

sys.path.insert(0, str(REPO / "bench"))

import front  # noqa: E402

BROKEN = -1
# nginx's words for a replica that died after its answer had started: too late to send the request elsewhere.
TOO_LATE_TO_RETRY = "upstream prematurely closed connection while reading upstream"


@dataclass
class Cluster:
    url: str
    replicas: list[Service]
    error_log: Path


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (96 + seed % 7, 72), (seed * 37 % 256, 120, 200)).save(buffer, "PNG")
    return buffer.getvalue()


def _count(replica: Service) -> float:
    """Answered /detect requests, from the replica's own histogram."""
    text = httpx.get(f"{replica.url}/metrics").text
    pattern = r'^densepred_request_duration_seconds_count\{endpoint="/detect",status="200"\} (\S+)$'
    match = re.search(pattern, text, re.MULTILINE)
    return float(match[1]) if match else 0.0


@pytest.fixture(scope="module")
def cluster(random_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require_binary("nginx")
    folder = tmp_path_factory.mktemp("nginx")
    with contextlib.ExitStack() as stack:
        replicas = [
            stack.enter_context(service(random_store, folder / f"replica{i}.log", tasks="detect")) for i in range(2)
        ]
        port = free_port()
        # The shipped docker/nginx.conf, its upstream and listen lines pointed at loopback (bench/front.py).
        cmd = front.prepare(folder, [r.url.removeprefix("http://") for r in replicas], port)
        proc = stack.enter_context(running(cmd, folder / "nginx.out"))
        url = f"http://127.0.0.1:{port}"
        wait_for(answers(f"{url}/readyz"), 30, "nginx", proc)
        yield Cluster(url, replicas, folder / "error.log")


async def _load(url: str, total: int, concurrency: int, on_progress: dict[int, asyncio.Event]) -> list[int]:
    """`total` uploads through nginx from `concurrency` workers; sets on_progress[n] once n have answered.

    Returns the statuses; BROKEN for an answer cut off in the middle.
    """
    statuses: list[int] = []
    sent = iter(range(total))

    async def worker(client: httpx.AsyncClient) -> None:
        for i in sent:
            try:
                response = await client.post(f"{url}/detect", files={"image": ("a.png", _png(i), "image/png")})
                statuses.append(response.status_code)
            except httpx.HTTPError:
                statuses.append(BROKEN)
            if len(statuses) in on_progress:
                on_progress[len(statuses)].set()

    async with httpx.AsyncClient(timeout=60) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return statuses


def test_nginx_spreads_requests_over_both_replicas(cluster: Cluster) -> None:
    before = [_count(r) for r in cluster.replicas]
    statuses = asyncio.run(_load(cluster.url, 24, 4, {}))
    assert statuses == [200] * 24
    served = [_count(r) - b for r, b in zip(cluster.replicas, before, strict=True)]
    assert sum(served) == 24
    assert min(served) >= 6, f"one replica barely served: {served}"


def test_nginx_metrics_and_errors_keep_the_json_error_format(cluster: Cluster) -> None:
    metrics = httpx.get(f"{cluster.url}/metrics")
    assert metrics.status_code == 404
    assert metrics.json()["error"]["code"] == "not_found"
    jpeg = {"Content-Type": "image/jpeg"}
    big = httpx.post(f"{cluster.url}/detect", content=b"\xff" * (22 * 1024 * 1024), headers=jpeg)
    assert big.status_code == 413
    assert big.json()["error"]["code"] == "too_large"


def test_killing_a_replica_mid_load_loses_no_request_nginx_could_retry(cluster: Cluster) -> None:
    """Runs last in this module: it kills replica 0.

    A request the victim had not started answering (refused, reset, or still queued) is retried on the
    survivor and must succeed. Only one whose answer was already streaming to the client when the
    process died may be cut off: nginx logs each of those, and the test allows no more than it logged.
    """
    victim, survivor = cluster.replicas
    survivor_before = _count(survivor)

    async def scenario() -> list[int]:
        halfway = asyncio.Event()
        load = asyncio.create_task(_load(cluster.url, 80, 6, {20: halfway}))
        await halfway.wait()
        victim.proc.send_signal(signal.SIGKILL)  # no drain, no goodbye: connections simply break
        return await load

    statuses = asyncio.run(scenario())
    assert victim.proc.wait(timeout=10) == -signal.SIGKILL
    log = cluster.error_log.read_text()
    # nginx did see the replica fail and went on with the other: the test exercised what it claims.
    assert victim.url.removeprefix("http://") in log, log
    lost = [s for s in statuses if s != 200]
    assert set(lost) <= {BROKEN}, f"error answers: {lost}"
    assert len(lost) <= log.count(TOO_LATE_TO_RETRY), f"{len(lost)} lost, nginx could have retried some:\n{log}"
    assert statuses.count(200) >= 80 - 6  # at most one cut-off answer per concurrent client
    # The survivor keeps answering, through nginx.
    after_load = _count(survivor)
    assert after_load > survivor_before
    for i in range(5):
        response = httpx.post(f"{cluster.url}/detect", files={"image": ("a.png", _png(i), "image/png")})
        assert response.status_code == 200
    assert _count(survivor) == after_load + 5
