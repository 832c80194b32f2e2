"""`?render=png` within bounds (issue 16, item 2): at most RENDER_MAX_SIDE on the longer side, masks scaled
from their run lengths (never decoded at the upload's size), at most MAX_RENDERS at once, the rest waiting
only while their deadline allows (then 429 render_busy)."""

from __future__ import annotations

import asyncio
import io
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from service_helpers import as_raw, blocks_image, encode, metric_samples, serve, settings_for

import service.render
from client.overlay import open_image, render_overlay
from models import Predictor
from service.imaging import fit_within
from service.render import scaled_answer
from service.rle import Rle, decode_counts, resample_rle

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy:DeprecationWarning"),
]

INSTANCES = {"score_threshold": 0, "max_detections": 5}


def _masks(rng: np.random.Generator, count: int) -> list[np.ndarray]:
    masks = []
    for trial in range(count):
        height, width = (int(v) for v in rng.integers(1, 70, 2))
        mask = np.zeros((height, width), dtype=np.uint8)
        if trial % 4 == 0:
            mask = (rng.random((height, width)) > 0.5).astype(np.uint8)  # many runs, negative differences
        elif trial % 4 == 1:
            top, left = int(rng.integers(0, height)), int(rng.integers(0, width))
            mask[top : top + int(rng.integers(1, height + 1)), left : left + int(rng.integers(1, width + 1))] = 1
        elif trial % 4 == 2:
            mask[:] = 1
        masks.append(mask)  # trial % 4 == 3: empty
    return masks


def _rle(mask: np.ndarray) -> Rle:
    coded = mask_utils.encode(np.asfortranarray(mask))
    return Rle(size=[int(mask.shape[0]), int(mask.shape[1])], counts=coded["counts"].decode("ascii"))


def _decode(rle: Rle) -> np.ndarray:
    return np.asarray(mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}))


def _nearest(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    rows = np.minimum(((np.arange(height) * 2 + 1) * mask.shape[0]) // (2 * height), mask.shape[0] - 1)
    columns = np.minimum(((np.arange(width) * 2 + 1) * mask.shape[1]) // (2 * width), mask.shape[1] - 1)
    return mask[rows][:, columns]


def test_counts_strings_decode_to_pycocotools_own_counts() -> None:
    for mask in _masks(np.random.default_rng(0), 200):
        rle = _rle(mask)
        counts = decode_counts(rle["counts"])
        assert counts.sum() == mask.size
        height, width = mask.shape
        again = mask_utils.frPyObjects([{"size": [height, width], "counts": counts.tolist()}], height, width)[0]
        assert again["counts"].decode("ascii") == rle["counts"]
    large = np.zeros((5000, 7000), dtype=np.uint8)  # 35 megapixels: counts in the tens of millions
    large[4000:4100, 6000:6500] = 1
    counts = decode_counts(_rle(large)["counts"])
    assert counts[:3].tolist() == [6000 * 5000 + 4000, 100, 900 + 4000]
    assert len(counts) == 1 + 2 * 500
    assert counts.sum() == large.size


def test_resampled_masks_are_the_nearest_pixels_of_the_original() -> None:
    rng = np.random.default_rng(1)
    for mask in _masks(rng, 200):
        height, width = (int(v) for v in rng.integers(1, 90, 2))
        resampled = resample_rle(_rle(mask), (height, width))
        assert resampled["size"] == [height, width]
        assert np.array_equal(_decode(resampled), _nearest(mask, height, width))


async def test_a_large_upload_is_drawn_at_render_max_side(store: Path, predictors: dict[str, Predictor]) -> None:
    data = encode(blocks_image(7, 96, 160))
    settings = settings_for(store, tasks="instances", render_max_side=64)
    async with serve(settings, lambda task, device: predictors[task]) as client:
        body = (await client.post("/instances", params=INSTANCES, **as_raw(data))).json()
        drawn = await client.post("/instances", params={**INSTANCES, "render": "png"}, **as_raw(data))
    assert drawn.status_code == 200, drawn.text
    assert body["detections"], "nothing to draw: the test would prove little"
    picture = Image.open(io.BytesIO(drawn.content))
    size = fit_within(160, 96, 64)
    assert picture.size == size == (64, 38)
    # The JSON answer, scaled to the picture, drawn over the upload shrunk to it: exactly what was sent.
    shrunk = open_image(data).resize(size, Image.Resampling.BILINEAR)
    expected = render_overlay(shrunk, scaled_answer(body, size))
    assert np.array_equal(np.asarray(picture.convert("RGB")), np.asarray(expected))
    assert not np.array_equal(np.asarray(expected), np.asarray(shrunk)), "the overlay drew nothing"
    for original, scaled in zip(body["detections"], scaled_answer(body, size)["detections"], strict=True):
        assert np.array_equal(_decode(scaled["mask"]), _nearest(_decode(original["mask"]), 38, 64))
        assert scaled["box"] == pytest.approx([v * s for v, s in zip(original["box"], [0.4, 38 / 96] * 2, strict=True)])


async def test_renders_beyond_max_renders_wait_within_their_deadline_then_429(
    store: Path, predictors: dict[str, Predictor], monkeypatch: pytest.MonkeyPatch
) -> None:
    gate, entered = threading.Event(), threading.Event()
    real_draw = service.render.draw

    def held_draw(*args: Any) -> bytes:  # the real drawing, once the test lets it go
        entered.set()
        assert gate.wait(30), "never released"
        return real_draw(*args)

    monkeypatch.setattr(service.render, "draw", held_draw)
    data = as_raw(encode(blocks_image(8, 48, 64)))
    settings = settings_for(store, tasks="detect", max_renders=1)
    async with serve(settings, lambda task, device: predictors[task]) as client:
        first = asyncio.create_task(client.post("/detect", params={"render": "png"}, **data))
        assert await asyncio.to_thread(entered.wait, 30)  # the one slot is taken
        refused = await client.post("/detect", params={"render": "png", "timeout": 0.5}, **data)
        json_meanwhile = await client.post("/detect", **data)  # answers without a picture are not held
        gate.set()
        drawn = await first
        after = await client.post("/detect", params={"render": "png"}, **data)  # the slot is free again
        metrics = (await client.get("/metrics")).text
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "render_busy"
    assert refused.headers["Retry-After"] == "1"
    assert json_meanwhile.status_code == 200
    assert drawn.status_code == after.status_code == 200
    assert drawn.headers["content-type"] == "image/png"
    rejected = metric_samples(metrics, "densepred_requests_rejected_total")
    assert rejected['{reason="render_busy",task="detect"}'] == 1
