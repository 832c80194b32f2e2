"""What the lifespan owns: one predictor and one batching queue per served task, plus readiness."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import anyio
import torch

from models import Acceleration, Detections, Manifest, Query, SemanticMap, load_predictor
from models.devices import resolve_device
from service.batching import Batcher
from service.imaging import Limits
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger(__name__)

Result = Detections | SemanticMap


class ServedModel(Protocol):
    """The part of `models.Predictor` the service uses (tests may wrap a real predictor)."""

    manifest: Manifest
    device: torch.device

    def predict(self, images: Sequence[torch.Tensor], queries: Sequence[Query] | None = None) -> list[Result]: ...

    def warmup(self) -> None: ...


Loader = Callable[[str, torch.device], ServedModel]


@dataclass(frozen=True)
class Job:
    image: torch.Tensor  # uint8 [3, H, W]
    query: Query


@dataclass
class TaskModel:
    predictor: ServedModel
    batcher: Batcher[Job, Result]
    limits: Limits  # for decoding this model's uploads
    state: str = "warming"  # then "ready", or "failed" if the warm-up pass raised
    names: dict[int, str] = field(init=False)

    def __post_init__(self) -> None:
        self.names = self.predictor.manifest.category_names()

    @property
    def manifest(self) -> Manifest:
        return self.predictor.manifest

    def class_ids(self, names: Sequence[str]) -> frozenset[int]:
        """Category names to ids; raises KeyError naming the first unknown one."""
        by_name = {name: i for i, name in self.names.items()}
        return frozenset(by_name[name] for name in names)


def store_loader(settings: Settings) -> Loader:
    acceleration = Acceleration(settings.precision, settings.channels_last)

    def load(task: str, device: torch.device) -> ServedModel:
        return load_predictor(settings.model_dir, task, device, acceleration)

    return load


def _batch_fn(predictor: ServedModel) -> Callable[[list[Job]], list[Result]]:
    def run(jobs: list[Job]) -> list[Result]:
        return predictor.predict([job.image for job in jobs], [job.query for job in jobs])

    return run


def image_limits(settings: Settings, manifest: Manifest) -> Limits:
    """Decoding limits for one model. Images are shrunk to the smaller of MAX_IMAGE_SIDE and the model's
    own input size: it would shrink them itself, but only after Mask R-CNN pasted its masks at the size it
    was given (torchvision pastes at the input size), and FCN upsampled its logits to it."""
    model_side = int(manifest.input.get("max_size") or 0)
    side = min(settings.max_image_side, model_side) if model_side else settings.max_image_side
    return Limits(settings.max_image_pixels, side, settings.max_aspect_ratio)


def release_device_memory() -> None:
    """After a CUDA out-of-memory error: collect the failed batch's tensors and return cached blocks."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _job_pixels(predictor: ServedModel) -> Callable[[Job], float]:
    """A job's cost for the batch's pixel budget: pixels at the model's input size (R-CNNs upscale)."""
    input_shape = getattr(predictor, "input_shape", None)

    def pixels(job: Job) -> float:
        height, width = job.image.shape[-2:]
        if callable(input_shape):
            height, width = input_shape(height, width)
        return float(height * width)

    return pixels


def _make_batcher(task: str, predictor: ServedModel, settings: Settings, metrics: Metrics) -> Batcher[Job, Result]:
    # Boxes beyond the cap would be dropped anyway; cutting them inside the model also bounds the
    # mask work (optional, like the padding figures: a test double may not have them).
    limit = getattr(predictor, "limit_detections", None)
    if callable(limit):
        limit(settings.max_detections)
    padding = getattr(predictor, "padding", None)
    if padding is not None:
        setattr(predictor, "max_padding_waste", settings.max_padding_waste)  # noqa: B010 (optional attribute)
        metrics.watch_padding(task, padding)
    return Batcher(
        _batch_fn(predictor),
        name=task,
        max_batch_size=settings.max_batch_size,
        max_wait_s=settings.max_wait_ms / 1000,
        max_queue=settings.max_queue,
        observer=metrics.observer(task),
        split_on=(torch.cuda.OutOfMemoryError,),
        on_split=release_device_memory,
        cost=_job_pixels(predictor),
        max_batch_cost=settings.max_batch_pixels,
    )


class Runtime:
    def __init__(self, settings: Settings, metrics: Metrics, device: torch.device, models: dict[str, TaskModel]):
        self.settings = settings
        self.metrics = metrics
        self.device = device
        self.models = models
        # Decoding is CPU-bound: more threads than cores only add memory (each holds a decoded image).
        self.decode_limiter = anyio.CapacityLimiter(max(2, os.cpu_count() or 2))
        self.draining = False  # set on SIGTERM: /readyz answers 503 while requests in flight finish

    @classmethod
    async def open(cls, settings: Settings, metrics: Metrics, loader: Loader | None = None) -> Runtime:
        """Load every configured model (a bad store fails startup) and start its queue."""
        device = resolve_device(settings.device)
        load = loader or store_loader(settings)
        models: dict[str, TaskModel] = {}
        for task in settings.tasks:
            predictor = await asyncio.to_thread(load, task, device)
            batcher = _make_batcher(task, predictor, settings, metrics)
            models[task] = TaskModel(predictor, batcher, image_limits(settings, predictor.manifest))
            m = predictor.manifest
            log.info("loaded %s: %s version %s on %s", task, m.arch, m.version or "-", device)
        for model in models.values():
            model.batcher.start()
        return cls(settings, metrics, device, models)

    @property
    def ready(self) -> bool:
        return not self.draining and all(model.state == "ready" for model in self.models.values())

    def unhealthy(self) -> str | None:
        """Why the inference machinery is broken (a worker died, or a batch hangs), or None."""
        for task, model in self.models.items():
            if not model.batcher.running:
                return f"the {task} batching worker has stopped"
            if model.batcher.busy_s > self.settings.inference_timeout_s:
                return f"a {task} batch has run for {model.batcher.busy_s:.0f} s"
        return None

    async def warm_up(self) -> None:
        """One forward pass per model, off the event loop; readiness flips once all have passed."""
        for task, model in self.models.items():
            try:
                await asyncio.to_thread(model.predictor.warmup)
            except Exception:
                model.state = "failed"
                log.exception("warm-up of %s failed; /readyz stays 503", task)
                continue
            model.state = "ready"
            log.info("%s is warm", task)
        if self.ready:
            log.info("ready. Try:\n%s", "\n".join(curl_examples(self.settings)))

    async def close(self) -> None:
        for model in self.models.values():
            await model.batcher.stop()


def curl_examples(settings: Settings) -> list[str]:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    host = f"[{host}]" if ":" in host else host
    base = f"http://{host}:{settings.port}"
    examples = {
        "segment": f"curl -s -F image=@photo.jpg '{base}/segment'",
        "detect": f"curl -s -F image=@photo.jpg '{base}/detect?score_threshold=0.5'",
        "instances": f"curl -s -H 'Content-Type: image/png' --data-binary @photo.png '{base}/instances?classes=circle'",
    }
    lines = [f"  {examples[task]}" for task in settings.tasks]
    return [*lines, f"  curl -s '{base}/models'", f"  open {base}/docs"]
