"""HTTP-level limits against the real server (uvicorn in a subprocess): clients that hang up, slow or
oversized requests, and large multipart uploads, with the answers ordinary clients get meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_process import ServerProcess, running_server

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("http-limits") / "server.log"
    with running_server(store, log) as running:
        yield running
        assert "Traceback" not in running.output()


def _status_count(server: ServerProcess, endpoint: str, status: int) -> float:
    labels = f'{{endpoint="{endpoint}",status="{status}"}}'
    return server.metric("densepred_request_duration_seconds_count", labels)


async def test_a_client_gone_during_the_upload_is_recorded_as_499_like_one_gone_while_queued(
    server: ServerProcess,
) -> None:
    before = {status: _status_count(server, "/detect", status) for status in (400, 499)}
    gone_before = server.metric("densepred_requests_rejected_total", '{reason="client_disconnected",task="detect"}')
    for _ in range(3):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        head = "POST /detect HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n"
        writer.write(head.encode() + b"\x89PNG" + b"\x00" * 500)  # then hang up, 99 kB short
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.close()
        await writer.wait_closed()
    for _ in range(50):  # the server records the request once it notices the hang-up
        if _status_count(server, "/detect", 499) - before[499] >= 3:
            break
        await asyncio.sleep(0.1)
    assert _status_count(server, "/detect", 499) - before[499] == 3
    assert _status_count(server, "/detect", 400) == before[400]
    gone = server.metric("densepred_requests_rejected_total", '{reason="client_disconnected",task="detect"}')
    assert gone - gone_before == 3
