"""The app factory: wires settings, metrics, routes and the lifespan that owns models and queues.

`uvicorn service.app:create_app --factory` works too; `python -m service` is the usual entry point.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypedDict

from fastapi import FastAPI

from service import probes
from service.errors import install_error_handlers
from service.metrics import Metrics, RequestMetricsMiddleware
from service.reload import Reloader
from service.routes import ROUTERS, STRICT_QUERY
from service.runtime import Loader, Runtime
from service.security import UNAUTHORIZED, api_key_dependency
from service.settings import Settings
from service.uploads import UploadBudget

log = logging.getLogger(__name__)

OPS_ENDPOINTS = ("/healthz", "/readyz", "/models", "/models/reload", "/metrics")


class State(TypedDict):
    """Lifespan state; each request sees it as `request.state` (see routes.get_runtime)."""

    runtime: Runtime
    uploads: UploadBudget  # bytes of uploads in memory, all requests together (uploads.py)
    reloader: Reloader


async def start_up(runtime: Runtime, reloader: Reloader) -> None:
    """Warm every model (readiness), then measure the runtimes left pending (RUNTIME_SELECTION=background),
    then compile if asked."""
    await runtime.warm_up()
    await reloader.measure_runtimes()
    runtime.start_compiling()


def create_app(settings: Settings | None = None, loader: Loader | None = None) -> FastAPI:
    """Build the service; `loader(task, device)` replaces reading the model store (tests wrap predictors)."""
    settings = settings or Settings()
    metrics = Metrics(settings.tasks)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[State]:
        runtime = await Runtime.open(settings, metrics, loader)
        uploads = UploadBudget(settings.max_upload_buffer_bytes)
        metrics.upload_buffer.set_function(lambda: uploads.held)
        reloader = Reloader(runtime)
        # For begin_drain and request_reload, which the server calls from outside any request.
        app.state.runtime, app.state.reloader = runtime, reloader
        # Serve /healthz and /readyz (503) while warming; inference routes answer 503 until then.
        warm = asyncio.create_task(start_up(runtime, reloader), name="warm-up")
        if getattr(app.state, "reload_requested", False):  # a SIGHUP came while the models were loading
            reloader.request("SIGHUP")
        reloader.start_polling(settings.reload_interval_s)
        try:
            yield {"runtime": runtime, "uploads": uploads, "reloader": reloader}
        finally:
            await reloader.close()
            warm.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await warm
            await runtime.close()
            app.state.runtime = app.state.reloader = None
            log.info("stopped")

    app = FastAPI(
        title="densepred",
        summary="Semantic segmentation, object detection and instance masks over HTTP.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.metrics = metrics  # for the server's connection guards (service/connections.py)
    # Only with a key do the routes declare security: the OpenAPI document then says what is required.
    guard = [api_key_dependency(settings.api_key)] if settings.api_key else []
    errors = UNAUTHORIZED if settings.api_key else {}
    for router in [ROUTERS[task] for task in settings.tasks] + [probes.catalog_router]:
        app.include_router(router, dependencies=[*guard, STRICT_QUERY], responses=errors)
    app.include_router(probes.router)
    install_error_handlers(app)
    _document_optional_parameters_plainly(app)
    endpoints = [f"/{task}" for task in settings.tasks] + list(OPS_ENDPOINTS)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics, endpoints=endpoints)
    return app


def begin_drain(app: FastAPI) -> None:
    """On SIGTERM: /readyz answers 503 from now on; requests keep being served until the server drains."""
    runtime = getattr(app.state, "runtime", None)
    if runtime is not None:
        runtime.draining = True
        log.info("draining: /readyz is 503 from now on")


def request_reload(app: FastAPI) -> None:
    """On SIGHUP: reload as POST /models/reload does; logged, since nobody receives an answer."""
    reloader = getattr(app.state, "reloader", None)
    if reloader is None:
        app.state.reload_requested = True  # still loading: reload once started, with what changed since
        log.info("SIGHUP: reloading once start-up is done")
        return
    reloader.request("SIGHUP")


def _document_optional_parameters_plainly(app: FastAPI) -> None:
    """Document `x: float | None = None` query and header parameters as plain `number`.

    A query string or header cannot carry JSON null: absent is how a client says None. Left as
    `anyOf: [number, null]`, generated clients and fuzzers send the text "null", which is a 422.
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = generate()
        for operations in document.get("paths", {}).values():
            for operation in operations.values():
                for parameter in operation.get("parameters", []):
                    schema = parameter.get("schema", {})
                    variants = [v for v in schema.get("anyOf", []) if v != {"type": "null"}]
                    if len(variants) == 1:
                        del schema["anyOf"]
                        schema.update(variants[0])
        return document

    app.openapi = openapi  # type: ignore[method-assign]
