"""The real server in a subprocess (uvicorn on a loopback port): drain on SIGTERM, disconnects, deadlines,
a failing item, bombs and memory, and schemathesis against its own OpenAPI document.

The models are the store's real ones, slowed by a fixed sleep per batch (fault_server.py) so that
queues build up on cue.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hostile import corpus
from hypothesis import HealthCheck, given, settings
from server_process import ServerProcess, running_server
from service_helpers import as_raw, blocks_image, encode, metric_samples

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

BATCH_DELAY = "0.25"
MARKER = (1, 2, 3)


@pytest.fixture(scope="module")
def server(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("server") / "server.log"
    args = ("--batch-delay", BATCH_DELAY, "--poison-marker", ",".join(map(str, MARKER)))
    with running_server(store, log, *args, max_batch_size=4, max_wait_ms=20, max_queue=256) as running:
        yield running
        assert "Traceback" not in running.output()  # no unhandled error in the whole module


async def _queue_depth(client: httpx.AsyncClient, task: str) -> float:
    text = (await client.get("/metrics")).text
    return metric_samples(text, "densepred_queue_depth")[f'{{task="{task}"}}']


async def _until(predicate: object, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition never met"
        await asyncio.sleep(0.05)


async def _idle(client: httpx.AsyncClient, server: ServerProcess, task: str) -> None:
    """Wait until the task's queue is empty and no batch is left running."""
    previous = -1.0
    while True:
        computed = server.computed(task)
        if computed == previous and await _queue_depth(client, task) == 0:
            return
        previous = computed
        await asyncio.sleep(float(BATCH_DELAY) * 2)


async def test_a_deadline_passing_in_the_queue_is_504_and_never_computed(server: ServerProcess) -> None:
    data = encode(blocks_image(800, 32, 32))
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        before = server.computed("segment")
        busy = [asyncio.create_task(client.post("/segment", **as_raw(data))) for _ in range(12)]
        await _until(lambda: _deep(client, "segment", 8))  # two batches (>= 0.5 s) ahead of the next one
        late = await client.post("/segment", params={"timeout": "0.3"}, **as_raw(data))
        assert late.status_code == 504, late.text
        assert late.json()["error"]["code"] == "deadline_exceeded"
        assert [r.status_code for r in await asyncio.gather(*busy)] == [200] * 12
        await _idle(client, server, "segment")
    assert server.computed("segment") - before == 12  # the late one never ran


async def _deep(client: httpx.AsyncClient, task: str, depth: int) -> bool:
    return await _queue_depth(client, task) >= depth


async def _abandon(port: int, body: bytes) -> None:
    """Send a whole request, then hang up 50 ms later without reading the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"POST /segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {len(body)}\r\n\r\n"
    writer.write(head.encode() + body)
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.close()
    await writer.wait_closed()


async def test_clients_that_hang_up_while_queued_are_not_computed(server: ServerProcess) -> None:
    data = encode(blocks_image(801, 32, 32))
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        before = server.computed("segment")
        blockers = [asyncio.create_task(client.post("/segment", **as_raw(data))) for _ in range(4)]
        await asyncio.sleep(0.1)  # the queue is busy with them
        await asyncio.gather(*(_abandon(server.port, data) for _ in range(200)))
        assert [r.status_code for r in await asyncio.gather(*blockers)] == [200] * 4
        await _idle(client, server, "segment")
        assert (await client.post("/segment", **as_raw(data))).status_code == 200  # and the server is fine
    abandoned_computed = server.computed("segment") - before - 5
    gone = server.metric("densepred_requests_rejected_total", '{reason="client_disconnected",task="segment"}')
    print(f"200 abandoned requests: {abandoned_computed:.0f} computed, {gone:.0f} dropped from the queue")
    assert abandoned_computed <= 20  # at most 10 %


async def test_an_injected_failing_item_does_not_fail_its_batch_neighbours(server: ServerProcess) -> None:
    images = [blocks_image(810 + i, 32, 32) for i in range(8)]
    images[5][0, 0] = MARKER
    before_all = server.metric("densepred_batch_size_count", '{task="detect"}')
    before_single = server.metric("densepred_batch_size_bucket", '{le="1.0",task="detect"}')
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        responses = await asyncio.gather(*(client.post("/detect", **as_raw(encode(im))) for im in images))
    assert [r.status_code for r in responses] == [200] * 5 + [422] + [200] * 2
    assert responses[5].json()["error"]["code"] == "unprocessable_image"
    batches = server.metric("densepred_batch_size_count", '{task="detect"}') - before_all
    singles = server.metric("densepred_batch_size_bucket", '{le="1.0",task="detect"}') - before_single
    assert batches > singles, "the failing item should have shared a batch with others"


async def test_bombs_are_refused_and_large_uploads_stay_within_memory(server: ServerProcess) -> None:
    before = server.high_water_kib()
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        for name, request, is_bomb in corpus():
            if not is_bomb:
                continue
            for task in ("segment", "detect", "instances"):
                response = await client.post(f"/{task}", **request)
                assert 400 <= response.status_code < 500, (name, response.text)
        # Refused from their headers, never decoded: the bombs cost the server next to nothing.
        assert server.high_water_kib() - before < 50 * 1024
        large = encode(blocks_image(820, 3000, 4000), "JPEG", quality=90)  # 12 MP
        params = {"score_threshold": 0, "max_detections": 100}
        response = await client.post("/instances", params=params, **as_raw(large, "JPEG"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["image"] == {"width": 4000, "height": 3000}
    assert body["detections"]
    assert all(d["mask"]["size"] == [3000, 4000] for d in body["detections"])
    grown_mib = (server.high_water_kib() - before) / 1024
    print(f"12 MP upload with {len(body['detections'])} instances: high-water mark +{grown_mib:.0f} MiB")
    assert grown_mib < 400  # full-size masks would need 100 x 12 MP x 4 B = 4.8 GB


def test_sigterm_drains_requests_in_flight_and_exits_0(store: Path, tmp_path: Path) -> None:
    settings = {"max_batch_size": 4, "max_wait_ms": 20, "drain_delay_s": 0.5, "tasks": "segment"}
    with running_server(store, tmp_path / "server.log", "--batch-delay", "0.3", **settings) as server:
        asyncio.run(_drain(server))
        started = time.monotonic()
        code = server.process.wait(30)
        log = server.output()
    assert code == 0, log
    assert time.monotonic() - started < 15
    assert "Traceback" not in log


async def _drain(server: ServerProcess) -> None:
    data = encode(blocks_image(830, 32, 32))
    limits = httpx.Limits(max_connections=40)
    async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as client:
        in_flight = [asyncio.create_task(client.post("/segment", **as_raw(data))) for _ in range(20)]
        await _until(lambda: _deep(client, "segment", 8))
        server.terminate()
        await asyncio.sleep(0.1)
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as probe:  # a new connection
            ready = await probe.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["error"]["code"] == "shutting_down"
        responses = await asyncio.gather(*in_flight)
    assert [r.status_code for r in responses] == [200] * 20


def test_openapi_contract_holds_for_generated_requests(server: ServerProcess) -> None:
    """schemathesis: every operation, generated requests, all of its checks (no 5xx, documented statuses...)."""
    checks = {
        # A generated `timeout` of 5e-324 s rightly ends in a 504: the one 5xx a client can ask for.
        "not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "504"]},
        # "Schema-valid requests must succeed" cannot hold here: OpenAPI cannot say that `classes` must
        # name the model's categories or that the bytes must be a decodable image (those are 422 / 400).
        "positive_data_acceptance": {"enabled": False},
    }
    config = schemathesis.config.SchemathesisConfig.from_dict({"checks": checks})
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", config=config)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 7
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(timeout=30)

        check()
