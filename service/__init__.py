"""The densepred HTTP service: FastAPI app, batching queues, image decoding, RLE and metrics.

Imports `models`, never `trainer`.
"""

from service.app import create_app
from service.settings import Settings

__all__ = ["Settings", "create_app"]
