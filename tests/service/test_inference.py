"""The three inference endpoints over real HTTP, checked against the very predictors the app serves."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from service_helpers import as_multipart, as_raw, blocks_image, encode

from models import Detections, Predictor, Query, SemanticMap
from service.imaging import Limits, decode_image

pytestmark = [
    pytest.mark.anyio,
    # pycocotools' decode under numpy 2: a third-party deprecation, not ours.
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy:DeprecationWarning"),
]

TASKS = ("segment", "detect", "instances")


def _decode_rle(rle: dict[str, Any]) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")})


def _own_result(predictor: Predictor, data: bytes, query: Query) -> Any:
    """What the predictor itself says about the same uploaded bytes."""
    tensor = decode_image(data, Limits(10**8)).tensor
    return predictor.predict([tensor], [query])[0]


def _label_map(body: dict[str, Any]) -> np.ndarray:
    height, width = body["image"]["height"], body["image"]["width"]
    labels = np.zeros((height, width), dtype=np.int64)
    for segment in body["segments"]:
        mask = _decode_rle(segment["mask"]).astype(bool)
        assert not (labels[mask] != 0).any(), "segments overlap"
        assert int(mask.sum()) == segment["area"]
        labels[mask] = segment["label_id"]
    return labels


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
@pytest.mark.parametrize("upload", [as_multipart, as_raw])
async def test_every_endpoint_takes_every_format_both_ways(
    client: httpx.AsyncClient, task: str, fmt: str, upload: Any
) -> None:
    data = encode(blocks_image(11, 48, 64), fmt)
    params = {} if task == "segment" else {"score_threshold": 0}  # /segment takes no threshold (422)
    response = await client.post(f"/{task}", params=params, **upload(data, fmt))
    assert response.status_code == 200, response.text
    body = response.json()
    results = "segments" if task == "segment" else "detections"
    assert set(body) == {"model", "image", results, "timing_ms"}
    assert body["model"]["task"] == task
    assert body["model"]["version"]
    assert body["image"] == {"width": 64, "height": 48}
    assert set(body["timing_ms"]) == {"queue", "inference", "total"}
    assert body["timing_ms"]["total"] >= body["timing_ms"]["inference"] > 0
    if task != "segment":
        assert body["detections"], "score_threshold=0 keeps what the model found"


async def test_instance_masks_are_the_predictors_masks_bit_for_bit(
    client: httpx.AsyncClient, predictors: dict[str, Predictor]
) -> None:
    data = encode(blocks_image(12, 60, 80), "JPEG")
    params = {"score_threshold": 0.0, "mask_threshold": 0.4, "max_detections": 25}
    body = (await client.post("/instances", params=params, **as_raw(data, "JPEG"))).json()
    own = _own_result(predictors["instances"], data, Query(0.0, 25, None, 0.4))
    assert isinstance(own, Detections)
    assert own.masks is not None
    assert len(body["detections"]) == len(own.masks) > 0
    masks = own.masks.dense()
    for det, mask, box, label in zip(body["detections"], masks, own.boxes, own.labels, strict=True):
        assert det["mask"]["size"] == [60, 80]
        assert np.array_equal(_decode_rle(det["mask"]), mask.numpy().astype(np.uint8))
        assert det["area"] == int(mask.sum())
        assert det["label_id"] == int(label)
        assert det["box"] == pytest.approx(box.tolist(), abs=0.01)


async def test_segments_rebuild_the_predictors_label_map(
    client: httpx.AsyncClient, predictors: dict[str, Predictor]
) -> None:
    data = encode(blocks_image(13, 70, 90), "PNG")
    body = (await client.post("/segment", **as_multipart(data))).json()
    own = _own_result(predictors["segment"], data, Query())
    assert isinstance(own, SemanticMap)
    assert np.array_equal(_label_map(body), own.labels.numpy())
    present = sorted(int(i) for i in own.labels.unique() if i != 0)
    assert [s["label_id"] for s in body["segments"]] == present
    names = {1: "circle", 2: "square", 3: "triangle"}
    assert all(s["label"] == names[s["label_id"]] for s in body["segments"])


async def test_exif_rotated_jpeg_reports_rotated_size_and_in_bounds_results(client: httpx.AsyncClient) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 96 wide x 60 high, displayed rotated: 60 wide x 96 high
    data = encode(blocks_image(14, 60, 96), "JPEG", exif=exif.tobytes())
    for task in TASKS:
        params = {} if task == "segment" else {"score_threshold": 0}
        body = (await client.post(f"/{task}", params=params, **as_multipart(data, "JPEG"))).json()
        assert body["image"] == {"width": 60, "height": 96}
        for det in body.get("detections", []):
            x1, y1, x2, y2 = det["box"]
            assert 0 <= x1 <= x2 <= 60
            assert 0 <= y1 <= y2 <= 96
            if "mask" in det:
                assert det["mask"]["size"] == [96, 60]
        for segment in body.get("segments", []):
            assert segment["mask"]["size"] == [96, 60]


@pytest.mark.parametrize("task", ["detect", "instances"])
async def test_thresholds_and_max_detections_filter(
    client: httpx.AsyncClient, predictors: dict[str, Predictor], task: str
) -> None:
    data = encode(blocks_image(15, 64, 64), "PNG")

    async def ask(**params: Any) -> list[dict[str, Any]]:
        response = await client.post(f"/{task}", params=params, **as_raw(data))
        assert response.status_code == 200, response.text
        return response.json()["detections"]

    everything = await ask(score_threshold=0)
    scores = [d["score"] for d in everything]
    assert scores == sorted(scores, reverse=True)
    assert len(scores) > 5
    cut = scores[len(scores) // 2]
    kept = await ask(score_threshold=cut)
    assert 0 < len(kept) < len(everything)
    assert all(d["score"] >= cut - 1e-4 for d in kept)
    assert await ask(score_threshold=0, max_detections=3) == everything[:3]
    assert len(await ask(score_threshold=1)) <= len(kept)
    own = _own_result(predictors[task], data, Query(score_threshold=cut))
    assert [d["label_id"] for d in kept] == own.labels.tolist()


@pytest.mark.parametrize("task", ["detect", "instances"])
async def test_classes_filter_by_name(client: httpx.AsyncClient, task: str) -> None:
    data = encode(blocks_image(16, 64, 64), "PNG")
    everything = (await client.post(f"/{task}", params={"score_threshold": 0}, **as_raw(data))).json()["detections"]
    present = {d["label"] for d in everything}
    assert present, "the model found something"
    wanted = sorted(present)[0]
    params = {"score_threshold": 0, "classes": f" {wanted} ,"}
    only = (await client.post(f"/{task}", params=params, **as_raw(data))).json()["detections"]
    assert only == [d for d in everything if d["label"] == wanted]


async def test_segment_classes_filter(client: httpx.AsyncClient) -> None:
    data = encode(blocks_image(17, 64, 64), "PNG")
    everything = (await client.post("/segment", **as_raw(data))).json()["segments"]
    wanted = everything[0]
    only = (await client.post("/segment", params={"classes": wanted["label"]}, **as_raw(data))).json()["segments"]
    assert only == [wanted]  # the other classes' pixels became background


async def test_mask_threshold_changes_masks(client: httpx.AsyncClient) -> None:
    data = encode(blocks_image(18, 64, 64), "PNG")

    async def areas(mask_threshold: float) -> list[int]:
        params = {"score_threshold": 0, "max_detections": 5, "mask_threshold": mask_threshold}
        body = (await client.post("/instances", params=params, **as_raw(data))).json()
        return [d["area"] for d in body["detections"]]

    low, high = await areas(0.1), await areas(0.9)
    assert len(low) == len(high) == 5
    assert all(lo >= hi for lo, hi in zip(low, high, strict=True))
    assert sum(low) > sum(high)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16"])
async def test_pillow_modes_are_served(client: httpx.AsyncClient, mode: str) -> None:
    image = Image.fromarray(blocks_image(19, 40, 40))
    if mode == "I;16":
        image = Image.fromarray(np.asarray(image.convert("L")).astype(np.uint16) * 257)
    else:
        image = image.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    response = await client.post("/segment", **as_multipart(encode(image, fmt), fmt))
    assert response.status_code == 200, response.text


async def test_openapi_documents_the_real_shapes(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    expected = {"/segment": "SegmentResponse", "/detect": "DetectResponse", "/instances": "InstancesResponse"}
    for path, name in expected.items():
        post = spec["paths"][path]["post"]
        ok = post["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        assert ok == f"#/components/schemas/{name}"
        for status in ("400", "413", "415", "422", "429", "503", "504"):
            error = post["responses"][status]["content"]["application/json"]["schema"]["$ref"]
            assert error == "#/components/schemas/ErrorBody"
        content = post["requestBody"]["content"]
        assert set(content) == {"multipart/form-data", "image/jpeg", "image/png", "image/webp"}
    assert set(schemas["InstanceDetection"]["properties"]) == {"label", "label_id", "score", "box", "area", "mask"}
    assert set(schemas["Mask"]["properties"]) == {"size", "counts"}
    params = {p["name"] for p in spec["paths"]["/instances"]["post"]["parameters"]}
    assert params == {
        *("score_threshold", "max_detections", "classes", "mask_threshold", "render"),
        *("timeout", "x-request-timeout"),
    }
    assert (await client.get("/docs")).status_code == 200


def test_helpers_agree_with_the_service_decoder() -> None:
    pixels = blocks_image(20, 10, 12)
    assert torch.equal(decode_image(encode(pixels), Limits(10**6)).tensor, torch.from_numpy(pixels).permute(2, 0, 1))
