"""A generated corpus of malformed, truncated, degenerate and hostile uploads (deterministic).

Each case is (name, request keyword arguments for httpx, is_bomb). Bombs are built by hand from their
headers (a PNG IHDR, a JPEG SOF, a WEBP VP8X claiming billions of pixels), so generating them costs
nothing and sending them is cheap: the point is that the server must refuse them just as cheaply.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
from PIL import Image
from service_helpers import MEDIA_TYPES, as_multipart, as_raw, encode

Case = tuple[str, dict[str, Any], bool]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int, extra: bytes = b"") -> bytes:
    """A PNG whose header claims width x height 8-bit RGB; the image data is one tiny deflate stream."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    chunks = _png_chunk(b"IHDR", ihdr) + extra + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def ztxt_bomb() -> bytes:
    """A small PNG with a compressed text chunk that inflates to 64 MB."""
    text = b"Comment\x00\x00" + zlib.compress(b"\x00" * (64 << 20), 9)
    return png_bomb(16, 16, _png_chunk(b"zTXt", text))


def jpeg_bomb(width: int = 65_500, height: int = 65_500) -> bytes:
    """SOI, a baseline SOF0 claiming width x height with 3 components, and a stub of a scan."""
    sof = struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return b"\xff\xd8" + b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof + b"\xff\xda\x00\x08" + b"\x00" * 64


def webp_bomb(width: int = 16_384, height: int = 16_384) -> bytes:
    """A VP8X (extended WEBP) header whose canvas is width x height."""
    vp8x = b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    body = b"WEBP" + b"VP8X" + struct.pack("<I", len(vp8x)) + vp8x
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _seeds() -> dict[str, bytes]:
    noise = np.random.default_rng(7).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    return {fmt: encode(noise, fmt, **({"quality": 90} if fmt != "PNG" else {})) for fmt in ("PNG", "JPEG", "WEBP")}


def _raw(data: bytes, media: str) -> dict[str, Any]:
    return {"content": data, "headers": {"Content-Type": media}}


def _garbage(rng: np.random.Generator) -> Iterator[Case]:
    yield "empty", _raw(b"", "image/png"), False
    yield "one byte", _raw(b"\x89", "image/png"), False
    yield "zeros", _raw(b"\x00" * 64, "image/jpeg"), False
    yield "text as png", _raw(b"hello, world", "image/png"), False
    yield "html", _raw(b"<html><body>hi</body></html>", "image/webp"), False
    yield "json", _raw(b'{"image": "x"}', "image/jpeg"), False
    for i in range(20):
        yield f"random {i}", _raw(rng.bytes(int(rng.integers(1, 4096))), "image/png"), False
    for magic, media in ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff\xe0", "image/jpeg")):
        for i in range(5):
            yield f"magic then noise {media} {i}", _raw(magic + rng.bytes(64 << i), media), False
    for i in range(5):
        yield f"riff webp then noise {i}", _raw(b"RIFF\x10\x00\x00\x00WEBP" + rng.bytes(32 << i), "image/webp"), False


def _damaged(rng: np.random.Generator) -> Iterator[Case]:
    for fmt, data in _seeds().items():
        media = MEDIA_TYPES[fmt]
        for cut in np.linspace(1, len(data) - 1, 15).astype(int):
            yield f"{fmt} cut at {cut}", _raw(data[:cut], media), False
        for i in range(15):
            damaged = bytearray(data)
            for position in rng.integers(0, min(len(data), 200 if i % 2 else len(data)), 1 + i % 4):
                damaged[position] ^= int(rng.integers(1, 256))
            yield f"{fmt} corrupted {i}", _raw(bytes(damaged), media), False


def _other_formats() -> Iterator[Case]:
    picture = Image.fromarray(np.full((16, 16, 3), 90, dtype=np.uint8))
    for fmt in ("GIF", "BMP", "TIFF", "ICO", "PPM", "TGA", "PCX", "JPEG2000", "QOI"):
        buffer = io.BytesIO()
        picture.save(buffer, format=fmt)
        yield f"{fmt} as png", _raw(buffer.getvalue(), "image/png"), False
    for name, data in (
        ("pdf", b"%PDF-1.7\n1 0 obj <<>> endobj\n"),
        ("eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"),
        ("fits", b"SIMPLE  =                    T" + b" " * 50),
        ("heif", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic"),
        ("psd", b"8BPS\x00\x01" + b"\x00" * 40),
        ("svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="99999" height="99999"/>'),
    ):
        yield f"{name} as jpeg", _raw(data, "image/jpeg"), False


def _bombs() -> Iterator[Case]:
    yield "png header 50000x50000", _raw(png_bomb(50_000, 50_000), "image/png"), True
    yield "png header 2^31-1 wide", _raw(png_bomb(2**31 - 1, 1), "image/png"), True
    yield "png header 7000x7000", _raw(png_bomb(7_000, 7_000), "image/png"), True  # 49 MP, just over the limit
    yield "png ztxt 64 MB", _raw(ztxt_bomb(), "image/png"), True
    yield "jpeg sof 65500x65500", _raw(jpeg_bomb(), "image/jpeg"), True
    yield "jpeg sof 10000x5000", _raw(jpeg_bomb(10_000, 5_000), "image/jpeg"), True
    yield "webp vp8x 16384x16384", _raw(webp_bomb(), "image/webp"), True
    yield "multipart png bomb", as_multipart(png_bomb(50_000, 50_000)), True
    yield "gif 65535x65535", _raw(b"GIF89a\xff\xff\xff\xff\x00\x00\x00;", "image/png"), True
    frames = [Image.new("L", (8, 8), i) for i in range(200)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="PNG", save_all=True, append_images=frames[1:])
    yield "apng 200 frames", _raw(buffer.getvalue(), "image/png"), True


def _degenerate() -> Iterator[Case]:
    for width, height in ((1, 1), (1, 4000), (4000, 1), (2, 100), (3, 3), (64, 4)):
        yield f"{width}x{height}", as_raw(encode(Image.new("RGB", (width, height), "gray"))), False
    base = Image.fromarray(np.random.default_rng(3).integers(0, 256, (20, 28, 3), dtype=np.uint8))
    for mode in ("1", "L", "LA", "P", "RGBA", "I;16"):
        image = base.convert("L").convert(mode) if mode == "I;16" else base.convert(mode)
        yield f"mode {mode}", as_raw(encode(image)), False
    yield "mode CMYK", as_raw(encode(base.convert("CMYK"), "JPEG"), "JPEG"), False
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        yield f"exif {orientation}", as_raw(encode(base, "JPEG", exif=exif.tobytes()), "JPEG"), False
    yield "exif garbage", as_raw(encode(base, "JPEG", exif=b"Exif\x00\x00" + b"\xff" * 64), "JPEG"), False


def _uploads() -> Iterator[Case]:
    png = encode(Image.new("RGB", (16, 16), "white"))
    yield "no content type", {"content": png}, False
    yield "text/plain", _raw(png, "text/plain"), False
    yield "image/gif", _raw(png, "image/gif"), False
    yield "content type params", _raw(png, "image/png; charset=binary"), False
    yield "jpeg declared png", _raw(encode(Image.new("RGB", (16, 16)), "JPEG"), "image/png"), False
    yield "multipart without boundary", _raw(b"--x\r\n\r\n", "multipart/form-data"), False
    yield "multipart wrong field", {"files": {"picture": ("a.png", png, "image/png")}}, False
    yield "multipart text field", {"data": {"image": "not a file"}}, False
    two = [("image", ("a.png", png, "image/png")), ("image", ("b.png", png, "image/png"))]
    yield "multipart two files", {"files": two}, False
    yield "multipart empty file", as_multipart(b""), False
    boundary = "b" * 300
    long_boundary = f"multipart/form-data; boundary={boundary}"
    yield "multipart long boundary", _raw(f"--{boundary}\r\n".encode(), long_boundary), False
    redos = 'multipart/form-data; boundary="' + "\\" * 40 + "a"
    yield "multipart redos boundary", _raw(b"--a\r\n", redos), True
    headers = "".join(f"X-H{i}: v\r\n" for i in range(2000))
    body = f'--x\r\nContent-Disposition: form-data; name="image"; filename="a"\r\n{headers}\r\n'.encode() + png
    yield "multipart many part headers", _raw(body + b"\r\n--x--\r\n", "multipart/form-data; boundary=x"), False
    yield "multipart crlf preamble", _raw(b"\r\n" * 200_000 + b"--x--\r\n", "multipart/form-data; boundary=x"), True


def _parameters() -> Iterator[Case]:
    png = encode(Image.new("RGB", (16, 16), "white"))
    for params in (
        {"score_threshold": "nan"},
        {"score_threshold": "inf"},
        {"score_threshold": "1e309"},
        {"max_detections": "1e3"},
        {"max_detections": "-5"},
        {"mask_threshold": ""},
        {"classes": "\u202e\u0000"},
        {"classes": "circle," * 500},
        {"timeout": "nan"},
        {"timeout": "1e400"},
    ):
        yield f"params {params}"[:60], {**as_raw(png), "params": params}, False


def corpus() -> list[Case]:
    rng = np.random.default_rng(2024)
    groups = (_garbage(rng), _damaged(rng), _other_formats(), _bombs(), _degenerate(), _uploads(), _parameters())
    return [case for group in groups for case in group]
