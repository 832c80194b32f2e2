"""What the deployment files must agree on with the service itself."""

from __future__ import annotations

import math

from service.settings import Settings


def drain_seconds(environment: dict[str, str]) -> float:
    """How long `python -m service` may take to stop after SIGTERM, given these DENSEPRED_* variables.

    The drain delay (still serving, /readyz 503), then uvicorn's graceful shutdown: the request
    timeout rounded up, plus 5 s (service/__main__.py).
    """

    def value(name: str) -> float:
        # The service's own defaults for what the file leaves unset (not this machine's environment).
        return float(environment.get(f"DENSEPRED_{name.upper()}", Settings.model_fields[name].default))

    return value("drain_delay_s") + math.ceil(value("request_timeout_s")) + 5
