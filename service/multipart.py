"""The image out of a multipart/form-data body that is already in memory: no temporary file, ever.

Starlette's form parser spools every file part over 1 MiB to a temporary file (/tmp, which deployments
cap), through a worker thread per chunk, and the service read it back into memory anyway. Here the body
was read under the byte limit first (uploads.py), so the parts are slices of it, found by python-multipart.
The rules are Starlette's, as before: one file, a few small text fields, field names required.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from service.errors import ApiError

FIELD = "image"
MAX_FILES = 1
MAX_FIELDS = 8
MAX_FIELD_BYTES = 64 * 1024  # a text field (not a file) larger than this is refused


def malformed(message: str) -> ApiError:
    return ApiError(400, "invalid_multipart", message)


@dataclass
class _Part:
    disposition: bytes = b""
    name: str = ""
    is_file: bool = False
    chunks: list[bytes | memoryview] = field(default_factory=list)
    size: int = 0


class _Collector:
    """python-multipart's callbacks: the parts' headers and data, as views into the body where possible."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.parts: list[_Part] = []
        self.files = self.fields = 0
        self.ended = False
        self._header_name = self._header_value = b""

    @property
    def part(self) -> _Part:
        return self.parts[-1]

    def on_part_begin(self) -> None:
        self.parts.append(_Part())

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self.part.disposition = self._header_value
        self._header_name = self._header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.part.disposition)
        if b"name" not in options:
            raise malformed('the Content-Disposition header field "name" must be provided')
        self.part.name = options[b"name"].decode("utf-8", errors="replace")
        self.part.is_file = b"filename" in options
        if self.part.is_file:
            self.files += 1
            if self.files > MAX_FILES:
                raise malformed(f"too many files: at most {MAX_FILES}")
        else:
            self.fields += 1
            if self.fields > MAX_FIELDS:
                raise malformed(f"too many fields: at most {MAX_FIELDS}")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self.part
        part.size += end - start
        if not part.is_file and part.size > MAX_FIELD_BYTES:
            raise malformed(f"field {part.name!r} is over {MAX_FIELD_BYTES // 1024} KiB")
        # A view when the data is the body itself (no copy); a copy when the parser hands out its own buffer.
        part.chunks.append(memoryview(data)[start:end] if data is self.body else data[start:end])

    def on_end(self) -> None:
        self.ended = True


def image_part(body: bytes, content_type: str) -> bytes:
    """The bytes of the file field `image`; 400 for a malformed body, 422 when the field is missing or text."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise malformed("missing boundary in multipart")
    collector = _Collector(body)
    callbacks = {name: getattr(collector, name) for name in dir(collector) if name.startswith("on_")}
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        parser.write(body)
        parser.finalize()
    except FormParserError:
        raise malformed("invalid multipart data") from None
    if not collector.ended:
        raise malformed("the multipart body ends before its closing boundary")
    part = next((p for p in collector.parts if p.name == FIELD), None)
    if part is None:
        raise ApiError(422, "invalid_parameter", f"multipart field {FIELD!r} is missing")
    if not part.is_file:
        raise ApiError(422, "invalid_parameter", f"multipart field {FIELD!r} must be a file, not text")
    return b"".join(part.chunks)
