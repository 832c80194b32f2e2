"""`python -m service`: serve with uvicorn, one process, host and port from DENSEPRED_* settings."""

from __future__ import annotations

import logging
import math

import uvicorn

from service.app import create_app
from service.settings import Settings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        workers=1,  # the batching queues live in this process; scale out with replicas
        log_level="info",
        # Let requests in flight finish (they cannot wait longer than the request timeout) before exiting.
        timeout_graceful_shutdown=math.ceil(settings.request_timeout_s) + 5,
    )


if __name__ == "__main__":
    main()
