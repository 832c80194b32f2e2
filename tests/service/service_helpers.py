"""Helpers for the service tests: drive an app over ASGI like uvicorn does, and make test images.

Apps run through the ASGI lifespan protocol (startup, lifespan state copied into every request scope,
shutdown), with httpx.AsyncClient on top, so concurrent requests are real.
"""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from PIL import Image

from service import Settings, create_app


@asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
    """Run the app's ASGI lifespan; yields the lifespan state a server would copy into each request."""
    state: dict[str, Any] = {}
    to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": state}
    task = asyncio.create_task(app(scope, to_app.get, from_app.put))
    await to_app.put({"type": "lifespan.startup"})
    started = await from_app.get()
    if started["type"] != "lifespan.startup.complete":
        await asyncio.gather(task, return_exceptions=True)
        raise RuntimeError(f"startup failed: {started.get('message')}")
    try:
        yield state
    finally:
        await to_app.put({"type": "lifespan.shutdown"})
        stopped = await from_app.get()
        await task
        assert stopped["type"] == "lifespan.shutdown.complete", stopped


@asynccontextmanager
async def serve(settings: Settings, loader: Any = None, *, wait_ready: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, loader)
    async with lifespan(app) as state:

        async def with_state(scope: Any, receive: Any, send: Any) -> None:
            scope = {**scope, "state": dict(state)}  # as uvicorn does: a shallow copy per request
            await app(scope, receive, send)

        transport = httpx.ASGITransport(app=with_state)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=60) as client:
            if wait_ready:
                await wait_until_ready(client)
            yield client


async def wait_until_ready(client: httpx.AsyncClient, timeout_s: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while (await client.get("/readyz")).status_code != 200:
        assert loop.time() < deadline, "service never became ready"
        await asyncio.sleep(0.02)


def settings_for(store: Path, **overrides: Any) -> Settings:
    # Runtimes measured before ready and applied in place, so the app serves the very predictor objects a
    # test gave it and compares against (in the background, another predictor object would switch in at
    # any moment of the test). The background mode: test_runtime_switch.py, and every real process.
    values: dict[str, Any] = {"model_dir": store, "device": "cpu", "max_wait_ms": 5.0, "runtime_selection": "warm-up"}
    return Settings(**{**values, **overrides})


# ---- images -------------------------------------------------------------------------------------


def blocks_image(seed: int, height: int = 72, width: int = 96) -> np.ndarray:
    """A deterministic H x W x 3 picture of coloured rectangles on a plain background."""
    rng = np.random.default_rng(seed)
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = rng.integers(0, 256, 3)
    for _ in range(4):
        y, x = rng.integers(0, height - 8), rng.integers(0, width - 8)
        h, w = rng.integers(8, max(9, height // 2)), rng.integers(8, max(9, width // 2))
        image[y : y + h, x : x + w] = rng.integers(0, 256, 3)
    return image


def encode(pixels: np.ndarray | Image.Image, fmt: str = "PNG", **params: Any) -> bytes:
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


MEDIA_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


def as_multipart(data: bytes, fmt: str = "PNG") -> dict[str, Any]:
    return {"files": {"image": (f"upload.{fmt.lower()}", data, MEDIA_TYPES.get(fmt, "application/octet-stream"))}}


def as_raw(data: bytes, fmt: str = "PNG") -> dict[str, Any]:
    return {"content": data, "headers": {"Content-Type": MEDIA_TYPES[fmt]}}


class WrappedPredictor:
    """A real predictor with test hooks: a gate the warm-up waits on, a hook run before each batch."""

    def __init__(
        self,
        inner: Any,
        *,
        warmup_gate: threading.Event | None = None,
        before_batch: Callable[[Sequence[torch.Tensor]], None] | None = None,
    ) -> None:
        self.inner = inner
        self.manifest = inner.manifest
        self.device = inner.device
        self.warmup_gate = warmup_gate
        self.before_batch = before_batch
        self.batch_sizes: list[int] = []

    def warmup(self) -> None:
        if self.warmup_gate is not None:
            assert self.warmup_gate.wait(30), "warm-up gate never opened"
        self.inner.warmup()

    def predict(
        self, images: Sequence[torch.Tensor], queries: Sequence[Any] | None = None, frames: Sequence[Any] | None = None
    ) -> list[Any]:
        self.batch_sizes.append(len(images))
        if self.before_batch is not None:
            self.before_batch(images)
        return self.inner.predict(images, queries, frames)


def metric_samples(text: str, name: str) -> dict[str, float]:
    """`name{labels} value` lines of a Prometheus text page, keyed by the label part."""
    samples = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            key, _, value = line.rpartition(" ")
            samples[key[len(name) :]] = float(value)
    return samples
