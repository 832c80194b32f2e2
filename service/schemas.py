"""Response bodies, as pydantic models: what the OpenAPI document promises is what the routes return.

Coordinates are pixels of the uploaded image after EXIF orientation; boxes are [x1, y1, x2, y2].
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Real answers (a 320x240 image; masks are real COCO RLE), shown as the examples in the OpenAPI docs.
_MODEL = {"task": "instances", "name": "maskrcnn_small", "version": "3f2a9c0d1b7e"}
_IMAGE = {"width": 320, "height": 240}
_TIMING = {"queue": 4.1, "inference": 38.6, "total": 47.9}
_CIRCLE_RLE = {
    "size": [240, 320],
    "counts": "Z\\a11W7`0D8I6K4L4L4M2M4M2N2N2N2N2N2N2N2O0O2N2O0O2O0O2O0O2O000O2O00000O2O0000000000000"
    "O20N100000000000001N1000001N10001N101N101N101N2N101N2N2N2N2N2N2N2N3L3N3L4L4L5J7H<@^d6",
}
_SQUARE_RLE = {"size": [240, 320], "counts": "l_g0`2P5" + "0" * 157 + "ThP1"}
_DETECTION = {"label": "circle", "label_id": 1, "score": 0.97, "box": [210.0, 130.0, 291.0, 211.0]}
DETECT_EXAMPLE = {"model": {**_MODEL, "task": "detect", "name": "fasterrcnn_small"}, "image": _IMAGE,
                  "detections": [_DETECTION], "timing_ms": _TIMING}  # fmt: skip
INSTANCES_EXAMPLE = {"model": _MODEL, "image": _IMAGE, "timing_ms": _TIMING,
                     "detections": [{**_DETECTION, "area": 5025, "mask": _CIRCLE_RLE}]}  # fmt: skip
SEGMENT_EXAMPLE = {"model": {**_MODEL, "task": "segment", "name": "fcn_small"}, "image": _IMAGE, "timing_ms": _TIMING,
                   "segments": [{"label": "square", "label_id": 2, "area": 6400, "mask": _SQUARE_RLE}]}  # fmt: skip

MANIFEST_EXAMPLE = {
    "format": 1,
    "task": "detect",
    "arch": "fasterrcnn_small",
    "num_classes": 4,
    "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}, {"id": 3, "name": "triangle"}],
    "version": "3f2a9c0d1b7e",
    "sha256": "3f2a9c0d1b7e" + "0" * 52,
    "input": {"min_size": 320, "max_size": 512, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    "options": {},
    "metrics": {"val": {"bbox_mAP": 0.81}},
    "trained": {"dataset": "shapes", "preset": "quick", "steps": 3000, "seconds": 612.0, "device": "cpu"},
}


def _example(value: dict[str, Any]) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": [value]})


class ModelInfo(BaseModel):
    task: str = Field(examples=["detect"])
    name: str = Field(description="Architecture name from the manifest.", examples=["fasterrcnn_small"])
    version: str = Field(description="First 12 hex digits of the weights' sha256.", examples=["3f2a9c0d1b7e"])


class ImageInfo(BaseModel):
    width: int
    height: int


class Timing(BaseModel):
    queue: float = Field(description="Milliseconds waiting for a batch.")
    inference: float = Field(description="Milliseconds the batch holding this image spent in the model.")
    total: float = Field(description="Milliseconds handling the request: reading, decoding, queue, model, encoding.")


class Mask(BaseModel):
    """COCO compressed RLE: `pycocotools.mask.decode({"size": size, "counts": counts})` gives the H x W mask."""

    size: list[int] = Field(min_length=2, max_length=2, description="[height, width]")
    counts: str


class Detection(BaseModel):
    label: str = Field(examples=["circle"])
    label_id: int = Field(examples=[1])
    score: float = Field(ge=0, le=1)
    box: list[float] = Field(min_length=4, max_length=4, description="[x1, y1, x2, y2] in pixels")


class InstanceDetection(Detection):
    area: int = Field(description="Pixels in the mask.")
    mask: Mask


class Segment(BaseModel):
    label: str
    label_id: int
    area: int = Field(description="Pixels in the mask.")
    mask: Mask


class DetectResponse(BaseModel):
    model_config = _example(DETECT_EXAMPLE)

    model: ModelInfo
    image: ImageInfo
    detections: list[Detection]
    timing_ms: Timing


class InstancesResponse(BaseModel):
    model_config = _example(INSTANCES_EXAMPLE)

    model: ModelInfo
    image: ImageInfo
    detections: list[InstanceDetection]
    timing_ms: Timing


class SegmentResponse(BaseModel):
    model_config = _example(SEGMENT_EXAMPLE)

    model: ModelInfo
    image: ImageInfo
    segments: list[Segment] = Field(description="One per class present, background omitted; disjoint.")
    timing_ms: Timing


class ErrorDetail(BaseModel):
    code: str = Field(examples=["invalid_image"])
    message: str


class ErrorBody(BaseModel):
    model_config = _example({"error": {"code": "invalid_image", "message": "cannot decode this PNG image"}})

    error: ErrorDetail


class Health(BaseModel):
    model_config = _example({"status": "ok", "device": "cuda:0"})

    status: Literal["ok"] = "ok"
    device: str


class Readiness(BaseModel):
    model_config = _example({"status": "ready", "models": {"segment": "9b1c4e7a2d30", "detect": "3f2a9c0d1b7e"}})

    status: Literal["ready"] = "ready"
    models: dict[str, str] = Field(description="Task to model version.")


class CategoryInfo(BaseModel):
    id: int
    name: str


class ManifestInfo(BaseModel):
    task: str
    arch: str
    num_classes: int
    categories: list[CategoryInfo]
    version: str
    sha256: str
    input: dict[str, Any]
    options: dict[str, Any]
    metrics: dict[str, Any]
    trained: dict[str, Any] = Field(description="How it was trained; file paths are shown by their last part only.")
    format: int
    runtime: dict[str, Any] | None = Field(
        default=None,
        description="How it runs here: precision, memory format, compiled, and how that was chosen (with timings).",
    )

    @field_validator("trained")
    @classmethod
    def _hide_paths(cls, value: dict[str, Any]) -> dict[str, Any]:
        # The trainer records where it ran (dataset, run_dir, init_from): the training machine's layout is
        # no business of an anonymous caller. The full manifest stays in the model store for operators.
        return {key: _last_part(item) for key, item in value.items()}


def _last_part(value: Any) -> Any:
    if isinstance(value, str) and ("/" in value or "\\" in value):
        return PurePath(value.replace("\\", "/")).name
    if isinstance(value, dict):
        return {key: _last_part(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_last_part(item) for item in value]
    return value


Outcome = Literal["reloaded", "unchanged", "failed", "skipped"]


class TaskReload(BaseModel):
    """What a reload did for one task."""

    task: str
    result: Outcome = Field(
        description="reloaded: the store's version serves now; unchanged: it served already; failed: it could "
        "not be loaded, verified or warmed, and `before` serves on; skipped: polling does not retry a version "
        "that failed (POST /models/reload and SIGHUP do)."
    )
    before: str = Field(description="The version served before the reload.")
    after: str = Field(description="The version served after it.")
    store: str | None = Field(description="The version the store holds (null when its entry cannot be read).")
    reason: str | None = Field(default=None, description="Why it failed or was skipped.")
    seconds: float = Field(description="Time spent on this task: loading, verifying, warming, switching.")
    at: str = Field(description="When it finished (UTC, ISO 8601).")


_RELOAD = {"task": "detect", "result": "reloaded", "before": "3f2a9c0d1b7e", "after": "9b1c4e7a2d30",
           "store": "9b1c4e7a2d30", "reason": None, "seconds": 1.4, "at": "2026-01-02T03:04:05Z"}  # fmt: skip


class ReloadReport(BaseModel):
    model_config = _example({"ok": True, "trigger": "POST /models/reload", "tasks": [_RELOAD]})

    ok: bool = Field(description="Every task serves its store's version (HTTP 200); otherwise 409.")
    trigger: str
    tasks: list[TaskReload]
    error: ErrorDetail | None = Field(default=None, description="With ok false: which tasks failed and why.")


class ServedModelInfo(ManifestInfo):
    loaded_at: str = Field(description="When this version was loaded (UTC, ISO 8601).")
    previous_version: str | None = Field(description="The version it replaced by a reload; null if none.")
    last_reload: TaskReload | None = Field(
        description="The last reload that found a new version for this task, whatever its outcome."
    )


class ModelList(BaseModel):
    model_config = _example(
        {"models": [{**MANIFEST_EXAMPLE, "loaded_at": "2026-01-02T03:04:05Z", "previous_version": None,
                     "last_reload": None}]}
    )  # fmt: skip

    models: list[ServedModelInfo]
