"""Response bodies, as pydantic models: what the OpenAPI document promises is what the routes return.

Coordinates are pixels of the uploaded image after EXIF orientation; boxes are [x1, y1, x2, y2].
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


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
    model: ModelInfo
    image: ImageInfo
    detections: list[Detection]
    timing_ms: Timing


class InstancesResponse(BaseModel):
    model: ModelInfo
    image: ImageInfo
    detections: list[InstanceDetection]
    timing_ms: Timing


class SegmentResponse(BaseModel):
    model: ModelInfo
    image: ImageInfo
    segments: list[Segment] = Field(description="One per class present, background omitted; disjoint.")
    timing_ms: Timing


class ErrorDetail(BaseModel):
    code: str = Field(examples=["invalid_image"])
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    device: str


class Readiness(BaseModel):
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
    trained: dict[str, Any]
    format: int


class ModelList(BaseModel):
    models: list[ManifestInfo]
