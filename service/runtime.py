"""What the lifespan owns: one predictor and one batching queue per served task, plus readiness."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from models import Detections, Manifest, Query, SemanticMap, load_predictor
from service.batching import Batcher
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


def resolve_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"DENSEPRED_DEVICE={setting} but torch sees no CUDA device")
    return device


def store_loader(settings: Settings) -> Loader:
    def load(task: str, device: torch.device) -> ServedModel:
        return load_predictor(settings.model_dir, task, device)

    return load


def _batch_fn(predictor: ServedModel) -> Callable[[list[Job]], list[Result]]:
    def run(jobs: list[Job]) -> list[Result]:
        return predictor.predict([job.image for job in jobs], [job.query for job in jobs])

    return run


class Runtime:
    def __init__(self, settings: Settings, metrics: Metrics, device: torch.device, models: dict[str, TaskModel]):
        self.settings = settings
        self.metrics = metrics
        self.device = device
        self.models = models

    @classmethod
    async def open(cls, settings: Settings, metrics: Metrics, loader: Loader | None = None) -> Runtime:
        """Load every configured model (a bad store fails startup) and start its queue."""
        device = resolve_device(settings.device)
        load = loader or store_loader(settings)
        models: dict[str, TaskModel] = {}
        for task in settings.tasks:
            predictor = await asyncio.to_thread(load, task, device)
            batcher: Batcher[Job, Result] = Batcher(
                _batch_fn(predictor),
                name=task,
                max_batch_size=settings.max_batch_size,
                max_wait_s=settings.max_wait_ms / 1000,
                max_queue=settings.max_queue,
                observer=metrics.observer(task),
            )
            models[task] = TaskModel(predictor, batcher)
            m = predictor.manifest
            log.info("loaded %s: %s version %s on %s", task, m.arch, m.version or "-", device)
        for model in models.values():
            model.batcher.start()
        return cls(settings, metrics, device, models)

    @property
    def ready(self) -> bool:
        return all(model.state == "ready" for model in self.models.values())

    def alive(self) -> bool:
        """The inference machinery is up: every queue's worker task is still running."""
        return all(model.batcher.running for model in self.models.values())

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
