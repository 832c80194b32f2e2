"""Uploaded bytes to an RGB uint8 CHW tensor: format allow-list, pixel limit before decoding, EXIF orientation.

Runs on a worker thread (decoding is CPU work). Every way an upload can be bad ends in an `ApiError`
(400, 413, 415 or 422); nothing a client sends may surface as a 500.

Images whose longer side exceeds `Limits.max_side` are shrunk here, before they reach a queue: the
model then never sees more than max_side² pixels, which bounds batch padding and Mask R-CNN's
mask pasting whatever the upload's size. `DecodedImage` keeps the uploaded size so that results can
be mapped back to it. JPEGs are decoded at reduced scale directly (libjpeg's DCT scaling), so a large
photo never exists at full size in memory.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import ExifTags, Image, UnidentifiedImageError

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


# EXIF orientation to the transposition that displays the image upright (as ImageOps.exif_transpose).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclass(frozen=True)
class Limits:
    max_pixels: int
    max_side: int = 1 << 30
    max_aspect_ratio: float = math.inf


@dataclass(frozen=True)
class DecodedImage:
    tensor: torch.Tensor  # uint8 [3, h, w] after EXIF orientation, shrunk to fit max_side
    width: int  # of the uploaded image after EXIF orientation: what results refer to
    height: int

    @property
    def scaled(self) -> bool:
        return (self.height, self.width) != tuple(self.tensor.shape[-2:])


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


def decode_image(data: bytes, limits: Limits) -> DecodedImage:
    """Decode and orient the upload within `limits` (ApiError: 400, 413, 415 or 422 when it is not)."""
    if not data:
        raise bad_image("the image is empty")
    fmt = sniff_format(data)
    if fmt is None:
        raise bad_image("the upload is not a JPEG, PNG or WEBP image")
    if fmt not in ALLOWED_FORMATS:
        raise unsupported(f"{fmt} images are not supported; send JPEG, PNG or WEBP")
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as image:
            # Image.open reads only the header: every check below happens before any pixel is decoded.
            _check_header(image, limits)
            orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
            swap = orientation in (5, 6, 7, 8)  # these turn the image a quarter
            width, height = image.size[::-1] if swap else image.size
            target = fit_within(width, height, limits.max_side)
            stored = target[::-1] if swap else target  # the target in the file's own orientation
            box = None
            if fmt == "JPEG" and target != (width, height):
                # Decode at 1/2, 1/4 or 1/8 scale when that still leaves at least the target size. The
                # scaled image is rounded up to whole pixels (ceil(W / s)); `box` is where the upload lies
                # in it, so resizing that box, not the padded whole, keeps coordinates in place.
                drafted = image.draft(None, stored)
                box = drafted[1] if drafted is not None else None
            return DecodedImage(to_tensor(image, stored, orientation, box), width, height)
    except ApiError:
        raise
    except Image.DecompressionBombError as exc:
        raise too_large(f"image is too large to decode: {exc}") from None
    except UnidentifiedImageError:
        raise bad_image(f"cannot decode this {fmt} image") from None
    except Exception as exc:  # truncated data, corrupt chunks, bad EXIF: all a client's doing
        raise bad_image(f"cannot decode this {fmt} image: {exc}") from None


def _check_header(image: Image.Image, limits: Limits) -> None:
    width, height = image.size
    if width * height > limits.max_pixels:
        raise too_large(f"image is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels}")
    # APNG, animated WEBP, multi-picture JPEG (MPO): one image per request, and no frame is ever sought.
    if getattr(image, "n_frames", 1) != 1 or getattr(image, "is_animated", False):
        raise unsupported("animated and multi-frame images are not supported; send a single still image")
    ratio = max(width, height) / max(1, min(width, height))
    if ratio > limits.max_aspect_ratio:
        raise ApiError(
            422,
            "unprocessable_image",
            f"image is {width}x{height}; the models take aspect ratios up to {limits.max_aspect_ratio:g}:1",
        )


def fit_within(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) scaled down, aspect kept, so that the longer side is at most max_side."""
    longest = max(width, height)
    if longest <= max_side:
        return width, height
    scale = max_side / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def to_tensor(
    image: Image.Image,
    size: tuple[int, int] | None = None,
    orientation: int = 1,
    box: tuple[float, float, float, float] | None = None,
) -> torch.Tensor:
    """Any Pillow mode to RGB uint8 [3, H, W]; greys scaled, not clipped.

    `size` (w, h) resizes (the region `box` of the image, when given: Pillow's draft box), then the EXIF
    `orientation` is applied: shrinking first means a large upload is copied at full size at most once
    (to RGB, and not even that when it is RGB already).
    """
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        gray = np.asarray(image).astype(np.float32)
        if image.mode != "F":
            gray = gray / 257.0  # 0..65535 onto 0..255
        image = Image.fromarray(np.clip(np.rint(gray), 0, 255).astype(np.uint8), "L")
    if image.mode in ("P", "PA") and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode != "RGB":
        image = image.convert("RGB")
    if box is not None and box == (0, 0, *image.size):
        box = None
    if size is not None and (image.size != size or box is not None):
        # Pillow's resampling widens its filter when shrinking (antialiasing), on uint8, in C.
        image = image.resize(size, Image.Resampling.BILINEAR, box=box)
    if orientation in _TRANSPOSE:
        image = image.transpose(_TRANSPOSE[orientation])
    # copy(): CHW order, and writable (Pillow's buffer is read-only, which torch warns about).
    return torch.from_numpy(np.asarray(image).transpose(2, 0, 1).copy())
