"""The app factory: wires settings, metrics, routes and the lifespan that owns models and queues.

`uvicorn service.app:create_app --factory` works too; `python -m service` is the usual entry point.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict

from fastapi import FastAPI

from service import probes
from service.errors import install_error_handlers
from service.metrics import Metrics, RequestMetricsMiddleware
from service.routes import ROUTERS
from service.runtime import Loader, Runtime
from service.settings import Settings

log = logging.getLogger(__name__)

OPS_ENDPOINTS = ("/healthz", "/readyz", "/models", "/metrics")


class State(TypedDict):
    """Lifespan state; each request sees it as `request.state` (see routes.get_runtime)."""

    runtime: Runtime


def create_app(settings: Settings | None = None, loader: Loader | None = None) -> FastAPI:
    """Build the service; `loader(task, device)` replaces reading the model store (tests wrap predictors)."""
    settings = settings or Settings()
    metrics = Metrics(settings.tasks)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[State]:
        runtime = await Runtime.open(settings, metrics, loader)
        # Serve /healthz and /readyz (503) while warming; inference routes answer 503 until then.
        warm = asyncio.create_task(runtime.warm_up(), name="warm-up")
        try:
            yield {"runtime": runtime}
        finally:
            warm.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await warm
            await runtime.close()
            log.info("stopped")

    app = FastAPI(
        title="densepred",
        summary="Semantic segmentation, object detection and instance masks over HTTP.",
        version="0.1.0",
        lifespan=lifespan,
    )
    for task in settings.tasks:
        app.include_router(ROUTERS[task])
    app.include_router(probes.router)
    install_error_handlers(app)
    endpoints = [f"/{task}" for task in settings.tasks] + list(OPS_ENDPOINTS)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics, endpoints=endpoints)
    return app
