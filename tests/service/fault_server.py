"""Test-only entry point: the production server (`service.__main__.serve`) with fault hooks on its models.

    PYTHONPATH=. python tests/service/fault_server.py [--batch-delay S] [--poison-marker R,G,B] [--bug-marker R,G,B]

Settings come from DENSEPRED_* like `python -m service`. The hooks live here, under tests/, and reach
the app through create_app's `loader` argument: the service itself has no way to switch them on.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from typing import Any

import torch

import models
from service import Settings, create_app
from service.__main__ import serve


class FaultyPredictor:
    """A real predictor that sleeps before each batch, raises on images marked in their top-left pixel
    (ImageRefusedError for the poison marker, the image's fault; a plain ValueError for the bug marker), and
    fails its warm-up when its manifest's `trained` says `"test_fault": "warmup"`."""

    def __init__(
        self, inner: models.Predictor, delay_s: float, marker: list[int] | None, bug: list[int] | None = None
    ) -> None:
        self.inner = inner
        self.manifest = inner.manifest
        self.device = inner.device
        self.delay_s = delay_s
        self.marker = marker
        self.bug = bug

    def warmup(self) -> None:
        # A store entry can carry its own fault: tests publish a version whose warm-up raises.
        if self.manifest.trained.get("test_fault") == "warmup":
            raise RuntimeError("this version's warm-up fails (test fault injection)")
        self.inner.warmup()

    def predict(
        self, images: Sequence[torch.Tensor], queries: Sequence[Any] | None = None, frames: Sequence[Any] | None = None
    ) -> list[Any]:
        time.sleep(self.delay_s)
        corners = [image[:, 0, 0].tolist() for image in images]
        if self.marker is not None and self.marker in corners:
            raise models.ImageRefusedError("this image carries the fault marker (test fault injection)")
        if self.bug is not None and self.bug in corners:
            raise ValueError("this image carries the bug marker (test fault injection)")
        return self.inner.predict(images, queries, frames)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-delay", type=float, default=0.0, help="seconds each batch sleeps first")
    parser.add_argument("--poison-marker", default=None, help="R,G,B of a top-left pixel the model refuses")
    parser.add_argument("--bug-marker", default=None, help="R,G,B of a top-left pixel that makes the model fail")
    args = parser.parse_args()
    marker = [int(v) for v in args.poison_marker.split(",")] if args.poison_marker else None
    bug = [int(v) for v in args.bug_marker.split(",")] if args.bug_marker else None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()

    def load(task: str, device: torch.device) -> FaultyPredictor:
        return FaultyPredictor(models.load_predictor(settings.model_dir, task, device), args.batch_delay, marker, bug)

    serve(create_app(settings, load), settings)


if __name__ == "__main__":
    main()
