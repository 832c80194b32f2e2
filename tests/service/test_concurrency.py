"""Batching through HTTP: real concurrent requests, each answered with its own result, and overload."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from service_helpers import WrappedPredictor, as_raw, blocks_image, encode, metric_samples, serve, settings_for

from models import ImageRefusedError, Predictor, SemanticMap

pytestmark = [
    pytest.mark.anyio,
    # pycocotools' decode under numpy 2: a third-party deprecation, not ours.
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy:DeprecationWarning"),
]


def _label_map(body: dict[str, Any]) -> np.ndarray:
    labels = np.zeros((body["image"]["height"], body["image"]["width"]), dtype=np.uint8)
    for segment in body["segments"]:
        rle = {"size": segment["mask"]["size"], "counts": segment["mask"]["counts"].encode("ascii")}
        labels[mask_utils.decode(rle).astype(bool)] = segment["label_id"]
    return labels


def _batch_counts(metrics: str, task: str) -> tuple[float, float]:
    """(batches of exactly one image, all batches) from the densepred_batch_size histogram."""
    buckets = metric_samples(metrics, "densepred_batch_size_bucket")
    total = metric_samples(metrics, "densepred_batch_size_count")[f'{{task="{task}"}}']
    return buckets[f'{{le="1.0",task="{task}"}}'], total


async def test_sixteen_concurrent_callers_share_batches_and_get_their_own_results(
    store: Path, predictors: dict[str, Predictor]
) -> None:
    images = [blocks_image(100 + i, 64, 80) for i in range(16)]  # same size: batching changes nothing numerically
    settings = settings_for(store, tasks="segment", max_batch_size=8, max_wait_ms=200)
    async with serve(settings, lambda task, device: predictors[task]) as client:
        responses = await asyncio.gather(*(client.post("/segment", **as_raw(encode(im))) for im in images))
        metrics = (await client.get("/metrics")).text
    singles, batches = _batch_counts(metrics, "segment")
    assert batches - singles >= 1, "no batch held more than one image"
    assert batches <= 8  # warm-up excluded: 16 images in at most 8 batches
    distinct = set()
    for image, response in zip(images, responses, strict=True):
        assert response.status_code == 200, response.text
        tensor = torch.from_numpy(image).permute(2, 0, 1).contiguous()
        own = predictors["segment"].predict([tensor])[0]
        assert isinstance(own, SemanticMap)
        labels = _label_map(response.json())
        assert np.array_equal(labels, own.labels.numpy())
        distinct.add(labels.tobytes())
    assert len(distinct) > 8, "the images should give different answers, or a mix-up would go unnoticed"


async def test_mixed_sizes_batch_together(store: Path, predictors: dict[str, Predictor]) -> None:
    sizes = [(40, 64), (72, 48), (56, 56), (90, 30), (33, 77), (64, 96)]
    inner = predictors["instances"]
    wrapped = WrappedPredictor(inner)
    settings = settings_for(store, tasks="instances", max_batch_size=6, max_wait_ms=300)
    async with serve(settings, lambda task, device: wrapped) as client:
        wrapped.batch_sizes.clear()  # forget the warm-up pass
        calls = [
            client.post("/instances", params={"score_threshold": 0, "max_detections": 3}, **as_raw(encode(im)))
            for im in (blocks_image(200 + i, h, w) for i, (h, w) in enumerate(sizes))
        ]
        responses = await asyncio.gather(*calls)
    assert max(wrapped.batch_sizes) > 1
    for (height, width), response in zip(sizes, responses, strict=True):
        body = response.json()
        assert body["image"] == {"width": width, "height": height}
        assert body["detections"]
        for det in body["detections"]:
            assert det["mask"]["size"] == [height, width]  # each caller got the masks of its own image
            x1, y1, x2, y2 = det["box"]
            assert 0 <= x1 <= x2 <= width
            assert 0 <= y1 <= y2 <= height


async def test_a_poisoned_image_fails_alone(store: Path, predictors: dict[str, Predictor]) -> None:
    poison = blocks_image(300, 64, 80)
    poison[0, 0] = (1, 2, 3)  # the marker the wrapped model chokes on

    poisoned_batches: list[int] = []

    def choke(images: Sequence[torch.Tensor]) -> None:
        if any(im[:, 0, 0].tolist() == [1, 2, 3] for im in images):
            poisoned_batches.append(len(images))
            raise ImageRefusedError("this image upsets the model")

    wrapped = WrappedPredictor(predictors["segment"], before_batch=choke)
    settings = settings_for(store, tasks="segment", max_batch_size=8, max_wait_ms=300)
    images = [blocks_image(301 + i, 64, 80) for i in range(7)]
    images.insert(3, poison)
    async with serve(settings, lambda task, device: wrapped) as client:
        responses = await asyncio.gather(*(client.post("/segment", **as_raw(encode(im))) for im in images))
        metrics = (await client.get("/metrics")).text
    assert max(poisoned_batches) > 1, "the poisoned image should have shared a batch with others"
    assert poisoned_batches[-1] == 1  # then retried alone
    statuses = [r.status_code for r in responses]
    assert statuses == [200, 200, 200, 422, 200, 200, 200, 200]
    assert responses[3].json()["error"]["code"] == "unprocessable_image"
    for image, response in zip(images, responses, strict=True):
        if response.status_code == 200:
            own = predictors["segment"].predict([torch.from_numpy(image).permute(2, 0, 1).contiguous()])[0]
            assert np.array_equal(_label_map(response.json()), own.labels.numpy())
    rejected = metric_samples(metrics, "densepred_requests_rejected_total")
    assert rejected['{reason="unprocessable_image",task="segment"}'] == 1


async def test_a_bug_inside_inference_is_a_logged_counted_500_not_a_client_error(
    store: Path, predictors: dict[str, Predictor], caplog: pytest.LogCaptureFixture
) -> None:
    """A ValueError that is not ImageRefusedError is the server's own bug (a strict zip, pydantic, numpy):
    500 inference_failed with the traceback in the log, never 422 blaming the client's image."""
    marked = blocks_image(320, 64, 80)
    marked[0, 0] = (4, 5, 6)

    def bug(images: Sequence[torch.Tensor]) -> None:
        if any(im[:, 0, 0].tolist() == [4, 5, 6] for im in images):
            list(zip([1, 2], [1], strict=True))  # ValueError: a bug, not the image's fault

    wrapped = WrappedPredictor(predictors["segment"], before_batch=bug)
    settings = settings_for(store, tasks="segment", max_batch_size=4, max_wait_ms=300)
    images = [blocks_image(321 + i, 64, 80) for i in range(3)]
    images.insert(1, marked)
    with caplog.at_level("ERROR", logger="service.inference"):
        async with serve(settings, lambda task, device: wrapped) as client:
            responses = await asyncio.gather(*(client.post("/segment", **as_raw(encode(im))) for im in images))
            metrics = (await client.get("/metrics")).text
    assert [r.status_code for r in responses] == [200, 500, 200, 200]
    assert responses[1].json()["error"]["code"] == "inference_failed"
    assert "zip()" not in responses[1].text  # the details stay in the log
    failures = [r for r in caplog.records if r.name == "service.inference" and r.exc_info]
    assert len(failures) == 1
    assert failures[0].exc_info is not None
    assert failures[0].exc_info[0] is ValueError
    assert "zip()" in str(failures[0].exc_info[1])
    rejected = metric_samples(metrics, "densepred_requests_rejected_total")
    assert rejected['{reason="inference_failed",task="segment"}'] == 1
    assert '{reason="unprocessable_image",task="segment"}' not in rejected
    duration = metric_samples(metrics, "densepred_request_duration_seconds_count")
    assert duration['{endpoint="/segment",status="500"}'] == 1


def _blocked_service(store: Path, predictors: dict[str, Predictor], **overrides: Any) -> Any:
    gate, entered = threading.Event(), threading.Event()

    def hold(images: Sequence[torch.Tensor]) -> None:
        entered.set()
        assert gate.wait(30)

    wrapped = WrappedPredictor(predictors["segment"], before_batch=hold)
    settings = settings_for(store, tasks="segment", max_batch_size=1, max_wait_ms=0, **overrides)
    return serve(settings, lambda task, device: wrapped), gate, entered


async def test_full_queue_answers_429_at_once(store: Path, predictors: dict[str, Predictor]) -> None:
    service, gate, entered = _blocked_service(store, predictors, max_queue=2)
    data = encode(blocks_image(400, 32, 32))
    async with service as client:
        try:
            first = asyncio.create_task(client.post("/segment", **as_raw(data)))
            assert await asyncio.to_thread(entered.wait, 10)  # the model is busy with the first image
            queued = [asyncio.create_task(client.post("/segment", **as_raw(data))) for _ in range(2)]
            while 'densepred_queue_depth{task="segment"} 2.0' not in (await client.get("/metrics")).text:
                await asyncio.sleep(0.01)
            loop = asyncio.get_running_loop()
            start = loop.time()
            rejected = await client.post("/segment", **as_raw(data))
            assert loop.time() - start < 1.0
        finally:
            gate.set()
        assert rejected.status_code == 429
        assert rejected.headers["retry-after"] == "1"
        assert rejected.json()["error"]["code"] == "queue_full"
        assert [r.status_code for r in await asyncio.gather(first, *queued)] == [200, 200, 200]
        metrics = (await client.get("/metrics")).text
    assert metric_samples(metrics, "densepred_requests_rejected_total")['{reason="queue_full",task="segment"}'] == 1


async def test_a_timeout_the_queue_cannot_meet_gets_429_at_once(store: Path, predictors: dict[str, Predictor]) -> None:
    def fifth_of_a_second(images: Sequence[torch.Tensor]) -> None:
        time.sleep(0.2)

    wrapped = WrappedPredictor(predictors["segment"], before_batch=fifth_of_a_second)
    settings = settings_for(store, tasks="segment", max_batch_size=1, max_wait_ms=0)
    data = encode(blocks_image(402, 32, 32))
    async with serve(settings, lambda task, device: wrapped) as client:
        assert (await client.post("/segment", **as_raw(data))).status_code == 200  # times a batch: 0.2 s
        backlog = [asyncio.create_task(client.post("/segment", **as_raw(data))) for _ in range(4)]
        while 'densepred_queue_depth{task="segment"} 3.0' not in (await client.get("/metrics")).text:
            await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        start = loop.time()
        hurried = await client.post("/segment?timeout=0.3", **as_raw(data))  # about 0.8 s of work ahead
        assert loop.time() - start < 0.5  # refused at once, not after the 0.8 s ahead of it
        patient = await client.post("/segment?timeout=5", **as_raw(data))
        assert [r.status_code for r in await asyncio.gather(*backlog)] == [200] * 4
        metrics = (await client.get("/metrics")).text
    assert hurried.status_code == 429
    assert hurried.json()["error"]["code"] == "queue_too_slow"
    assert int(hurried.headers["retry-after"]) >= 1
    assert patient.status_code == 200
    rejected = metric_samples(metrics, "densepred_requests_rejected_total")
    assert rejected['{reason="queue_too_slow",task="segment"}'] == 1


async def test_request_past_its_deadline_gets_504(store: Path, predictors: dict[str, Predictor]) -> None:
    service, gate, entered = _blocked_service(store, predictors, request_timeout_s=0.3)
    data = encode(blocks_image(401, 32, 32))
    async with service as client:
        try:
            first = asyncio.create_task(client.post("/segment", **as_raw(data)))
            assert await asyncio.to_thread(entered.wait, 10)
            queued = await client.post("/segment", **as_raw(data))  # waits in the queue behind the held batch
            running = await first  # its batch is still held too
        finally:
            gate.set()
        for response in (queued, running):
            assert response.status_code == 504, response.text
            assert response.json()["error"]["code"] == "deadline_exceeded"
        assert (await client.post("/segment", **as_raw(data))).status_code == 200  # and the queue recovers


async def test_batches_respect_the_pixel_budget_and_group_shapes(store: Path, predictors: dict[str, Predictor]) -> None:
    landscape, portrait = (64, 160), (160, 64)
    sizes = [landscape, portrait] * 4
    settings = settings_for(store, tasks="segment", max_batch_size=8, max_wait_ms=300, max_batch_pixels=3 * 64 * 160)
    padding = predictors["segment"].padding  # the shared predictor's counters, since it was built
    async with serve(settings, lambda task, device: predictors[task]) as client:
        before = padding.image_pixels, padding.padded_pixels, padding.forwards
        calls = [
            client.post("/segment", **as_raw(encode(blocks_image(400 + i, h, w)))) for i, (h, w) in enumerate(sizes)
        ]
        responses = await asyncio.gather(*calls)
        text = (await client.get("/metrics")).text
    assert [r.status_code for r in responses] == [200] * len(sizes)
    sizes_seen = metric_samples(text, "densepred_batch_size_bucket")
    batches = metric_samples(text, "densepred_batch_size_count")['{task="segment"}']
    assert sizes_seen['{le="3.0",task="segment"}'] == batches, "a batch went over the pixel budget"
    assert batches >= 3  # 8 images, at most 3 per batch
    assert metric_samples(text, "densepred_padding_waste_ratio")['{task="segment"}'] == pytest.approx(padding.waste)
    assert metric_samples(text, "densepred_forward_passes")['{task="segment"}'] == padding.forwards
    # The images' sides are multiples of 32: only a landscape padded to a portrait's height (or the
    # reverse) in one forward pass would waste pixels.
    assert padding.image_pixels - before[0] == 8 * 64 * 160
    assert padding.padded_pixels - before[1] == 8 * 64 * 160
    assert padding.forwards - before[2] >= batches
