"""The inference endpoints. Each one is thin: read -> decode -> submit to its queue -> build the schema."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, cast

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import BaseModel

import models
from models.registry import MAX_DETECTIONS
from service import inference, responses
from service.batching import Completed
from service.errors import ApiError, invalid_parameter
from service.imaging import DecodedImage
from service.runtime import Answer, Output, Runtime, TaskModel
from service.schemas import (
    Detection,
    DetectResponse,
    ErrorBody,
    ImageInfo,
    InstanceDetection,
    InstancesResponse,
    Segment,
    SegmentResponse,
    Timing,
)
from service.uploads import UploadBudget

log = logging.getLogger(__name__)


# Dependencies are `async def` on purpose: FastAPI runs a plain `def` dependency on a worker thread,
# two thread hops per request for what is an attribute lookup and a min().
async def get_runtime(request: Request) -> Runtime:
    return cast(Runtime, request.state.runtime)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def request_timeout(
    runtime: RuntimeDep,
    timeout: Annotated[
        float | None, Query(gt=0, le=3600, description="Seconds to wait for a result (then 504); server-capped.")
    ] = None,
    x_request_timeout: Annotated[float | None, Header(gt=0, le=3600, description="Same as `timeout`.")] = None,
) -> float:
    """The request's timeout in seconds: the shortest asked for, never beyond REQUEST_TIMEOUT_S."""
    asked = [t for t in (timeout, x_request_timeout) if t is not None]
    return min([runtime.settings.request_timeout_s, *asked])


TimeoutDep = Annotated[float, Depends(request_timeout)]
ScoreThreshold = Annotated[
    float,
    Query(
        ge=0,
        le=1,
        description="Drop detections scoring below this; below 0.05 the model keeps lower-scoring candidates too.",
    ),
]
MaxDetections = Annotated[
    int, Query(ge=1, le=MAX_DETECTIONS, description="Keep the best N (at most the server's MAX_DETECTIONS).")
]
# Above 0: at 0 every pixel of the image, far outside the object's box, would be in its mask.
MaskThreshold = Annotated[float, Query(gt=0, le=1, description="Mask probability at which a pixel is in.")]
Classes = Annotated[
    str | None,
    Query(description="Comma-separated category names to keep (see /models); default all.", examples=["circle"]),
]
Render = Annotated[
    Literal["png"] | None,
    Query(description="`png`: answer with the overlay picture (masks, boxes, labels) instead of JSON."),
]

_ERRORS = {
    400: "Undecodable, truncated or empty image, or malformed upload.",
    413: "Upload over the byte limit, or image over the pixel limit.",
    415: "Content type or image format other than JPEG, PNG or WEBP, or an animated / multi-frame file.",
    408: "The upload did not arrive within BODY_TIMEOUT_S (or the request's timeout); the connection is closed.",
    422: "Bad or unknown query parameter (the message lists the valid ones), or an extreme aspect ratio.",
    429: (
        "Queue or upload buffer full, the queue too slow for the request's timeout, or (render=png) every"
        " drawing slot busy until it; retry after the Retry-After header's seconds."
    ),
    503: "Model not loaded and warmed yet, shutting down, or its batching worker stopped.",
    504: "No result within the request timeout.",
    507: "The image does not fit in the device's memory, even in a batch of its own.",
}
_BINARY = {"type": "string", "format": "binary"}
_PNG = {
    "description": (
        "The response, as JSON; or with `render=png`, drawn over the image (EXIF applied), at most"
        " RENDER_MAX_SIDE pixels on its longer side."
    ),
    "content": {"image/png": {"schema": _BINARY}},
}
_DOC: dict[str, Any] = {
    "responses": {200: _PNG} | {status: {"model": ErrorBody, "description": text} for status, text in _ERRORS.items()},
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


def _query_names(dependant: Dependant) -> set[str]:
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


async def known_query_only(request: Request) -> None:
    """422 for a query parameter the endpoint does not take: a typo (`max_detection=5`) must not pass unseen."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or not request.query_params:
        return
    valid = _query_names(route.dependant)
    unknown = sorted(set(request.query_params) - valid)
    if unknown:
        shown = ", ".join(repr(name) for name in unknown)
        raise invalid_parameter(f"unknown query parameter {shown}; {route.path} takes: {', '.join(sorted(valid))}")


# On every inference route and /models (not on the probes: a monitor's cache-buster must not fail a probe).
STRICT_QUERY = Depends(known_query_only)

segment_router = APIRouter(tags=["inference"])
detect_router = APIRouter(tags=["inference"])
instances_router = APIRouter(tags=["inference"])


@segment_router.post("/segment", response_model=SegmentResponse, summary="Semantic segmentation", **_DOC)
async def segment(
    request: Request, runtime: RuntimeDep, timeout: TimeoutDep, classes: Classes = None, render: Render = None
) -> Response:
    def query(m: TaskModel) -> models.Query:
        return models.Query(class_ids=_class_ids(m, classes))

    run = await _infer(request, runtime, "segment", query, timeout)
    segments = cast(list[Segment], run.items)
    return await _respond(run, SegmentResponse(segments=segments, **run.envelope()), render)


@detect_router.post("/detect", response_model=DetectResponse, summary="Object detection", **_DOC)
async def detect(
    request: Request,
    runtime: RuntimeDep,
    timeout: TimeoutDep,
    score_threshold: ScoreThreshold = 0.5,
    max_detections: MaxDetections = MAX_DETECTIONS,
    classes: Classes = None,
    render: Render = None,
) -> Response:
    def query(m: TaskModel) -> models.Query:
        return models.Query(score_threshold, max_detections, _class_ids(m, classes))

    run = await _infer(request, runtime, "detect", query, timeout)
    detections = cast(list[Detection], run.items)
    return await _respond(run, DetectResponse(detections=detections, **run.envelope()), render)


@instances_router.post("/instances", response_model=InstancesResponse, summary="Instance segmentation", **_DOC)
async def instances(
    request: Request,
    runtime: RuntimeDep,
    timeout: TimeoutDep,
    score_threshold: ScoreThreshold = 0.5,
    max_detections: MaxDetections = MAX_DETECTIONS,
    classes: Classes = None,
    mask_threshold: MaskThreshold = 0.5,
    render: Render = None,
) -> Response:
    def query(m: TaskModel) -> models.Query:
        return models.Query(score_threshold, max_detections, _class_ids(m, classes), mask_threshold)

    run = await _infer(request, runtime, "instances", query, timeout)
    found = cast(list[InstanceDetection], run.items)
    return await _respond(run, InstancesResponse(detections=found, **run.envelope()), render)


ROUTERS = {"segment": segment_router, "detect": detect_router, "instances": instances_router}


@dataclass
class _Run:
    runtime: Runtime
    image: DecodedImage
    completed: Completed[Output]
    started: float
    deadline: float  # perf_counter time: the request's timeout runs out

    @property
    def items(self) -> Answer:
        """The answer's detections or segments, in the upload's pixels (built on the inference thread)."""
        return self.completed.value.items

    def envelope(self) -> dict[str, Any]:
        """The fields every inference response shares; `total` is taken now, as the response is built."""
        timing = Timing(
            queue=round(self.completed.queue_s * 1000, 3),
            inference=round(self.completed.inference_s * 1000, 3),
            total=round((time.perf_counter() - self.started) * 1000, 3),
        )
        return {
            # The model that computed this answer: after a reload, the runtime may serve another already.
            "model": responses.model_info(self.completed.value.manifest),
            "image": ImageInfo(width=self.image.width, height=self.image.height),
            "timing_ms": timing,
        }


async def _respond(run: _Run, body: BaseModel, render: str | None) -> Response:
    if render != "png":
        # pydantic-core writes the JSON bytes in one Rust call (no dict, no json.dumps, no re-validation
        # of a body we just built), whatever FastAPI version serves it: RLE-heavy bodies are large.
        return Response(body.model_dump_json(), media_type="application/json")
    try:  # bounded in size, in number at once and by the deadline: service/render.py
        png = await run.runtime.renderer.png(run.image, body, run.deadline)
    except ApiError as exc:
        run.runtime.metrics.rejected.labels(task=run.completed.value.manifest.task, reason=exc.code).inc()
        raise
    return Response(png, media_type="image/png")


async def _infer(
    request: Request, runtime: Runtime, task: str, query: Callable[[TaskModel], models.Query], timeout_s: float
) -> _Run:
    started = time.perf_counter()
    model = runtime.models[task]
    try:
        if model.state != "ready":
            raise ApiError(503, "not_ready", f"the {task} model is still warming up", {"Retry-After": "5"})
        job_query = query(model)
        cap = min(job_query.max_detections, runtime.settings.max_detections)
        job_query = dataclasses.replace(job_query, max_detections=cap)
        uploads = cast(UploadBudget, request.state.uploads)
        image, completed = await inference.run(request, runtime, uploads, model, job_query, started + timeout_s)
    except ApiError as exc:
        runtime.metrics.rejected.labels(task=task, reason=exc.code).inc()
        raise
    return _Run(runtime, image, completed, started, started + timeout_s)


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
