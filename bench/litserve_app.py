"""LitServe hosting densepred's own predictor, doing per request the same work as the service.

    python bench/litserve_app.py --model-dir artifacts/models --task detect --port 8123

Started by bench/compare.py as system (d). The upload is a multipart field `image`, as for the service;
it is decoded by the service's own decoder with the service's limits (so large images are shrunk the same
way), a batch goes through `Predictor.predict`, and each answer is the service's JSON (same schemas,
same RLE encoder). What differs is only the serving stack: LitServe's API process, its queue to a separate
inference process, and its batching loop (max_batch_size / batch_timeout, LitServe's own names).
Readiness: LitServe's /health answers 200 once the worker's setup (load and warm up) finished.
"""

# No `from __future__ import annotations` here: LitServe reads decode_request's `request` annotation at
# runtime and treats a multipart upload as a form only when it is the Request class itself, not a string.
import argparse
import sys
import time
from pathlib import Path
from typing import Any

import litserve as ls
from fastapi import HTTPException, Request

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import models  # noqa: E402
from service import responses  # noqa: E402
from service.errors import ApiError  # noqa: E402
from service.imaging import DecodedImage, decode_image  # noqa: E402
from service.runtime import image_limits  # noqa: E402
from service.schemas import DetectResponse, ImageInfo, InstancesResponse, SegmentResponse, Timing  # noqa: E402
from service.settings import Settings  # noqa: E402

SCHEMAS = {"segment": SegmentResponse, "detect": DetectResponse, "instances": InstancesResponse}


class DensepredAPI(ls.LitAPI):
    def __init__(
        self, model_dir: Path, task: str, max_batch_size: int, batch_timeout_s: float, batch_log: Path | None
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout_s, api_path=f"/{task}")
        self.model_dir, self.task, self.batch_log = model_dir, task, batch_log

    def setup(self, device: str) -> None:
        self.predictor = models.load_predictor(self.model_dir, self.task, "cpu" if device == "cpu" else device)
        if isinstance(self.predictor, models.predictors.DetectionPredictor):
            self.predictor.limit_detections(models.registry.MAX_DETECTIONS)  # as the service does
        self.names = {c.id: c.name for c in self.predictor.manifest.categories}
        # The service's defaults, without reading DENSEPRED_* (model_construct skips the environment).
        self.limits = image_limits(Settings.model_construct())
        self.predictor.warmup()
        # One line per batch (its size), appended unbuffered, so that bench/compare.py can report mean batch
        # sizes for LitServe as it does for the service; a few bytes per batch cost nothing measurable.
        self.batches = open(self.batch_log, "a", buffering=1) if self.batch_log else None  # noqa: SIM115

    def decode_request(self, request: Request) -> tuple[DecodedImage, float]:
        started = time.perf_counter()
        try:
            data = request["image"].file.read()  # type: ignore[index]
            return decode_image(data, self.limits), started
        except ApiError as exc:
            raise HTTPException(exc.status, exc.message) from None
        except (KeyError, AttributeError):
            raise HTTPException(400, "send the image as multipart field 'image'") from None

    def batch(self, inputs: list[tuple[DecodedImage, float]]) -> list[tuple[DecodedImage, float]]:
        return inputs  # mixed sizes: the predictor takes a list, never a stacked tensor

    def predict(self, x: list[tuple[DecodedImage, float]]) -> list[tuple[DecodedImage, float, Any, float]]:
        started = time.perf_counter()
        frames = [(image.height, image.width) for image, _ in x]
        results = self.predictor.predict([image.tensor for image, _ in x], None, frames)
        seconds = time.perf_counter() - started
        if self.batches is not None:
            self.batches.write(f"{len(x)}\n")
        return [(image, t0, result, seconds) for (image, t0), result in zip(x, results, strict=True)]

    def unbatch(self, output: list[Any]) -> list[Any]:
        return output

    def encode_response(self, output: tuple[DecodedImage, float, Any, float]) -> dict[str, Any]:
        image, started, result, inference_s = output
        if self.task == "segment":
            body: dict[str, Any] = {"segments": responses.segments(result, self.names)}
        elif self.task == "detect":
            body = {"detections": responses.detections(result, self.names)}
        else:
            body = {"detections": responses.instances(result, self.names)}
        timing = Timing(
            queue=0.0, inference=round(inference_s * 1000, 3), total=round((time.perf_counter() - started) * 1000, 3)
        )
        answer = SCHEMAS[self.task](
            model=responses.model_info(self.predictor.manifest),
            image=ImageInfo(width=image.width, height=image.height),
            timing_ms=timing,
            **body,
        )
        return answer.model_dump(mode="json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--task", choices=models.TASKS, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--batch-timeout-ms", type=float, default=10.0)
    parser.add_argument("--batch-log", type=Path, help="append each batch's size to this file")
    parser.add_argument("--workers", type=int, default=1, help="inference processes (workers_per_device)")
    parser.add_argument("--timeout-s", type=float, default=10.0, help="as the service's REQUEST_TIMEOUT_S")
    args = parser.parse_args()
    api = DensepredAPI(args.model_dir, args.task, args.max_batch_size, args.batch_timeout_ms / 1000, args.batch_log)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=args.workers, timeout=args.timeout_s)
    server.run(host="127.0.0.1", port=args.port, num_api_servers=1, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
