"""A deliberately cheap HTTP/1.1 load generator for image uploads: closed loop and open (Poisson) loop.

The server under test shares the machine's few cores with this client, so every cycle spent here is
taken from the server. Requests are built once (whole multipart messages, bytes), sent over raw
asyncio streams with keep-alive, and a response is read as status line, headers and Content-Length
body, nothing more: no HTTP library, no JSON parsing. The client's own CPU time is measured
(`time.process_time`) and reported with every run, so its cost is on the record.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from harness import ms, percentile

BOUNDARY = "densepredbenchboundary7d1f"
TRANSPORT_ERROR = "transport"  # connection refused/reset, or a malformed answer
TIMEOUT = "timeout"  # no answer within the client's own timeout


def multipart_request(host: str, path: str, image: bytes, media: str) -> bytes:
    """A whole POST with the image as multipart field `image`, as curl -F sends it."""
    suffix = media.split("/")[-1]
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="image.{suffix}"\r\n'
        f"Content-Type: {media}\r\n\r\n"
    ).encode()
    body = head + image + f"\r\n--{BOUNDARY}--\r\n".encode()
    header = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return header + body


def get_request(host: str, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


class Connection:
    """One keep-alive connection; reopened after any error, since its stream state is then unknown."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        try:
            self.writer.write(request)
            head = await self.reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            body = await self._body(head.lower())
        except BaseException:
            self.close()
            raise
        if b"\r\nconnection: close" in head.lower():
            self.close()
        return status, body

    async def _body(self, head: bytes) -> bytes:
        assert self.reader is not None
        start = head.find(b"\r\ncontent-length:")
        if start >= 0:
            end = head.index(b"\r\n", start + 2)
            return await self.reader.readexactly(int(head[start + 17 : end]))
        if b"transfer-encoding: chunked" not in head:
            return b""
        chunks = []  # rare here (both servers answer with a length); kept so a chunked answer cannot hang us
        while size := int((await self.reader.readuntil(b"\r\n")).strip(), 16):
            chunks.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)
        await self.reader.readexactly(2)
        return b"".join(chunks)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


@dataclass
class Tally:
    """Outcomes of one run: latency of every 200, counts of everything else."""

    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    def record(self, outcome: int | str, seconds: float) -> None:
        if outcome == 200:
            self.latencies.append(seconds)
        else:
            self.errors[str(outcome)] += 1


async def _one(connection: Connection, request: bytes, timeout_s: float) -> int | str:
    try:
        status, _ = await asyncio.wait_for(connection.exchange(request), timeout_s)
    except TimeoutError:
        return TIMEOUT
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
        return TRANSPORT_ERROR
    return status


def _ports(port: int | Sequence[int]) -> tuple[int, ...]:
    return (port,) if isinstance(port, int) else tuple(port)


async def closed_loop(
    host: str,
    port: int | Sequence[int],
    requests: list[bytes],
    concurrency: int,
    seconds: float,
    timeout_s: float = 30.0,
) -> tuple[Tally, float]:
    """C callers, each sending its next request as soon as its last was answered, until `seconds` passed
    (and at least 2C requests, so that every caller is counted); the images are taken in turn by all.
    Given several ports (replicas of a server), caller k keeps one connection to port k mod their number,
    as a load balancer that keeps connections to its upstreams alive spreads steady clients."""
    tally = Tally()
    numbers = itertools.count()
    stop = time.perf_counter() + seconds
    ports = _ports(port)

    async def caller(k: int) -> None:
        connection = Connection(host, ports[k % len(ports)])
        for i in numbers:
            if time.perf_counter() > stop and i >= 2 * concurrency:
                break
            started = time.perf_counter()
            outcome = await _one(connection, requests[i % len(requests)], timeout_s)
            tally.record(outcome, time.perf_counter() - started)
        connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(caller(k) for k in range(concurrency)))
    return tally, time.perf_counter() - started


async def open_loop(
    host: str,
    port: int | Sequence[int],
    requests: list[bytes],
    rate: float,
    count: int,
    seed: int = 0,
    timeout_s: float = 30.0,
) -> tuple[Tally, float]:
    """`count` requests at Poisson arrivals of `rate` per second, whatever the answers (as real clients do).

    Latency runs from each request's scheduled start, so a late send (client busy, no idle connection)
    counts against the server rather than hiding queueing (coordinated omission). Each request in flight
    needs its own connection (no pipelining); idle ones are reused. Given several ports, request i goes
    to port i mod their number (round robin, as a load balancer's default).
    """
    tally = Tally()
    ports = _ports(port)
    idle: dict[int, list[Connection]] = {p: [] for p in ports}
    rng = random.Random(seed)

    async def send(i: int, scheduled: float) -> None:
        target = ports[i % len(ports)]
        connection = idle[target].pop() if idle[target] else Connection(host, target)
        outcome = await _one(connection, requests[i % len(requests)], timeout_s)
        tally.record(outcome, time.perf_counter() - scheduled)
        idle[target].append(connection)

    tasks = []
    started = time.perf_counter()
    scheduled = started
    for i in range(count):
        scheduled += rng.expovariate(rate)
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(i, scheduled)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    for connection in itertools.chain.from_iterable(idle.values()):
        connection.close()
    return tally, elapsed


def summarize(tally: Tally, elapsed: float, slo_s: float, client_cpu_s: float) -> dict[str, Any]:
    ok = len(tally.latencies)
    sent = ok + sum(tally.errors.values())
    within = sum(1 for v in tally.latencies if v <= slo_s)
    return {
        "requests": sent,
        "ok": ok,
        "errors": dict(tally.errors),
        "seconds": round(elapsed, 3),
        "throughput_rps": round(ok / elapsed, 2),
        # Goodput: answers that were both successful and within the latency SLO, per second.
        "goodput_rps": round(within / elapsed, 2),
        "p50_ms": ms(percentile(tally.latencies, 50)),
        "p95_ms": ms(percentile(tally.latencies, 95)),
        "p99_ms": ms(percentile(tally.latencies, 99)),
        "mean_ms": ms(sum(tally.latencies) / ok) if ok else None,
        # What the load generator itself cost: CPU seconds it used, per request and as a share of one core.
        "client_cpu_ms_per_request": round(1000 * client_cpu_s / sent, 3) if sent else None,
        "client_cpu_share": round(client_cpu_s / elapsed, 3),
    }


async def measure(coroutine: Any, slo_s: float) -> dict[str, Any]:
    """Run a closed_loop/open_loop coroutine and summarize it, with the client's CPU time."""
    cpu = time.process_time()
    tally, elapsed = await coroutine
    return summarize(tally, elapsed, slo_s, time.process_time() - cpu)


async def fetch(host: str, port: int, request: bytes, timeout_s: float = 30.0) -> tuple[int, bytes]:
    """One exchange on a fresh connection: for /metrics and for checking answers."""
    connection = Connection(host, port)
    try:
        return await asyncio.wait_for(connection.exchange(request), timeout_s)
    finally:
        connection.close()
