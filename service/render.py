"""`?render=png`, bounded: the overlay is drawn at most RENDER_MAX_SIDE pixels on its longer side, at most
MAX_RENDERS at once, and only while the request's deadline allows.

Drawing at the upload's size made one 35-megapixel upload cost gigabytes (a float copy of the picture,
then every mask decoded at full size), outside every other limit. Here the picture is the decoded image
(already shrunk to MAX_IMAGE_SIDE) resized to the render size, and the answer is scaled to that size
before it is drawn: boxes scaled, masks resampled from their run lengths (never decoded at full size).
Up to the render size the picture is exactly what the JSON answer drawn over the upload gives.
"""

from __future__ import annotations

import asyncio
import copy
import time
from typing import Any

import anyio
from PIL import Image
from pydantic import BaseModel

from client.overlay import encode_png, render_overlay
from service.errors import ApiError
from service.imaging import DecodedImage, fit_within
from service.rle import Rle, resample_rle


class Renderer:
    """The overlay pictures of one process: their size bound and the slots they take turns on."""

    def __init__(self, max_side: int, max_renders: int) -> None:
        self.max_side = max_side
        self.max_renders = max_renders
        self._slots = asyncio.Semaphore(max_renders)

    async def png(self, image: DecodedImage, body: BaseModel, deadline: float) -> bytes:
        """The PNG of `body` over `image`; 429 `render_busy` when no slot frees up before `deadline`
        (a perf_counter time). A slot free at once is taken even past the deadline: the answer is computed
        and drawing it is bounded."""
        try:
            async with asyncio.timeout(max(0.0, deadline - time.perf_counter())):
                await self._slots.acquire()
        except TimeoutError:
            message = f"{self.max_renders} pictures are being drawn; retry, or ask for JSON"
            raise ApiError(429, "render_busy", message, {"Retry-After": "1"}) from None
        try:
            answer = body.model_dump()
            return await anyio.to_thread.run_sync(draw, image, answer, self.max_side)
        finally:
            self._slots.release()


def draw(image: DecodedImage, answer: dict[str, Any], max_side: int) -> bytes:
    """CPU work, off the event loop: the overlay of `answer` at most `max_side` on its longer side."""
    size = fit_within(image.width, image.height, max_side)
    picture = Image.fromarray(image.tensor.permute(1, 2, 0).numpy())  # uint8 [3, h, w], EXIF-oriented
    if picture.size != size:
        picture = picture.resize(size, Image.Resampling.BILINEAR)
    if size != (image.width, image.height):
        answer = scaled_answer(answer, size)
    return encode_png(render_overlay(picture, answer))


def scaled_answer(answer: dict[str, Any], size: tuple[int, int]) -> dict[str, Any]:
    """`answer` (as the JSON carries it) on a picture of `size` (width, height): boxes scaled, masks
    resampled; what is drawn from it, not an answer to send."""
    width, height = size
    scale_x, scale_y = width / answer["image"]["width"], height / answer["image"]["height"]
    scaled = copy.copy(answer)
    scaled["image"] = {**answer["image"], "width": width, "height": height}
    for key in ("detections", "segments"):
        if key not in answer:
            continue
        items = []
        for item in answer[key]:
            item = dict(item)
            if "box" in item:
                x1, y1, x2, y2 = item["box"]
                item["box"] = [x1 * scale_x, y1 * scale_y, x2 * scale_x, y2 * scale_y]
            if "mask" in item:
                mask = item["mask"]
                item["mask"] = resample_rle(Rle(size=mask["size"], counts=mask["counts"]), (height, width))
            if "area" in item:  # the legend shows each segment's share of the picture
                item["area"] = item["area"] * scale_x * scale_y
            items.append(item)
        scaled[key] = items
    return scaled
