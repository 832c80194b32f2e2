"""`?render=png`: the overlay drawn by the client's renderer from the very answer the JSON carries."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from service_helpers import as_multipart, as_raw, blocks_image, encode, serve, settings_for

from client.overlay import open_image, render_overlay
from models import Predictor

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy:DeprecationWarning"),
]

PARAMS = {
    "segment": {},
    "detect": {"score_threshold": 0, "max_detections": 5},
    "instances": {"score_threshold": 0, "max_detections": 5},
}


def _rotated_jpeg() -> bytes:
    """A 96x72 JPEG whose EXIF says 'rotate 90° clockwise to display': shown as 72 wide, 96 tall."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(blocks_image(5, 72, 96), "JPEG", exif=exif.tobytes(), quality=95)


@pytest.mark.parametrize("task", ["segment", "detect", "instances"])
async def test_png_is_the_json_answer_drawn_over_the_image(client: httpx.AsyncClient, task: str) -> None:
    data = encode(blocks_image(21, 80, 120))
    answer = await client.post(f"/{task}", params=PARAMS[task], **as_multipart(data))
    drawn = await client.post(f"/{task}", params={**PARAMS[task], "render": "png"}, **as_multipart(data))
    assert answer.status_code == drawn.status_code == 200, drawn.text
    assert drawn.headers["content-type"] == "image/png"
    body = answer.json()
    assert body["segments" if task == "segment" else "detections"], "nothing to draw: the test would prove little"
    picture = Image.open(io.BytesIO(drawn.content))
    assert picture.format == "PNG"
    assert picture.size == (120, 80)
    expected = render_overlay(open_image(data), body)
    assert np.array_equal(np.asarray(picture.convert("RGB")), np.asarray(expected))
    assert not np.array_equal(np.asarray(expected), np.asarray(open_image(data))), "the overlay drew nothing"


async def test_png_follows_exif_orientation(client: httpx.AsyncClient) -> None:
    data = _rotated_jpeg()
    drawn = await client.post("/instances", params={**PARAMS["instances"], "render": "png"}, **as_raw(data, "JPEG"))
    assert drawn.status_code == 200, drawn.text
    picture = Image.open(io.BytesIO(drawn.content))
    assert picture.size == (72, 96)
    body = (await client.post("/instances", params=PARAMS["instances"], **as_raw(data, "JPEG"))).json()
    assert (body["image"]["width"], body["image"]["height"]) == (72, 96)
    assert np.array_equal(np.asarray(picture.convert("RGB")), np.asarray(render_overlay(open_image(data), body)))


async def test_png_of_a_shrunk_upload_has_the_upload_size(store: Path, predictors: dict[str, Predictor]) -> None:
    """The model may see a shrunk copy of a large upload; the answer and its picture are at the upload's size."""
    data = encode(blocks_image(3, 96, 160))
    async with serve(settings_for(store, max_image_side=64), lambda task, device: predictors[task]) as small:
        drawn = await small.post("/instances", params={**PARAMS["instances"], "render": "png"}, **as_multipart(data))
    assert drawn.status_code == 200, drawn.text
    assert Image.open(io.BytesIO(drawn.content)).size == (160, 96)


async def test_errors_stay_json_when_a_picture_was_asked_for(client: httpx.AsyncClient) -> None:
    response = await client.post("/detect", params={"render": "png"}, **as_multipart(b"not an image"))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_image"


async def test_unknown_render_format_is_a_bad_parameter(client: httpx.AsyncClient) -> None:
    response = await client.post("/segment", params={"render": "gif"}, **as_multipart(encode(blocks_image(1))))
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_parameter"


async def test_openapi_documents_render_and_examples(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            ok = operation["responses"]["200"]
            assert ok.get("content"), f"{method} {path}: no 200 content"
            for media, content in ok["content"].items():
                if media == "image/png":
                    continue
                ref = content.get("schema", {}).get("$ref", "")
                schema = schemas.get(ref.rsplit("/", 1)[-1], {})
                has_example = "example" in content or "examples" in content or "examples" in schema
                assert has_example, f"{method} {path} {media}: no example"
    for task in ("segment", "detect", "instances"):
        operation = spec["paths"][f"/{task}"]["post"]
        assert "image/png" in operation["responses"]["200"]["content"]
        render = next(p for p in operation["parameters"] if p["name"] == "render")
        assert "png" in str(render["schema"])
