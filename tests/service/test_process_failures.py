"""Failures seen from outside a real server process (issue 16, items 7 and 8).

- A store that cannot be loaded: `python -m service` exits with status 3 (uvicorn's startup failure),
  so a supervisor restarts it or reports it, instead of a process that is alive and never ready.
- A model that loads but fails its warm-up: /healthz (liveness) answers 503 with the reason, so an
  orchestrator restarts the process; /readyz stays 503.
- Inside inference, only the model refusing an image is the client's 422; any other exception is a
  500, logged with its traceback and counted.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import httpx
import pytest
from processes import answers, free_port, running, wait_for
from server_process import running_server
from service_helpers import as_raw, blocks_image, encode, metric_samples

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

STARTUP_S = 300  # importing torch and loading models beside other work on two (busy) cores


def _env(store: Path, tasks: str) -> tuple[dict[str, str], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DENSEPRED_")}
    env.update(
        DENSEPRED_MODEL_DIR=str(store),
        DENSEPRED_DEVICE="cpu",
        DENSEPRED_HOST="127.0.0.1",
        DENSEPRED_PORT=str(port),
        DENSEPRED_TASKS=tasks,
        OMP_NUM_THREADS="1",
    )
    return env, f"http://127.0.0.1:{port}"


def test_a_store_that_fails_to_load_exits_with_status_3(store: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "store"
    shutil.copytree(store / "segment", damaged / "segment")
    weights = damaged / "segment" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")  # the sha256 no longer matches
    env, _ = _env(damaged, "segment")
    log = tmp_path / "service.log"
    with running([sys.executable, "-m", "service"], log, env) as proc:
        status = proc.wait(timeout=STARTUP_S)
    output = log.read_text(errors="replace")
    assert status == 3, output
    assert "StoreError" in output  # the log says why
    assert "corrupted" in output


def test_a_failed_warm_up_makes_liveness_fail(store: Path, tmp_path: Path) -> None:
    # Loads (the weights verify), then fails its first forward pass: batches padded to multiples of 0.
    damaged = tmp_path / "store"
    shutil.copytree(store / "segment", damaged / "segment")
    manifest_path = damaged / "segment" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["input"]["size_divisor"] = 0
    manifest_path.write_text(json.dumps(manifest))
    env, url = _env(damaged, "segment")
    log = tmp_path / "service.log"
    with running([sys.executable, "-m", "service"], log, env) as proc:
        try:
            wait_for(answers(f"{url}/healthz", 503), STARTUP_S, "/healthz 503", proc)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{log.read_text(errors='replace')[-3000:]}") from None
        health = httpx.get(f"{url}/healthz", timeout=10)
        ready = httpx.get(f"{url}/readyz", timeout=10)
        refused = httpx.post(f"{url}/segment", timeout=10, **as_raw(encode(blocks_image(1, 32, 32))))
    assert health.json()["error"]["code"] == "unhealthy"
    assert "warm-up of segment failed" in health.json()["error"]["message"]
    assert ready.status_code == 503
    assert refused.status_code == 503
    assert "ZeroDivisionError" in log.read_text(errors="replace")  # the traceback is in the log


async def test_only_a_refused_image_is_422_and_a_bug_is_a_logged_counted_500(store: Path, tmp_path: Path) -> None:
    refused, bug = blocks_image(900, 32, 32), blocks_image(901, 32, 32)
    refused[0, 0], bug[0, 0] = (1, 2, 3), (4, 5, 6)
    ordinary = blocks_image(902, 32, 32)
    args = ("--poison-marker", "1,2,3", "--bug-marker", "4,5,6")
    with running_server(store, tmp_path / "server.log", *args, tasks="detect") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            answered = [await client.post("/detect", **as_raw(encode(im))) for im in (refused, bug, ordinary)]
            metrics = (await client.get("/metrics")).text
        output = server.output()
    assert [r.status_code for r in answered] == [422, 500, 200]
    assert answered[0].json()["error"]["code"] == "unprocessable_image"
    assert answered[1].json()["error"]["code"] == "inference_failed"
    assert "bug marker" not in answered[1].text  # details stay in the server's log
    assert "detect inference failed" in output
    assert "ValueError: this image carries the bug marker" in output
    assert "ImageRefusedError" not in output  # the client's error is not logged as a failure
    rejected = metric_samples(metrics, "densepred_requests_rejected_total")
    assert rejected['{reason="inference_failed",task="detect"}'] == 1
    assert rejected['{reason="unprocessable_image",task="detect"}'] == 1
