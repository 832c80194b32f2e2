"""Smoke tests of bench/compare.py's parts that need no model or server: the load generator, ratios, plot.

The load generator talks to a stub HTTP/1.1 server (asyncio, keep-alive) that answers 200, or 429 for
/full, after reading the whole request by its Content-Length, as a real server does.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import compare  # noqa: E402
import front  # noqa: E402
import loadgen  # noqa: E402
import plot  # noqa: E402


async def _stub(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.lower().split(b"\r\n")
            length = next(int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length"))
            body = await reader.readexactly(length)
            ok = b"/full" not in head.split(b"\r\n")[0] and f"--{loadgen.BOUNDARY}--".encode() in body
            answer = b'{"detections": []}' if ok else b'{"error": {}}'
            writer.write(b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n\r\n%s" % (200 if ok else 429, len(answer), answer))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def _loads() -> tuple[dict, dict, dict, tuple[int, bytes]]:
    server = await asyncio.start_server(_stub, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    good = [loadgen.multipart_request(f"127.0.0.1:{port}", "/detect", b"\x89PNG fake", "image/png")]
    full = [loadgen.multipart_request(f"127.0.0.1:{port}", "/full", b"\xff\xd8\xff fake", "image/jpeg")]
    async with server:
        closed = await loadgen.measure(loadgen.closed_loop("127.0.0.1", port, good, 4, 0.2), slo_s=0.5)
        opened = await loadgen.measure(loadgen.open_loop("127.0.0.1", port, good, 200.0, 40), slo_s=0.5)
        refused = await loadgen.measure(loadgen.closed_loop("127.0.0.1", port, full, 2, 0.05), slo_s=0.5)
        single = await loadgen.fetch("127.0.0.1", port, good[0])
    return closed, opened, refused, single


def test_load_generator_counts_answers_and_errors() -> None:
    closed, opened, refused, single = asyncio.run(_loads())
    assert closed["ok"] == closed["requests"] >= 8
    assert not closed["errors"]
    assert closed["throughput_rps"] > 0
    assert closed["p50_ms"] is not None
    assert closed["client_cpu_share"] >= 0
    assert opened["ok"] == opened["requests"] == 40
    assert refused["ok"] == 0
    assert refused["errors"] == {"429": refused["requests"]}
    assert refused["goodput_rps"] == 0
    assert single == (200, b'{"detections": []}')


async def _spread() -> tuple[dict, dict, list[int], list[int]]:
    """Two stub servers as two replicas; each counts the connections it got and the requests it answered."""
    connections, answered = [0, 0], [0, 0]

    def counting(k: int) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections[k] += 1
            write = writer.write

            def counted(data: bytes) -> None:
                answered[k] += 1
                write(data)

            writer.write = counted  # type: ignore[method-assign]
            await _stub(reader, writer)

        return serve

    servers = [await asyncio.start_server(counting(k), "127.0.0.1", 0) for k in range(2)]
    ports = [server.sockets[0].getsockname()[1] for server in servers]
    good = [loadgen.multipart_request("replicas", "/detect", b"\x89PNG fake", "image/png")]
    async with servers[0], servers[1]:
        closed = await loadgen.measure(loadgen.closed_loop("127.0.0.1", ports, good, 4, 0.2), slo_s=0.5)
        await asyncio.sleep(0.05)  # the servers see the callers' connections close
        closed_connections, closed_answers = list(connections), list(answered)
        opened = await loadgen.measure(loadgen.open_loop("127.0.0.1", ports, good, 200.0, 40), slo_s=0.5)
    open_answers = [answered[k] - closed_answers[k] for k in range(2)]
    return closed, opened, closed_connections, closed_answers + open_answers


def test_load_generator_spreads_over_replicas() -> None:
    closed, opened, connections, answers = asyncio.run(_spread())
    closed_a, closed_b, open_a, open_b = answers
    assert connections == [2, 2]  # four callers, each keeping one connection, two to each replica
    assert closed["ok"] == closed["requests"] == closed_a + closed_b
    assert closed_a > 0
    assert closed_b > 0
    assert opened["ok"] == 40
    assert (open_a, open_b) == (20, 20)  # round robin, request by request


def _system(rps: float, p99: float, batch: float = 1.0) -> dict:
    closed = [{"mode": "closed", "concurrency": c, "throughput_rps": rps * min(c, 2), "p50_ms": 50.0 * c,
               "p99_ms": p99 * c, "goodput_rps": rps, "mean_batch_size": batch} for c in (1, 8)]  # fmt: skip
    opened = [{"mode": "open", "rate_factor": 1.0, "offered_rps": 20.0, "throughput_rps": rps, "goodput_rps": rps,
               "p50_ms": 60.0, "p99_ms": p99, "mean_batch_size": batch}]  # fmt: skip
    return {"started_s": 5.0, "settings": {}, "same_answer_as_service": True, "points": closed + opened}


def test_ratios_and_plot(tmp_path: Path) -> None:
    batches = [{"batch_size": 1, "images_per_s": 20.0, "batch_p50_ms": 45.0},
               {"batch_size": 8, "images_per_s": 25.0, "batch_p50_ms": 300.0}]  # fmt: skip
    service = _system(20, 80, 4)
    service["points"].append({"mode": "open_timeout_slo", "rate_factor": 1.0, "offered_rps": 20.0,
                              "throughput_rps": 19, "goodput_rps": 19, "p50_ms": 60.0, "p99_ms": 90.0})  # fmt: skip
    task = {"raw": {"batches": batches}, "systems": {"service": service, "batch1": _system(18, 90),
                                                    "litserve": _system(10, 200, 4),
                                                    "service_w2": _system(25, 60, 4),
                                                    "litserve_w2": _system(20, 100, 4),
                                                    "service_r2": _system(30, 120, 4)}}  # fmt: skip
    ratios = compare.ratios(task)
    assert ratios["goodput_rps_by_offered_load"] == {
        "1x": {"service": 20, "service, timeout = SLO": 19, "batch1": 18, "litserve": 10, "service_w2": 25,
               "litserve_w2": 20, "service_r2": 30}
    }  # fmt: skip
    replicas = ratios["targets_replicas"]  # two service processes, also against LitServe's two workers
    assert replicas["saturation_vs_raw_batched"]["value"] == 2.4
    assert replicas["peak_throughput_vs_litserve"]["value"] == 1.5
    assert replicas["p99_lower_than_litserve_at_c8"]["met"] is False  # 960 vs 800 ms
    two = ratios["targets_two_workers"]  # each with two workers, against the same raw limit
    assert two["saturation_vs_raw_batched"]["value"] == 2.0
    assert two["peak_throughput_vs_litserve"]["value"] == 1.25
    assert two["c8_vs_best_sequential"]["value"] == 2.0  # 50 at c = 8 against 25 (its own c = 1)
    assert two["p99_lower_than_litserve_at_c8"]["met"] is True
    targets = ratios["targets"]
    assert targets["saturation_vs_raw_batched"] == {"value": 1.6, "target": ">= 0.9", "met": True}
    assert targets["p50_overhead_c1_vs_forward_b1"]["value"] == round(50 / 45 - 1, 3)
    assert targets["peak_throughput_vs_litserve"]["value"] == 2.0
    assert targets["p99_lower_than_litserve_at_c8"]["met"] is True
    assert targets["cold_start_s"]["met"] is True
    settings = {"slo_ms": 500, "quick": True, "max_batch_size": 8}
    report = {"machine": {"cpus": 2, "torch": "x"}, "images": {"count": 2}, "settings": settings,
              "tasks": {"detect": task | {"ratios": ratios}}}  # fmt: skip
    plot.figure(json.loads(json.dumps(report)), tmp_path / "out.png")
    assert (tmp_path / "out.png").read_bytes().startswith(b"\x89PNG")


def test_gpu_ratios_compare_batching_with_batching_off_at_the_highest_concurrency() -> None:
    batches = [{"batch_size": 1, "images_per_s": 20.0, "batch_p50_ms": 45.0},
               {"batch_size": 32, "images_per_s": 100.0, "batch_p50_ms": 300.0}]  # fmt: skip
    systems = {"service": _system(30, 80, 4), "batch1": _system(10, 90), "service_r2": _system(45, 80, 4)}
    ratios = compare.ratios({"raw": {"batches": batches}, "systems": systems}, "cuda")
    targets = ratios["targets"]
    assert targets["saturation_vs_raw_batched"] == {"value": 0.6, "target": ">= 0.85", "met": False}
    assert targets["batching_vs_off_at_c8"] == {"value": 3.0, "target": ">= 3", "met": True}
    assert ratios["raw_batched_vs_batch1"] == 5.0
    assert ratios["targets_replicas"]["saturation_vs_raw_batched"] == {"value": 0.9, "target": ">= 0.85", "met": True}
    assert "targets_two_workers" not in ratios  # not run


def test_a_run_that_needs_nginx_stops_at_once_without_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(front, "find_nginx", lambda: None)
    assert compare.parse(["--systems", "service", "service_r2"]).systems == ["service", "service_r2"]
    with pytest.raises(SystemExit) as stopped:
        compare.parse(["--systems", "service", "service_r2_nginx"])
    assert stopped.value.code == 2
    assert "service_r2_nginx needs nginx" in capsys.readouterr().err


def test_bar_panels_draw_one_panel_per_entry(tmp_path: Path) -> None:
    one, two = tmp_path / "one.png", tmp_path / "two.png"
    plot.bar_panels(one, {"a": {"x": 1.0, "y": 2.0}}, reference=1.0)
    plot.bar_panels(two, {"a": {"x": 1.0}, "b": {"x": 3.0}}, colours={"b": ["tab:green"]})
    with Image.open(one) as first, Image.open(two) as second:
        assert first.format == second.format == "PNG"
        assert second.width > first.width  # side by side
