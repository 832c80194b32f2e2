"""Everything a client can get wrong ends in the right 4xx with a JSON error body, never a 500."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from service_helpers import as_multipart, as_raw, blocks_image, encode, serve, settings_for

from models import Predictor

pytestmark = pytest.mark.anyio

MAX_BYTES = 60_000
MAX_PIXELS = 500_000
TASKS = ("segment", "detect", "instances")


@pytest.fixture(scope="module")
async def small_limits(store: Path, predictors: dict[str, Predictor]) -> AsyncIterator[httpx.AsyncClient]:
    settings = settings_for(store, max_image_bytes=MAX_BYTES, max_image_pixels=MAX_PIXELS)
    async with serve(settings, lambda task, device: predictors[task]) as client:
        yield client


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["message"]
    assert "Traceback" not in response.text
    if code is not None:
        assert body["error"]["code"] == code
    return body["error"]


def _noise(height: int, width: int) -> np.ndarray:
    return np.random.default_rng(height * width).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("task", TASKS)
async def test_bad_images(small_limits: httpx.AsyncClient, task: str) -> None:
    png = encode(blocks_image(30, 64, 64), "PNG")
    cases: list[tuple[dict[str, Any], int, str]] = [
        (as_raw(b"\x13\x37garbage bytes" * 10), 400, "invalid_image"),
        (as_multipart(b"\x13\x37garbage bytes" * 10), 400, "invalid_image"),
        (as_raw(png[: len(png) // 2]), 400, "invalid_image"),
        (as_raw(b""), 400, "invalid_image"),
        (as_multipart(b""), 400, "invalid_image"),
        ({"content": b"hello", "headers": {"Content-Type": "text/plain"}}, 415, "unsupported_media_type"),
        ({"content": png, "headers": {"Content-Type": "image/gif"}}, 415, "unsupported_media_type"),
        ({"content": png}, 415, "unsupported_media_type"),  # no Content-Type at all
        (as_raw(encode(blocks_image(31), "GIF")), 415, "unsupported_media_type"),
        (as_multipart(encode(blocks_image(31), "GIF"), "GIF"), 415, "unsupported_media_type"),
        (as_raw(encode(_noise(200, 200), "PNG")), 413, "too_large"),  # 120 kB over a 60 kB limit
        (as_multipart(encode(_noise(200, 200), "PNG")), 413, "too_large"),
        (as_raw(encode(Image.new("1", (1000, 1000)), "PNG")), 413, "too_large"),  # 1 MP: pixel limit
    ]
    for request, status, code in cases:
        assert_error(await small_limits.post(f"/{task}", **request), status, code)


async def test_body_limit_holds_without_content_length(small_limits: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:  # httpx sends this chunked: no Content-Length to trust
        for _ in range(100):
            yield b"\xff\xd8\xff" + b"\x00" * 4093

    response = await small_limits.post("/detect", content=chunks(), headers={"Content-Type": "image/jpeg"})
    assert_error(response, 413, "too_large")


async def test_content_length_is_checked_before_reading(small_limits: httpx.AsyncClient) -> None:
    headers = {"Content-Type": "image/png", "Content-Length": str(10**9)}
    request = small_limits.build_request("POST", "/segment", content=b"\x89PNG", headers=headers)
    request.headers["Content-Length"] = str(10**9)  # a claim we must refuse without reading the body
    assert_error(await small_limits.send(request), 413, "too_large")


@pytest.mark.parametrize(
    ("path", "params", "fragment"),
    [
        ("/detect", {"score_threshold": "1.5"}, "score_threshold"),
        ("/detect", {"score_threshold": "-0.1"}, "score_threshold"),
        ("/detect", {"score_threshold": "abc"}, "score_threshold"),
        ("/detect", {"max_detections": "0"}, "max_detections"),
        ("/instances", {"max_detections": "101"}, "max_detections"),
        ("/instances", {"mask_threshold": "2"}, "mask_threshold"),
        ("/instances", {"mask_threshold": "0"}, "mask_threshold"),
        ("/detect", {"classes": "circle,dog"}, "circle, square, triangle"),
        ("/segment", {"classes": "Circle"}, "circle, square, triangle"),
        ("/instances", {"classes": ","}, "circle, square, triangle"),
    ],
)
async def test_bad_parameters_are_422(
    small_limits: httpx.AsyncClient, path: str, params: dict[str, str], fragment: str
) -> None:
    data = encode(blocks_image(32, 32, 32))
    error = assert_error(await small_limits.post(path, params=params, **as_raw(data)), 422, "invalid_parameter")
    assert fragment in error["message"]


async def test_multipart_problems(small_limits: httpx.AsyncClient) -> None:
    data = encode(blocks_image(33, 32, 32))
    wrong_field = await small_limits.post("/detect", files={"picture": ("a.png", data, "image/png")})
    assert "'image'" in assert_error(wrong_field, 422, "invalid_parameter")["message"]
    as_text = await small_limits.post("/detect", data={"image": "not a file"}, files={"other": ("a", b"x")})
    assert_error(as_text, 422, "invalid_parameter")
    two_files = [("image", ("a.png", data, "image/png")), ("image", ("b.png", data, "image/png"))]
    assert_error(await small_limits.post("/detect", files=two_files), 400, "invalid_multipart")
    no_boundary = {"Content-Type": "multipart/form-data"}
    assert_error(await small_limits.post("/detect", content=b"--x\r\n", headers=no_boundary), 400)


async def test_routing_errors_are_json(small_limits: httpx.AsyncClient) -> None:
    assert_error(await small_limits.get("/nope"), 404, "not_found")
    wrong_method = await small_limits.get("/detect")
    assert_error(wrong_method, 405, "method_not_allowed")
    assert wrong_method.headers["allow"] == "POST"
    assert_error(await small_limits.post("/healthz"), 405, "method_not_allowed")


async def test_truncations_of_valid_uploads_never_cause_a_500(small_limits: httpx.AsyncClient) -> None:
    for fmt in ("PNG", "JPEG", "WEBP"):
        data = encode(_noise(48, 48), fmt)
        for cut in range(1, len(data), max(1, len(data) // 12)):
            response = await small_limits.post("/segment", **as_raw(data[:cut], fmt))
            assert response.status_code in (200, 400), (fmt, cut, response.text)  # a cut in a trailer can decode
    assert (await small_limits.get("/healthz")).status_code == 200
