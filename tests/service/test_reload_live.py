"""Reloads against a real uvicorn process (the production server, via fault_server.py's loader hooks).

One server for the module: a store of its own that the tests publish into and promote in, as the trainer
does. Every test leaves the served versions equal to the store's.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from reload_helpers import copy_store, publish, publish_damaged
from server_process import ServerProcess, running_server
from service_helpers import blocks_image, encode

from models import TASKS, history

IMAGE = encode(blocks_image(3))
RAW = {"Content-Type": "image/png"}


@dataclass
class Live:
    server: ServerProcess
    store: Path

    def reload(self) -> httpx.Response:
        return httpx.post(f"{self.server.url}/models/reload", timeout=300)

    def served(self, task: str) -> str:
        models = httpx.get(f"{self.server.url}/models", timeout=30).json()["models"]
        return str(next(m["version"] for m in models if m["task"] == task))

    def answer_version(self, task: str) -> str:
        response = httpx.post(f"{self.server.url}/{task}", content=IMAGE, headers=RAW, timeout=60)
        assert response.status_code == 200, response.text
        return str(response.json()["model"]["version"])

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.server.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")


@pytest.fixture(scope="module")
def live(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("reload-live")
    own = copy_store(store, root / "store")
    # Generous allowances (start-up, and a request's timeout): on a busy machine importing torch alone can
    # take minutes and a batch seconds; what these tests count is failures a reload causes.
    with running_server(own, root / "server.log", ready_timeout_s=900, max_wait_ms=5, request_timeout_s=60) as server:
        yield Live(server, own)


class Load:
    """Closed-loop clients, two per endpoint, each recording (version, status) in the order answered."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stop = threading.Event()
        self.seen: dict[tuple[str, int], list[tuple[str, int]]] = {(t, i): [] for t in TASKS for i in range(2)}
        self.threads = [threading.Thread(target=self._client, args=key, daemon=True) for key in self.seen]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(120)

    def _client(self, task: str, index: int) -> None:
        with httpx.Client(timeout=60) as client:
            while not self.stop.is_set():
                try:
                    response = client.post(f"{self.url}/{task}", content=IMAGE, headers=RAW)
                except httpx.HTTPError as exc:
                    self.seen[task, index].append((f"{type(exc).__name__}", 0))
                    continue
                version = response.json()["model"]["version"] if response.status_code == 200 else ""
                self.seen[task, index].append((version, response.status_code))
                time.sleep(0.05)  # a pause: steady load, well under what the server can take


def _runs(versions: list[str]) -> list[str]:
    """Consecutive repeats collapsed: [a, a, b, b] -> [a, b]."""
    return [v for i, v in enumerate(versions) if i == 0 or versions[i - 1] != v]


def test_under_load_every_reload_switches_once_and_no_request_fails(live: Live) -> None:
    before: dict[str, str] = {task: live.served(task) for task in TASKS}
    after: dict[str, str] = {}
    seconds: dict[str, float] = {}
    started = time.monotonic()
    with Load(live.server.url) as load:
        time.sleep(2)
        for seed, task in enumerate(TASKS, start=100):
            after[task] = publish(live.store, task, seed)
            answer = live.reload()
            assert answer.status_code == 200, answer.text
            results = {t["task"]: t["result"] for t in answer.json()["tasks"]}
            assert results == {t: "reloaded" if t == task else "unchanged" for t in TASKS}
            seconds[task] = next(t["seconds"] for t in answer.json()["tasks"] if t["task"] == task)
            time.sleep(2)
    elapsed = time.monotonic() - started
    total = sum(len(seen) for seen in load.seen.values())
    failed = [(key, status) for key, seen in load.seen.items() for _, status in seen if status != 200]
    print(
        f"\n{total} requests in {elapsed:.1f} s under load during three reloads (reload seconds: {seconds}), "
        f"{len(failed)} failed"
    )
    assert not failed, failed[:10]
    for (endpoint, _), seen in load.seen.items():
        # In each client's order of answers: the old version, then the new one, never back.
        assert _runs([version for version, _ in seen]) == [before[endpoint], after[endpoint]]
    log = live.server.output()
    for task in TASKS:
        assert f"{task}: reloaded {before[task]} -> {after[task]}" in log


@pytest.mark.parametrize("kind", ["damaged", "other_architecture", "failing_warm_up"])
def test_a_broken_version_is_refused_and_the_old_one_answers(live: Live, kind: str) -> None:
    task = "detect"
    before = live.served(task)
    if kind == "damaged":
        bad, why = publish_damaged(live.store, task, seed=200), "checksum mismatch"
    elif kind == "other_architecture":
        bad, why = publish(live.store, task, 201, arch="fasterrcnn_mobilenet_v3_large_320_fpn"), "do not fit"
    else:
        bad, why = publish(live.store, task, 202, test_fault="warmup"), "warm-up: RuntimeError"
    answer = live.reload()
    assert answer.status_code == 409, answer.text
    report = answer.json()
    assert report["error"]["code"] == "reload_failed"
    detect = next(t for t in report["tasks"] if t["task"] == task)
    assert (detect["result"], detect["before"], detect["after"], detect["store"]) == ("failed", before, before, bad)
    assert why in detect["reason"]
    assert live.answer_version(task) == before
    assert f"{task}: reload to {bad} refused, {before} keeps serving" in live.server.output()
    history.promote(live.store, task, before)  # what an operator does next: roll the store back
    assert live.reload().status_code == 200


def test_sighup_reloads_the_new_version(live: Live) -> None:
    before, new = live.served("segment"), publish(live.store, "segment", seed=300)
    live.server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 120
    while live.served("segment") != new:
        assert time.monotonic() < deadline, "SIGHUP did not reload segment"
        time.sleep(0.2)
    assert live.answer_version("segment") == new
    assert f"segment: reloaded {before} -> {new}" in live.server.output()
    assert live.server.process.poll() is None  # SIGHUP's default action would have ended the process


def test_memory_returns_after_twenty_reloads_alternating_two_versions(live: Live, tmp_path: Path) -> None:
    task = "instances"  # the largest of the three models
    first = live.served(task)
    second = publish(live.store, task, seed=400)
    rss: list[int] = []
    for cycle in range(20):
        target = second if cycle % 2 == 0 else first
        if cycle:
            history.promote(live.store, task, target)
        answer = live.reload()
        assert answer.status_code == 200, answer.text
        assert live.answer_version(task) == target
        rss.append(live.rss_kib())
    growth = rss[-1] / rss[0] - 1
    figures = {"task": task, "rss_kib": rss, "growth_last_vs_first": round(growth, 4)}
    (tmp_path / "rss.json").write_text(json.dumps(figures))
    print(f"\nRSS after each of 20 reloads (KiB): {rss}; last vs first {growth:+.2%}")
    assert growth < 0.05, figures
