"""Operational endpoints: liveness, readiness, what is served, and Prometheus metrics."""

from __future__ import annotations

from typing import Any, cast

import torch
from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.errors import ApiError
from service.reload import Reloader, utc
from service.routes import RuntimeDep
from service.schemas import ErrorBody, Health, ModelList, Readiness, ReloadReport, ServedModelInfo

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, responses={503: {"model": ErrorBody}}, summary="Liveness")
async def healthz(runtime: RuntimeDep) -> Health:
    """The process answers, every batching worker runs and none hangs, and the device is usable. No model call."""
    problem = runtime.unhealthy()
    if problem is not None:  # an orchestrator restarts us: better than requests waiting on a dead queue
        raise ApiError(503, "unhealthy", problem)
    if runtime.device.type == "cuda" and not torch.cuda.is_available():
        raise ApiError(503, "unhealthy", f"device {runtime.device} is gone")
    return Health(device=str(runtime.device))


@router.get("/readyz", response_model=Readiness, responses={503: {"model": ErrorBody}}, summary="Readiness")
async def readyz(runtime: RuntimeDep) -> Readiness:
    """200 once every configured model is loaded and has run its warm-up pass; 503 before, and once stopping."""
    if runtime.draining:
        raise ApiError(503, "shutting_down", "shutting down: finishing the requests in flight")
    if not runtime.ready:
        waiting = ", ".join(f"{task} {m.state}" for task, m in runtime.models.items() if m.state != "ready")
        raise ApiError(503, "not_ready", f"not ready: {waiting}", {"Retry-After": "5"})
    return Readiness(models={task: m.manifest.version for task, m in runtime.models.items()})


# Its own router, so that the app can put it behind the API key with the inference routes.
catalog_router = APIRouter(tags=["operations"])


@catalog_router.get("/models", response_model=ModelList, summary="Manifests of the served models")
async def list_models(request: Request, runtime: RuntimeDep) -> ModelList:
    """Each served model's manifest, when it was loaded, the version it replaced, and the last reload."""
    last = cast(Reloader, request.state.reloader).last
    served = [
        {**m.manifest.to_json(), "loaded_at": utc(m.loaded_at), "previous_version": m.previous,
         "last_reload": last.get(task), "runtime": m.choice.to_json() if m.choice else None}
        for task, m in runtime.models.items()
    ]  # fmt: skip
    return ModelList(models=[ServedModelInfo.model_validate(info) for info in served])


_RELOAD_ERRORS: dict[int | str, dict[str, Any]] = {
    409: {"model": ReloadReport, "description": "A task's new version failed (`error.code` reload_failed; the "
          "report says which and why; the versions before serve on), or another reload is running "
          "(`reload_in_progress`, an error body only)."},
    503: {"model": ErrorBody, "description": "Still starting up, or shutting down."},
}  # fmt: skip


@catalog_router.post(
    "/models/reload", response_model=ReloadReport, responses=_RELOAD_ERRORS, summary="Serve the store's new versions"
)
async def reload_models(request: Request) -> Response:
    """Load, verify and warm every task's new version in the store beside the running model, then switch
    at a batch boundary; a version that fails leaves the one before serving. 200 once every task serves its
    store's version, 409 otherwise. SIGHUP does the same."""
    report = await cast(Reloader, request.state.reloader).reload("POST /models/reload")
    body = report.model_dump_json(exclude={"error"} if report.error is None else None)
    return Response(body, status_code=200 if report.ok else 409, media_type="application/json")


_METRICS_EXAMPLE = 'densepred_queue_depth{task="detect"} 0.0\ndensepred_batch_size_count{task="detect"} 42.0\n'


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics (text format)",
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"example": _METRICS_EXAMPLE}}}},
)
async def metrics(runtime: RuntimeDep) -> Response:
    return Response(runtime.metrics.render(), media_type=CONTENT_TYPE_LATEST)
