"""Limits as settings: shrinking large images (results still in the upload's pixels), the detection cap,
aspect ratio, multi-frame files, and per-request timeouts."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from pycocotools import mask as mask_utils
from service_helpers import WrappedPredictor, as_raw, blocks_image, encode, serve, settings_for

import models
from models import Detections, Predictor, Query, SemanticMap
from service.imaging import Limits, decode_image

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy:DeprecationWarning"),
]

SIDE = 64  # max_image_side for these tests: a 150 x 200 upload reaches the model as 48 x 64


@pytest.fixture(scope="module")
async def shrinking(store: Path, predictors: dict[str, Predictor]) -> Any:
    async with serve(settings_for(store, max_image_side=SIDE), lambda task, device: predictors[task]) as client:
        yield client


def _decode(rle: dict[str, Any]) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")})


def _model_view(data: bytes) -> torch.Tensor:
    return decode_image(data, Limits(10**8, SIDE)).tensor


async def test_large_detections_come_back_in_upload_pixels(
    shrinking: httpx.AsyncClient, predictors: dict[str, Predictor]
) -> None:
    data = encode(blocks_image(700, 150, 200), "JPEG", quality=95)
    params = {"score_threshold": 0, "max_detections": 5}
    body = (await shrinking.post("/instances", params=params, **as_raw(data, "JPEG"))).json()
    assert body["image"] == {"width": 200, "height": 150}
    shrunk = _model_view(data)
    assert tuple(shrunk.shape) == (3, 48, 64)
    # The predictor answers in the upload's pixels (its frame): mask grids pasted straight at that size.
    own = predictors["instances"].predict([shrunk], [Query(0, 5)], [(150, 200)])[0]
    assert isinstance(own, Detections)
    assert own.masks is not None
    assert len(body["detections"]) == len(own.boxes) == 5
    in_model_pixels = predictors["instances"].predict([shrunk], [Query(0, 5)])[0]
    assert isinstance(in_model_pixels, Detections)
    scale = torch.tensor([200 / 64, 150 / 48] * 2)
    assert torch.allclose(own.boxes, (in_model_pixels.boxes * scale).clamp(max=torch.tensor([200, 150] * 2)), atol=1e-3)
    for det, box, mask in zip(body["detections"], own.boxes.tolist(), own.masks.dense(), strict=True):
        assert det["box"] == pytest.approx(box, abs=0.01)
        full = _decode(det["mask"])
        assert full.shape == (150, 200)
        assert np.array_equal(full, mask.numpy())
        assert det["area"] == int(full.sum())


async def test_large_segmentation_comes_back_at_upload_size(
    shrinking: httpx.AsyncClient, predictors: dict[str, Predictor]
) -> None:
    data = encode(blocks_image(701, 200, 150), "PNG")
    body = (await shrinking.post("/segment", **as_raw(data))).json()
    # Scores upsampled bilinearly into the upload's frame, as the trainer's evaluation does at full size.
    own = predictors["segment"].predict([_model_view(data)], None, [(200, 150)])[0]
    assert isinstance(own, SemanticMap)
    expected = own.labels.numpy()
    labels = np.zeros((200, 150), dtype=np.uint8)
    for segment in body["segments"]:
        mask = _decode(segment["mask"]).astype(bool)
        assert not labels[mask].any(), "segments overlap"
        labels[mask] = segment["label_id"]
        assert segment["area"] == int(mask.sum())
    assert np.array_equal(labels, expected)


async def test_images_within_the_side_limit_are_not_touched(shrinking: httpx.AsyncClient) -> None:
    data = encode(blocks_image(702, 40, 60))
    body = (await shrinking.post("/detect", params={"score_threshold": 0}, **as_raw(data))).json()
    assert body["image"] == {"width": 60, "height": 40}
    assert all(0 <= d["box"][2] <= 60 and 0 <= d["box"][3] <= 40 for d in body["detections"])


async def test_the_detection_cap_holds_inside_the_model(store: Path) -> None:
    own = models.load_predictor(store, "instances", "cpu")  # limit_detections changes it: not the shared one
    async with serve(settings_for(store, tasks="instances", max_detections=3), lambda t, d: own) as client:
        params = {"score_threshold": 0, "max_detections": 100}
        body = (await client.post("/instances", params=params, **as_raw(encode(blocks_image(703))))).json()
    assert len(body["detections"]) == 3
    assert own.model.roi_heads.detections_per_img == 3  # Mask R-CNN pastes no more masks than that


@pytest.mark.parametrize(("height", "width"), [(2, 100), (300, 10), (1, 4000)])
async def test_extreme_aspect_ratios_are_422_not_a_model_crash(
    shrinking: httpx.AsyncClient, height: int, width: int
) -> None:
    data = encode(Image.new("RGB", (width, height), "white"))
    for task in ("segment", "detect", "instances"):
        response = await shrinking.post(f"/{task}", **as_raw(data))
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "unprocessable_image"


def _multi_frame(fmt: str) -> bytes:
    frames = [Image.new("RGB", (32, 32), colour) for colour in ("red", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, format=fmt, save_all=True, append_images=frames[1:])
    return buffer.getvalue()


@pytest.mark.parametrize(("fmt", "media"), [("PNG", "PNG"), ("WEBP", "WEBP"), ("MPO", "JPEG")])
async def test_multi_frame_files_are_refused(shrinking: httpx.AsyncClient, fmt: str, media: str) -> None:
    response = await shrinking.post("/detect", **as_raw(_multi_frame(fmt), media))
    assert response.status_code == 415, response.text
    assert "frame" in response.json()["error"]["message"]


async def test_per_request_timeouts_from_query_or_header(store: Path, predictors: dict[str, Predictor]) -> None:
    gate, entered = threading.Event(), threading.Event()

    def hold(images: Sequence[torch.Tensor]) -> None:
        entered.set()
        assert gate.wait(30)

    wrapped = WrappedPredictor(predictors["segment"], before_batch=hold)
    settings = settings_for(store, tasks="segment", max_batch_size=1, max_wait_ms=0, request_timeout_s=1.0)
    data = encode(blocks_image(704, 32, 32))
    async with serve(settings, lambda task, device: wrapped) as client:
        try:
            first = asyncio.create_task(client.post("/segment", **as_raw(data)))
            assert await asyncio.to_thread(entered.wait, 10)
            cases = [
                ({"timeout": "0.2"}, {}, 0.2),
                ({}, {"X-Request-Timeout": "0.2"}, 0.2),
                ({"timeout": "0.5"}, {"X-Request-Timeout": "0.2"}, 0.2),  # the shorter wins
                ({"timeout": "100"}, {}, 1.0),  # never beyond REQUEST_TIMEOUT_S
            ]
            for params, headers, expected in cases:
                started = time.perf_counter()
                raw = as_raw(data)
                raw["headers"].update(headers)
                response = await client.post("/segment", params=params, **raw)
                elapsed = time.perf_counter() - started
                assert response.status_code == 504, response.text
                assert expected - 0.05 <= elapsed < expected + 0.5, (params, headers, elapsed)
            for bad in ({"timeout": "0"}, {"timeout": "-1"}, {"timeout": "soon"}):
                assert (await client.post("/segment", params=bad, **as_raw(data))).status_code == 422
        finally:
            gate.set()
        await first


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pillow_and_survives_shrinking(orientation: int) -> None:
    pixels = np.random.default_rng(orientation).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(pixels, "PNG", exif=exif.tobytes())
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    decoded = decode_image(data, Limits(10**7))
    assert np.array_equal(decoded.tensor.permute(1, 2, 0).numpy(), upright)
    shrunk = decode_image(data, Limits(10**7, 40))
    assert (shrunk.width, shrunk.height) == (upright.shape[1], upright.shape[0])
    expected = (40, 24) if upright.shape[1] > upright.shape[0] else (24, 40)
    assert tuple(shrunk.tensor.shape[1:][::-1]) == expected
