"""The inference endpoints. Each one is thin: read -> decode -> submit to its queue -> build the schema."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

import models
from models.registry import MAX_DETECTIONS
from service import responses
from service.batching import BatcherStoppedError, Completed, DeadlineExceededError, QueueFullError
from service.errors import ApiError, invalid_parameter
from service.imaging import DecodedImage, decode_image
from service.runtime import Job, Result, Runtime, TaskModel
from service.schemas import (
    DetectResponse,
    ErrorBody,
    ImageInfo,
    InstancesResponse,
    SegmentResponse,
    Timing,
)
from service.uploads import read_image_bytes

log = logging.getLogger(__name__)


def get_runtime(request: Request) -> Runtime:
    return cast(Runtime, request.state.runtime)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
ScoreThreshold = Annotated[float, Query(ge=0, le=1, description="Drop detections scoring below this.")]
MaxDetections = Annotated[int, Query(ge=1, le=MAX_DETECTIONS, description="Keep the best N.")]
MaskThreshold = Annotated[float, Query(ge=0, le=1, description="Mask probability at which a pixel is in.")]
Classes = Annotated[
    str | None,
    Query(description="Comma-separated category names to keep (see /models); default all.", examples=["circle"]),
]

_ERRORS = {
    400: "Undecodable, truncated or empty image, or malformed upload.",
    413: "Upload over the byte limit, or image over the pixel limit.",
    415: "Content type or image format other than JPEG, PNG or WEBP.",
    422: "Bad query parameter (the message lists valid class names).",
    429: "Queue full; retry after the Retry-After header's seconds.",
    503: "Model not loaded and warmed yet, or shutting down.",
    504: "No result within the request timeout.",
}
_BINARY = {"type": "string", "format": "binary"}
_DOC: dict[str, Any] = {
    "responses": {status: {"model": ErrorBody, "description": text} for status, text in _ERRORS.items()},
    "openapi_extra": {
        "requestBody": {
            "required": True,
            "description": "The image: multipart field `image`, or the raw bytes with an image/* Content-Type.",
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "required": ["image"], "properties": {"image": _BINARY}}
                },
                **{media: {"schema": _BINARY} for media in ("image/jpeg", "image/png", "image/webp")},
            },
        }
    },
}

segment_router = APIRouter(tags=["inference"])
detect_router = APIRouter(tags=["inference"])
instances_router = APIRouter(tags=["inference"])


@segment_router.post("/segment", response_model=SegmentResponse, summary="Semantic segmentation", **_DOC)
async def segment(request: Request, runtime: RuntimeDep, classes: Classes = None) -> SegmentResponse:
    run = await _infer(request, runtime, "segment", lambda m: models.Query(class_ids=_class_ids(m, classes)))
    segments = await run_in_threadpool(responses.segments, cast(models.SemanticMap, run.result), run.model.names)
    return SegmentResponse(segments=segments, **run.envelope())


@detect_router.post("/detect", response_model=DetectResponse, summary="Object detection", **_DOC)
async def detect(
    request: Request,
    runtime: RuntimeDep,
    score_threshold: ScoreThreshold = 0.5,
    max_detections: MaxDetections = MAX_DETECTIONS,
    classes: Classes = None,
) -> DetectResponse:
    def query(m: TaskModel) -> models.Query:
        return models.Query(score_threshold, max_detections, _class_ids(m, classes))

    run = await _infer(request, runtime, "detect", query)
    # At most 100 boxes and no masks: cheap enough for the event loop.
    detections = responses.detections(cast(models.Detections, run.result), run.model.names)
    return DetectResponse(detections=detections, **run.envelope())


@instances_router.post("/instances", response_model=InstancesResponse, summary="Instance segmentation", **_DOC)
async def instances(
    request: Request,
    runtime: RuntimeDep,
    score_threshold: ScoreThreshold = 0.5,
    max_detections: MaxDetections = MAX_DETECTIONS,
    classes: Classes = None,
    mask_threshold: MaskThreshold = 0.5,
) -> InstancesResponse:
    def query(m: TaskModel) -> models.Query:
        return models.Query(score_threshold, max_detections, _class_ids(m, classes), mask_threshold)

    run = await _infer(request, runtime, "instances", query)
    found = await run_in_threadpool(responses.instances, cast(models.Detections, run.result), run.model.names)
    return InstancesResponse(detections=found, **run.envelope())


ROUTERS = {"segment": segment_router, "detect": detect_router, "instances": instances_router}


@dataclass
class _Run:
    model: TaskModel
    image: DecodedImage
    completed: Completed[Result]
    started: float

    @property
    def result(self) -> Result:
        return self.completed.value

    def envelope(self) -> dict[str, Any]:
        """The fields every inference response shares; `total` is taken now, as the response is built."""
        timing = Timing(
            queue=round(self.completed.queue_s * 1000, 3),
            inference=round(self.completed.inference_s * 1000, 3),
            total=round((time.perf_counter() - self.started) * 1000, 3),
        )
        return {
            "model": responses.model_info(self.model.manifest),
            "image": ImageInfo(width=self.image.width, height=self.image.height),
            "timing_ms": timing,
        }


async def _infer(request: Request, runtime: Runtime, task: str, query: Callable[[TaskModel], models.Query]) -> _Run:
    started = time.perf_counter()
    model = runtime.models[task]
    settings = runtime.settings
    try:
        if model.state != "ready":
            raise ApiError(503, "not_ready", f"the {task} model is still warming up", {"Retry-After": "5"})
        job_query = query(model)
        data = await read_image_bytes(request, settings.max_image_bytes)
        image = await run_in_threadpool(decode_image, data, settings.max_image_pixels)
        remaining = settings.request_timeout_s - (time.perf_counter() - started)
        completed = await _submit(model, Job(image.tensor, job_query), remaining)
    except ApiError as exc:
        runtime.metrics.rejected.labels(task=task, reason=exc.code).inc()
        raise
    return _Run(model, image, completed, started)


async def _submit(model: TaskModel, job: Job, timeout_s: float) -> Completed[Result]:
    task = model.manifest.task
    try:
        if timeout_s <= 0:
            raise DeadlineExceededError
        return await model.batcher.submit(job, timeout_s)
    except QueueFullError:
        raise ApiError(429, "queue_full", f"the {task} queue is full; retry shortly", {"Retry-After": "1"}) from None
    except DeadlineExceededError:
        raise ApiError(504, "deadline_exceeded", f"no {task} result within the request timeout") from None
    except BatcherStoppedError:
        raise ApiError(503, "shutting_down", "the service is shutting down", {"Retry-After": "5"}) from None
    except ValueError as exc:  # the predictor refused this image (its neighbours in the batch still ran)
        raise ApiError(422, "unprocessable_image", f"the model cannot process this image: {exc}") from None
    except Exception as exc:
        log.exception("%s inference failed", task)
        raise ApiError(500, "inference_failed", f"{task} inference failed; see the server log") from exc


def _class_ids(model: TaskModel, classes: str | None) -> frozenset[int] | None:
    if classes is None:
        return None
    names = [name.strip() for name in classes.split(",") if name.strip()]
    valid = ", ".join(sorted(model.names.values()))
    if not names:
        raise invalid_parameter(f"classes is empty; valid names: {valid}")
    try:
        return model.class_ids(names)
    except KeyError as exc:
        raise invalid_parameter(f"unknown class {exc.args[0]!r}; valid names: {valid}") from None
