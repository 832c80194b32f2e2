"""Read the uploaded image's bytes: multipart field `image` or a raw `image/*` body, bounded in size, in
time and, across all requests, in memory.

- Size: against Content-Length before reading a byte, and while reading, so a missing or lying
  Content-Length (chunked uploads) cannot make us buffer more than the limit (413).
- Time: the whole body must arrive by a deadline (BODY_TIMEOUT_S, never past the request's own), else
  408 and the connection is closed, as nginx's client_body_timeout does; a client trickling a byte a
  second holds a connection for that long, and nothing else.
- Memory: every body being read or decoded counts its bytes received so far against one budget
  (MAX_UPLOAD_BUFFER_BYTES); past it, 429 `uploads_full`. Counted as received, so slow clients that
  announce 20 MB and send 10 bytes cost 10 bytes.
- Disk: none. Multipart bodies are parsed in memory (multipart.py), never spooled to /tmp.
"""

from __future__ import annotations

import asyncio
import time

from starlette.requests import Request

from service.errors import ApiError, bad_image, client_gone, too_large, unsupported
from service.multipart import FIELD, image_part

RAW_TYPES = frozenset({"image/jpeg", "image/jpg", "image/png", "image/webp"})
MULTIPART = "multipart/form-data"
# Boundaries and part headers around the file; generous, and still bounded.
MULTIPART_OVERHEAD = 64 * 1024


class UploadBudget:
    """Bytes of request bodies held in memory by all requests together. Event-loop only: no lock needed."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def reservation(self) -> Reservation:
        return Reservation(self)


class Reservation:
    """One request's share of the budget; `release` (idempotent) gives it back once the bytes are dropped."""

    def __init__(self, budget: UploadBudget) -> None:
        self._budget = budget
        self.held = 0

    def add(self, size: int) -> None:
        budget = self._budget
        if budget.held + size > budget.limit:
            raise ApiError(
                429,
                "uploads_full",
                f"the server holds {budget.limit} bytes of uploads in flight already; retry in 1 s",
                {"Retry-After": "1"},
            )
        budget.held += size
        self.held += size

    def shrink_to(self, size: int) -> None:
        size = min(size, self.held)
        self._budget.held -= self.held - size
        self.held = size

    def release(self) -> None:
        self.shrink_to(0)


def _declared_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ApiError(400, "bad_request", "Content-Length is not a number") from None


def _limit_for(media_type: str, max_bytes: int) -> int:
    if media_type == MULTIPART:
        return max_bytes + MULTIPART_OVERHEAD
    if media_type in RAW_TYPES:
        return max_bytes
    shown = media_type or "none"
    raise unsupported(
        f"Content-Type {shown} is not accepted; send multipart/form-data with a field {FIELD!r}, "
        "or the raw image as image/jpeg, image/png or image/webp"
    )


async def read_image_bytes(request: Request, max_bytes: int, reservation: Reservation, deadline: float) -> bytes:
    """The image's bytes; `deadline` is a time.perf_counter() by which the whole body must have arrived."""
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";")[0].strip().lower()
    limit = _limit_for(media_type, max_bytes)
    declared = _declared_length(request)
    if declared is not None and declared > limit:
        raise too_large(f"the upload is {declared} bytes; the limit is {max_bytes}")
    allowed_s = deadline - time.perf_counter()
    try:
        async with asyncio.timeout(allowed_s):
            body = await _read_body(request, limit, max_bytes, reservation)
    except TimeoutError:
        raise ApiError(
            408, "body_timeout", f"the upload did not arrive within {max(allowed_s, 0):.3g} s", {"Connection": "close"}
        ) from None
    if media_type == MULTIPART:
        data = image_part(body, content_type)
        del body
        reservation.shrink_to(len(data))
    else:
        data = body
    if len(data) > max_bytes:
        raise too_large(f"the image is {len(data)} bytes; the limit is {max_bytes}")
    if not data:
        raise bad_image("the image is empty")
    return data


async def _read_body(request: Request, limit: int, max_bytes: int, reservation: Reservation) -> bytes:
    # Straight from the ASGI receive channel: Starlette's request.stream() would do the same, minus the cap.
    chunks: list[bytes] = []
    received = 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise client_gone("the client went away during the upload")
        chunk = message.get("body", b"")
        received += len(chunk)
        if received > limit:
            raise too_large(f"the upload exceeds the limit of {max_bytes} bytes")
        if chunk:
            reservation.add(len(chunk))
            chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
