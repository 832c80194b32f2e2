"""Connection-level limits that uvicorn lacks: a deadline and a size cap on each request's headers.

uvicorn (httptools) waits for a request's headers as long as the client likes and buffers them without
bound; its only guards are `limit_concurrency` (503 past N connections or requests) and the keep-alive
timeout between requests. So a client that opens connections and sends a header line now and then
(slowloris) holds them all. Like nginx's client_header_timeout and large_client_header_buffers:

- HEADER_TIMEOUT_S: the request line and headers must have arrived this long after the connection opened
  (or after the request's first byte, on a kept-alive connection); else 408 and the connection is closed.
- MAX_HEADER_BYTES: request line plus headers at most this size; else 431 and the connection is closed.

Each refusal counts in `densepred_connections_refused_total{reason}`, as does uvicorn's own 503 at the
connection limit. These requests never reach the app, so they have no endpoint and no request metrics.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

Refused = Callable[[str], None]


def _response(status: int, code: str, message: str) -> bytes:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


async def _headers_too_large(scope: Any, receive: Any, send: Any) -> None:
    """Answers a request whose headers completed over the limit (the app never sees it)."""
    body = json.dumps({"error": {"code": "headers_too_large", "message": "request headers too large"}}).encode()
    headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": 431, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus a header deadline and a header size cap (see the module doc)."""

    header_timeout_s: float = 10.0
    max_header_bytes: int = 32 * 1024
    on_refused: Refused = staticmethod(lambda reason: None)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._awaiting_headers = False
        self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        waiting = self._awaiting_headers
        super().data_received(data)
        if waiting and self._awaiting_headers and not self.transport.is_closing():
            # The headers are still incomplete after this chunk: every byte of it was header bytes.
            self._header_bytes += len(data)
            if self._header_bytes > self.max_header_bytes:
                self._refuse(431, "headers_too_large", f"request headers over {self.max_header_bytes} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._awaiting_headers:  # the next request on a kept-alive connection: its own deadline
            self._await_headers()

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._stop_header_timer()
        limit = self.limit_concurrency
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            self.on_refused("too_many_connections")  # uvicorn answers 503 below
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size <= self.max_header_bytes:
            super().on_headers_complete()
            return
        self.on_refused("headers_too_large")
        app, self.app = self.app, _headers_too_large
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def _await_headers(self) -> None:
        self._awaiting_headers = True
        self._header_bytes = 0
        self._stop_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_deadline)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_deadline(self) -> None:
        self._header_timer = None
        if self._awaiting_headers and not self.transport.is_closing():
            self._refuse(408, "header_timeout", f"request headers not received within {self.header_timeout_s:g} s")

    def _refuse(self, status: int, reason: str, message: str) -> None:
        self._awaiting_headers = False
        self._stop_header_timer()
        self.on_refused(reason)
        self.transport.write(_response(status, reason, message))
        self.transport.close()


def guarded_protocol(header_timeout_s: float, max_header_bytes: int, on_refused: Refused) -> type[HttpToolsProtocol]:
    """The protocol class to give uvicorn.Config(http=...), with these limits."""
    return type(
        "GuardedHttpProtocol",
        (GuardedHttpProtocol,),
        {
            "header_timeout_s": header_timeout_s,
            "max_header_bytes": max_header_bytes,
            "on_refused": staticmethod(on_refused),
        },
    )
