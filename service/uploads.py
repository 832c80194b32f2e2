"""Read the uploaded image's bytes: multipart field `image` or a raw `image/*` body, size-capped throughout.

The cap is enforced twice: against Content-Length before reading a byte, and while reading, so a
missing or lying Content-Length (chunked uploads) cannot make us buffer more than the limit.
"""

from __future__ import annotations

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.types import Message, Receive

from service.errors import ApiError, bad_image, client_gone, too_large, unsupported

RAW_TYPES = frozenset({"image/jpeg", "image/jpg", "image/png", "image/webp"})
MULTIPART = "multipart/form-data"
FIELD = "image"
# Boundaries and part headers around the file; generous, and still bounded.
MULTIPART_OVERHEAD = 64 * 1024


class _BodyTooLarge(Exception):
    pass


def _capped(receive: Receive, limit: int) -> Receive:
    received = 0

    async def capped_receive() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise _BodyTooLarge
        return message

    return capped_receive


def _declared_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ApiError(400, "bad_request", "Content-Length is not a number") from None


async def read_image_bytes(request: Request, max_bytes: int) -> bytes:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == MULTIPART:
        limit = max_bytes + MULTIPART_OVERHEAD
    elif media_type in RAW_TYPES:
        limit = max_bytes
    else:
        shown = media_type or "none"
        raise unsupported(
            f"Content-Type {shown} is not accepted; send multipart/form-data with a field {FIELD!r}, "
            "or the raw image as image/jpeg, image/png or image/webp"
        )
    declared = _declared_length(request)
    if declared is not None and declared > limit:
        raise too_large(f"the upload is {declared} bytes; the limit is {max_bytes}")
    capped = Request(request.scope, _capped(request.receive, limit))
    try:
        data = await (_read_form(capped) if media_type == MULTIPART else capped.body())
    except _BodyTooLarge:
        raise too_large(f"the upload exceeds the limit of {max_bytes} bytes") from None
    except ClientDisconnect:
        raise client_gone("the client went away during the upload") from None
    if len(data) > max_bytes:
        raise too_large(f"the image is {len(data)} bytes; the limit is {max_bytes}")
    if not data:
        raise bad_image("the image is empty")
    return data


async def _read_form(request: Request) -> bytes:
    try:
        form = await request.form(max_files=1, max_fields=8, max_part_size=MULTIPART_OVERHEAD)
    except HTTPException as exc:  # Starlette's verdict on a malformed multipart body
        raise ApiError(400, "invalid_multipart", str(exc.detail)) from None
    try:
        part = form.get(FIELD)
        if part is None:
            raise ApiError(422, "invalid_parameter", f"multipart field {FIELD!r} is missing")
        if not isinstance(part, UploadFile):
            raise ApiError(422, "invalid_parameter", f"multipart field {FIELD!r} must be a file, not text")
        return await part.read()
    finally:
        await form.close()
