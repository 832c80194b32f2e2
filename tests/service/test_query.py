"""Query strings mean what they say: unknown names are refused, low thresholds reach the model, and /models
does not tell anonymous callers where the models were trained."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import httpx
import pytest
import torch
from service_helpers import as_raw, blocks_image, encode, serve, settings_for

from models import Detections, Predictor, Query
from models.registry import SCORE_FLOOR

pytestmark = pytest.mark.anyio

DETECTOR_PARAMS = "classes, max_detections, render, score_threshold, timeout"


@pytest.mark.parametrize(
    ("path", "params", "unknown", "valid"),
    [
        ("/detect", {"max_detection": "5"}, "'max_detection'", DETECTOR_PARAMS),
        ("/detect", {"score_threshold": "0.3", "classs": "circle", "zz": "1"}, "'classs', 'zz'", DETECTOR_PARAMS),
        ("/instances", {"mask": "0.4"}, "'mask'", "classes, mask_threshold, max_detections, render"),
        ("/segment", {"score_threshold": "abc"}, "'score_threshold'", "classes, render, timeout"),
    ],
)
async def test_unknown_query_parameters_are_422_naming_the_valid_ones(
    client: httpx.AsyncClient, path: str, params: dict[str, str], unknown: str, valid: str
) -> None:
    data = encode(blocks_image(40, 32, 32))
    response = await client.post(path, params=params, **as_raw(data))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_parameter"
    assert f"unknown query parameter {unknown};" in error["message"]
    assert valid in error["message"]
    assert path in error["message"]


async def test_known_parameters_and_probes_with_extra_parameters_still_answer(client: httpx.AsyncClient) -> None:
    data = encode(blocks_image(41, 32, 32))
    params = {"score_threshold": "0.3", "max_detections": "4", "classes": "circle", "timeout": "9"}
    assert (await client.post("/detect", params=params, **as_raw(data))).status_code == 200
    assert (await client.get("/models", params={"x": "1"})).status_code == 422
    # A monitor's cache-buster must not fail a liveness or readiness probe.
    for probe in ("/healthz", "/readyz", "/metrics"):
        assert (await client.get(probe, params={"_": "123"})).status_code == 200


def _timid(predictor: Predictor) -> Predictor:
    """A copy of a real R-CNN predictor whose classifier favours the background: every score is below the floor."""
    timid = copy.copy(predictor)
    timid.model = copy.deepcopy(predictor.model)
    bias = getattr(timid.model, "roi_heads").box_predictor.cls_score.bias  # noqa: B009
    with torch.no_grad():
        bias[0] += 8.0
    return timid


@pytest.mark.parametrize("task", ["detect", "instances"])
async def test_thresholds_below_the_model_floor_reach_the_model(
    store: Path, predictors: dict[str, Predictor], task: str
) -> None:
    timid = _timid(predictors[task])
    data = encode(blocks_image(42, 64, 64))
    async with serve(settings_for(store, tasks=task), lambda _task, device: timid) as client:

        async def scores(threshold: float) -> list[float]:
            params = {"score_threshold": threshold, "max_detections": 100}
            response = await client.post(f"/{task}", params=params, **as_raw(data))
            assert response.status_code == 200, response.text
            return [d["score"] for d in response.json()["detections"]]

        at_floor, below = await scores(SCORE_FLOOR), await scores(0.0001)
    assert at_floor == []
    assert below, "a threshold under the model's floor of 0.05 must reach the model"
    assert all(0.0001 <= score < SCORE_FLOOR for score in below)
    # The model object keeps its own floor: batches on other threads are not affected.
    assert getattr(timid.model, "roi_heads").score_thresh == SCORE_FLOOR  # noqa: B009


def test_a_low_threshold_in_one_batch_leaves_its_neighbours_alone(predictors: dict[str, Predictor]) -> None:
    timid = _timid(predictors["instances"])
    tensor = torch.from_numpy(blocks_image(43, 64, 64)).permute(2, 0, 1).contiguous()
    low, default, floor = timid.predict([tensor] * 3, [Query(score_threshold=0.0), Query(), Query(SCORE_FLOOR)])
    assert isinstance(low, Detections)
    assert isinstance(default, Detections)
    assert isinstance(floor, Detections)
    assert len(low.boxes) > 0
    assert low.masks is not None
    assert len(low.masks) == len(low.boxes)
    assert len(default.boxes) == len(floor.boxes) == 0


async def test_models_hides_training_machine_paths(store: Path, predictors: dict[str, Predictor]) -> None:
    served = copy.copy(predictors["segment"])
    trained = {
        "dataset": "/home/alice/data/shapes",
        "run_dir": "/srv/runs/segment-quick-0007",
        "init_from": "C:\\Users\\alice\\weights\\fcn.pth",
        "config": {"input": {"max_size": 512}, "cache": "/scratch/alice/cache"},
        "preset": "quick",
        "augmentation": {"library": "torchvision.transforms.v2"},
        "steps": 300,
    }
    served.manifest = dataclasses.replace(served.manifest, trained=trained)
    settings = settings_for(store, tasks="segment")
    async with serve(settings, lambda task, device: served) as client:
        listed = (await client.get("/models")).json()["models"][0]["trained"]
    assert listed == {
        "dataset": "shapes",
        "run_dir": "segment-quick-0007",
        "init_from": "fcn.pth",
        "config": {"input": {"max_size": 512}, "cache": "cache"},
        "preset": "quick",
        "augmentation": {"library": "torchvision.transforms.v2"},
        "steps": 300,
    }
    assert "alice" not in str(listed)
