"""Faults inside the model: CUDA out-of-memory (injected: no GPU here), a dead worker, a hung batch.

The predictors are real; only the fault is injected, by a wrapper around them (WrappedPredictor).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from service_helpers import WrappedPredictor, as_raw, blocks_image, encode, serve, settings_for

from models import Predictor

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy:DeprecationWarning"),
]


def _own_labels(predictor: Predictor, image: np.ndarray) -> np.ndarray:
    result = predictor.predict([torch.from_numpy(image).permute(2, 0, 1).contiguous()])[0]
    return result.labels.numpy()  # type: ignore[union-attr]


def _labels(body: dict) -> np.ndarray:  # type: ignore[type-arg]
    labels = np.zeros((body["image"]["height"], body["image"]["width"]), dtype=np.uint8)
    for segment in body["segments"]:
        rle = {"size": segment["mask"]["size"], "counts": segment["mask"]["counts"].encode("ascii")}
        labels[mask_utils.decode(rle).astype(bool)] = segment["label_id"]
    return labels


async def test_cuda_out_of_memory_halves_the_batch_and_everyone_is_answered(
    store: Path, predictors: dict[str, Predictor]
) -> None:
    def tight_memory(images: Sequence[torch.Tensor]) -> None:
        if len(images) > 2:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (injected: {len(images)} images)")

    wrapped = WrappedPredictor(predictors["segment"], before_batch=tight_memory)
    images = [blocks_image(600 + i, 48, 64) for i in range(8)]
    settings = settings_for(store, tasks="segment", max_batch_size=8, max_wait_ms=300)
    async with serve(settings, lambda task, device: wrapped) as client:
        wrapped.batch_sizes.clear()
        responses = await asyncio.gather(*(client.post("/segment", **as_raw(encode(im))) for im in images))
        assert (await client.get("/healthz")).status_code == 200
    assert [r.status_code for r in responses] == [200] * 8
    assert max(wrapped.batch_sizes) > 2, "the images should have been batched before the split"
    # Every image ran exactly once in a batch that fitted (<= 2), after halving, never one by one only.
    assert sum(size for size in wrapped.batch_sizes if size <= 2) == 8
    assert 2 in wrapped.batch_sizes
    for image, response in zip(images, responses, strict=True):
        assert np.array_equal(_labels(response.json()), _own_labels(predictors["segment"], image))


async def test_an_image_too_big_for_the_device_even_alone_is_507(store: Path, predictors: dict[str, Predictor]) -> None:
    def huge_one(images: Sequence[torch.Tensor]) -> None:
        if any(im[:, 0, 0].tolist() == [9, 9, 9] for im in images):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")

    wrapped = WrappedPredictor(predictors["segment"], before_batch=huge_one)
    images = [blocks_image(610 + i, 48, 64) for i in range(4)]
    images[2][0, 0] = (9, 9, 9)
    settings = settings_for(store, tasks="segment", max_batch_size=4, max_wait_ms=300)
    async with serve(settings, lambda task, device: wrapped) as client:
        responses = await asyncio.gather(*(client.post("/segment", **as_raw(encode(im))) for im in images))
    assert [r.status_code for r in responses] == [200, 200, 507, 200]
    assert responses[2].json()["error"]["code"] == "out_of_memory"


class WorkerKiller(BaseException):
    """Not an Exception: escapes every handler in the batching worker, as a bug there would."""


async def test_a_dead_worker_fails_requests_at_once_and_healthz(store: Path, predictors: dict[str, Predictor]) -> None:
    def fatal(images: Sequence[torch.Tensor]) -> None:
        raise WorkerKiller

    wrapped = WrappedPredictor(predictors["detect"], before_batch=fatal)
    settings = settings_for(store, tasks="detect", request_timeout_s=30)
    async with serve(settings, lambda task, device: wrapped) as client:
        assert (await client.get("/healthz")).status_code == 200
        loop = asyncio.get_running_loop()
        started = loop.time()
        response = await client.post("/detect", **as_raw(encode(blocks_image(620))))
        assert loop.time() - started < 5, "the request should not wait for its 30 s deadline"
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "unavailable"
        health = await client.get("/healthz")
        assert health.status_code == 503
        assert "stopped" in health.json()["error"]["message"]
        refused = await client.post("/detect", **as_raw(encode(blocks_image(621))))
        assert refused.status_code == 503


async def test_a_hung_batch_makes_healthz_fail(store: Path, predictors: dict[str, Predictor]) -> None:
    gate, entered = threading.Event(), threading.Event()

    def hang(images: Sequence[torch.Tensor]) -> None:
        entered.set()
        gate.wait(30)

    wrapped = WrappedPredictor(predictors["segment"], before_batch=hang)
    settings = settings_for(store, tasks="segment", inference_timeout_s=0.3)
    async with serve(settings, lambda task, device: wrapped) as client:
        try:
            pending = asyncio.create_task(client.post("/segment", **as_raw(encode(blocks_image(630)))))
            assert await asyncio.to_thread(entered.wait, 10)
            assert (await client.get("/healthz")).status_code == 200  # busy, not yet hung
            await asyncio.sleep(0.4)
            hung = await client.get("/healthz")
            assert hung.status_code == 503
            assert "has run for" in hung.json()["error"]["message"]
        finally:
            gate.set()
        assert (await pending).status_code == 200
        assert (await client.get("/healthz")).status_code == 200  # it recovered by itself
