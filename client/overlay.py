"""Draw a densepred answer over its image: masks tinted per class, outlines, boxes, labels and scores.

The service's `?render=png` and the `densepred` command both call `render_overlay`, so a browser and
the command line see the same picture. The result has the size of the image as displayed (after EXIF
orientation), which is the frame every coordinate in a response refers to.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps
from pycocotools import mask as mask_utils

from client.api import ImageSource, read_image

RGB = tuple[int, int, int]
Font = ImageFont.ImageFont | ImageFont.FreeTypeFont

# Sasha Trubetskoy's "20 distinct colours", strongest first: neighbouring class ids never look alike.
PALETTE: tuple[RGB, ...] = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
    (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40),
    (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128),
    (128, 128, 128), (255, 225, 25),
)  # fmt: skip


def color_for(label_id: int) -> RGB:
    return PALETTE[(label_id - 1) % len(PALETTE)]  # ids start at 1 (0 is background): class 1 gets red


def open_image(source: ImageSource | Image.Image) -> Image.Image:
    """RGB with EXIF orientation applied: the picture that the service's coordinates refer to."""
    image = source if isinstance(source, Image.Image) else Image.open(io.BytesIO(read_image(source)))
    return ImageOps.exif_transpose(image).convert("RGB")


def render_overlay(image: Image.Image, response: Mapping[str, Any], alpha: float = 0.45) -> Image.Image:
    """The overlay of one `/segment`, `/detect` or `/instances` response on the (oriented) image it answered."""
    width, height = image.size
    declared = response.get("image") or {}
    if (declared.get("width"), declared.get("height")) != (width, height):
        raise ValueError(f"the response is for a {declared.get('width')}x{declared.get('height')} image, "
                         f"not this {width}x{height} one; was EXIF orientation applied?")  # fmt: skip
    segments = response.get("segments")
    # Lowest score first, so the strongest detection is drawn last and stays on top.
    items = segments if segments is not None else sorted(response.get("detections", []), key=lambda d: d["score"])
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32).copy()
    for item in items:
        if "mask" in item:
            _tint(pixels, _decode(item["mask"], height, width), color_for(item["label_id"]), alpha)
    canvas = Image.fromarray(np.rint(pixels).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    style = _Style.for_size(width, height)
    if segments is not None:
        _legend(draw, segments, style, width * height)
    else:
        # Every box before any label, so no box line ever crosses a label's text.
        for detection in items:
            draw.rectangle(detection["box"], outline=color_for(detection["label_id"]), width=style.line)
        for detection in items:
            _label(draw, detection, style, width, height)
    return canvas


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _decode(rle: Mapping[str, Any], height: int, width: int) -> np.ndarray:
    if list(rle["size"]) != [height, width]:
        raise ValueError(f"mask size {rle['size']} does not match the {width}x{height} image")
    counts = rle["counts"]
    encoded = {"size": [height, width], "counts": counts.encode() if isinstance(counts, str) else counts}
    decoded = mask_utils.decode(encoded)
    return np.asarray(decoded, dtype=bool)


def _tint(pixels: np.ndarray, mask: np.ndarray, color: RGB, alpha: float) -> None:
    """Blend `color` into the mask's pixels and paint its outline solid, so touching instances stay apart."""
    pixels[mask] = pixels[mask] * (1 - alpha) + np.asarray(color, dtype=np.float32) * alpha
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    pixels[mask & ~inner] = color


@dataclass(frozen=True)
class _Style:
    font: Font
    line: int
    pad: int

    @classmethod
    def for_size(cls, width: int, height: int) -> _Style:
        # Scale with the picture, so labels stay readable on a 160 px thumbnail and on a 4000 px photo.
        short = min(width, height)
        size = int(np.clip(round(short / 22), 10, 40))
        return cls(font=_font(size), line=max(1, round(short / 200)), pad=max(1, size // 5))


@lru_cache(maxsize=16)
def _font(size: int) -> Font:
    return ImageFont.load_default(size=size)


def _ink(color: RGB) -> RGB:
    """Black or white text, whichever reads better on `color` (ITU-R BT.601 luma)."""
    luma = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    return (0, 0, 0) if luma > 140 else (255, 255, 255)


def _tag_size(draw: ImageDraw.ImageDraw, text: str, style: _Style) -> tuple[float, float]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=style.font)
    return right - left + 2 * style.pad, bottom - top + 2 * style.pad


def _tag(draw: ImageDraw.ImageDraw, text: str, x: float, y: float, color: RGB, style: _Style) -> float:
    """A filled label with its top-left corner at (x, y); returns its height."""
    w, h = _tag_size(draw, text, style)
    left, top, _, _ = draw.textbbox((0, 0), text, font=style.font)
    draw.rectangle((x, y, x + w - 1, y + h - 1), fill=color)
    draw.text((x + style.pad - left, y + style.pad - top), text, font=style.font, fill=_ink(color))
    return h


def _label(draw: ImageDraw.ImageDraw, det: Mapping[str, Any], style: _Style, width: int, height: int) -> None:
    x1, y1 = det["box"][:2]
    text = f"{det['label']} {det['score']:.2f}"
    w, h = _tag_size(draw, text, style)
    # Above the box when there is room, else just inside its top edge; never past the image's edges.
    y = y1 - h if y1 - h >= 0 else y1
    x = max(0.0, min(x1, width - w))
    _tag(draw, text, x, max(0.0, min(y, height - h)), color_for(det["label_id"]), style)


def _legend(draw: ImageDraw.ImageDraw, segments: Sequence[Mapping[str, Any]], style: _Style, pixels: int) -> None:
    """Segments have no box to hang a label on: list each class with its share of the image, top left."""
    y = 0.0
    for segment in segments:
        share = 100 * segment["area"] / max(1, pixels)
        y += _tag(draw, f"{segment['label']} {share:.1f}%", 0, y, color_for(segment["label_id"]), style)
