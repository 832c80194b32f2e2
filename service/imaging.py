"""Uploaded bytes to an RGB uint8 CHW tensor: format allow-list, pixel limit before decoding, EXIF orientation.

Runs on a worker thread (decoding is CPU work). Every way an upload can be bad ends in an `ApiError`
(400, 413 or 415); nothing a client sends may surface as a 500.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import ApiError, bad_image, too_large, unsupported

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP")

# Magic numbers of formats we recognise but refuse (415), so the client learns what to change. Anything
# unrecognised is not an image we can read (400). Pillow never sees refused formats, so their
# parsers (some with a history of bombs and crashes) are never reached.
_REFUSED_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "PSD"),
    (b"%PDF", "PDF"),
    (b"%!PS", "PostScript"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"qoif", "QOI"),
    (b"SIMPLE  =", "FITS"),
)


@dataclass(frozen=True)
class DecodedImage:
    tensor: torch.Tensor  # uint8 [3, H, W], after EXIF orientation
    format: str

    @property
    def width(self) -> int:
        return int(self.tensor.shape[-1])

    @property
    def height(self) -> int:
        return int(self.tensor.shape[-2])


def sniff_format(data: bytes) -> str | None:
    """The format named by the file's magic number, or None when it is not one we know."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:8] == b"ftyp":
        return "HEIF/AVIF"
    for signature, name in _REFUSED_SIGNATURES:
        if data.startswith(signature):
            return name
    return None


def decode_image(data: bytes, max_pixels: int) -> DecodedImage:
    if not data:
        raise bad_image("the image is empty")
    fmt = sniff_format(data)
    if fmt is None:
        raise bad_image("the upload is not a JPEG, PNG or WEBP image")
    if fmt not in ALLOWED_FORMATS:
        raise unsupported(f"{fmt} images are not supported; send JPEG, PNG or WEBP")
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as image:
            # Image.open reads only the header: refuse huge images before any pixel is decoded.
            width, height = image.size
            if width * height > max_pixels:
                raise too_large(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
            # Animated WEBP and multi-picture JPEG: the first frame only; we never seek to others.
            oriented = ImageOps.exif_transpose(image)
            return DecodedImage(to_tensor(oriented), fmt)
    except ApiError:
        raise
    except Image.DecompressionBombError as exc:
        raise too_large(f"image is too large to decode: {exc}") from None
    except UnidentifiedImageError:
        raise bad_image(f"cannot decode this {fmt} image") from None
    except Exception as exc:  # truncated data, corrupt chunks, bad EXIF: all a client's doing
        raise bad_image(f"cannot decode this {fmt} image: {exc}") from None


def to_tensor(image: Image.Image) -> torch.Tensor:
    """Any Pillow mode to RGB uint8 [3, H, W]; 16-bit and float greys are scaled, not clipped."""
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        gray = np.asarray(image).astype(np.float32)
        if image.mode != "F":
            gray = gray / 257.0  # 0..65535 onto 0..255
        pixels = np.repeat(np.clip(np.rint(gray), 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    else:
        if image.mode in ("P", "PA") and "transparency" in image.info:
            image = image.convert("RGBA")
        pixels = np.asarray(image.convert("RGB"))
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))
