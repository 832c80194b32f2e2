"""`python -m service`: serve with uvicorn, one process, host and port from DENSEPRED_* settings.

Shutdown, as orchestrators expect it: on SIGTERM `/readyz` turns 503 at once, the server keeps
serving for DRAIN_DELAY_S (so load balancers stop routing here), then stops accepting connections,
lets the requests in flight and in the queues finish (bounded by the request timeout), and exits 0.
SIGHUP reloads the models whose store entry has a new version (service/reload.py), as POST /models/reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import sys
import threading
from collections.abc import Callable, Iterator

import uvicorn
from fastapi import FastAPI

from service.app import begin_drain, create_app, request_reload
from service.connections import guarded_protocol
from service.settings import Settings

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    """uvicorn's server with the shutdown above. A second signal skips the delay; a second Ctrl-C forces exit."""

    def __init__(
        self,
        config: uvicorn.Config,
        on_signal: Callable[[], None],
        drain_delay_s: float,
        on_hangup: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(config)
        self._on_signal = on_signal
        self._on_hangup = on_hangup
        self._drain_delay_s = drain_delay_s
        self._signalled = False

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn's own handlers re-raise the signal once shut down, so the process would die of SIGTERM
        # (status 143) after a clean drain; handling the signals here lets serve() return and exit 0.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._terminate)
        loop.add_signal_handler(signal.SIGINT, self._interrupt)
        loop.add_signal_handler(signal.SIGHUP, self._on_hangup)  # reload the models (service/reload.py)
        try:
            yield
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)

    def _terminate(self) -> None:
        if self._signalled:
            self.should_exit = True
            return
        self._signalled = True
        self._on_signal()
        log.info("SIGTERM: draining; closing the listener in %.3g s", self._drain_delay_s)
        asyncio.get_running_loop().call_later(self._drain_delay_s, self._stop)

    def _interrupt(self) -> None:
        if self.should_exit:
            self.force_exit = True
            return
        self._on_signal()
        self._stop()

    def _stop(self) -> None:
        self.should_exit = True


def serve(app: FastAPI, settings: Settings) -> None:
    """Run `app` (built by create_app) until a signal stops it."""
    refused = app.state.metrics.connections_refused
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        workers=1,  # the batching queues live in this process; scale out with replicas
        log_level="info",
        # uvicorn's httptools protocol plus a header deadline (408) and a header size cap (431), which
        # uvicorn lacks: nginx's client_header_timeout and large_client_header_buffers (connections.py).
        http=guarded_protocol(
            settings.header_timeout_s, settings.max_header_bytes, lambda reason: refused.labels(reason=reason).inc()
        ),
        # Past this many open connections (or requests), 503 at once: each costs a file descriptor and a
        # task; uploads' memory is bounded apart (MAX_UPLOAD_BUFFER_BYTES).
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=settings.keep_alive_s,
        # Requests in flight cannot wait longer than the request timeout; give them that, plus a margin.
        timeout_graceful_shutdown=math.ceil(settings.request_timeout_s) + 5,
    )
    server = DrainingServer(config, lambda: begin_drain(app), settings.drain_delay_s, lambda: request_reload(app))
    server.run()
    if not server.started:
        sys.exit(3)  # startup failed (uvicorn's own code for it): the log says why


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
