"""What the lifespan owns: one predictor and one batching queue per served task, plus readiness.

Every torch computation on the CPU (loading, warm-up, batches and turning results into answers) runs
on the inference thread(s), never on request threads: PyTorch's OpenMP gives each thread that computes
its own team of worker threads, and once teams outnumber the cores, libgomp stops spinning between
operations and the forward pass slows by about a third (measured, bench/results/compare_cpu.json). On a
CPU every model shares the inference threads (models would only share the cores anyway); on a GPU each
model has its own, so one model's host work overlaps another's device work.

`INFERENCE_WORKERS` sets how many batches of a model may run at once, each on a thread of its own. On a
CPU the workers split the cores: one worker computes with all of them (one OpenMP team: lowest latency
when idle); N workers compute with cores/N threads each, in parallel, which keeps more of the cores
busy under load (the small models' operations parallelise poorly over two threads; see README).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import anyio
import torch

from models import Acceleration, Manifest, Query, Result, SemanticMap, load_predictor
from models.devices import resolve_device
from models.runtimes import Place, RuntimeChoice, here
from service import responses
from service.batching import Batcher
from service.cores import available_cores, torch_cores
from service.gaps import BetweenBatches
from service.imaging import DecodedImage, Limits
from service.metrics import Metrics
from service.render import Renderer
from service.schemas import Detection, InstanceDetection, Segment
from service.settings import Settings
from service.threads import inference_threads, reload_thread
from service.warming import compile_in_background, warm

log = logging.getLogger(__name__)


class ServedModel(Protocol):
    """The part of `models.Predictor` the service uses (tests may wrap a real predictor)."""

    manifest: Manifest
    device: torch.device

    def predict(
        self,
        images: Sequence[torch.Tensor],
        queries: Sequence[Query] | None = None,
        frames: Sequence[tuple[int, int]] | None = None,
    ) -> list[Result]: ...

    def warmup(self) -> None: ...


Loader = Callable[[str, torch.device], ServedModel]


@dataclass(frozen=True)
class Job:
    image: DecodedImage  # the tensor the model sees, and the upload's size
    query: Query


Answer = list[Detection] | list[InstanceDetection] | list[Segment]


@dataclass(frozen=True)
class Output:
    """One image's answer, and the manifest of the model that computed it: a reload may switch models
    between two batches, and each response names the version that answered it."""

    items: Answer
    manifest: Manifest


@dataclass
class TaskModel:
    predictor: ServedModel
    batcher: Batcher[Job, Output]
    limits: Limits  # for decoding this model's uploads
    state: str = "warming"  # then "ready", or "failed" if the warm-up pass raised
    choice: RuntimeChoice | None = None  # the runtime it runs with, chosen at warm-up (service/warming.py)
    names: dict[int, str] = field(init=False)
    loaded_at: float = field(default_factory=time.time)  # epoch seconds
    previous: str | None = None  # the version this one replaced (a reload), if any

    def __post_init__(self) -> None:
        self.names = self.predictor.manifest.category_names()

    def replace(self, predictor: ServedModel) -> ServedModel:
        """Serve `predictor` from the next batch on (see Batcher.swap); returns the one it replaces."""
        old, self.predictor = self.predictor, predictor
        self.names = predictor.manifest.category_names()
        self.previous, self.loaded_at, self.state = old.manifest.version, time.time(), "ready"
        return old

    @property
    def manifest(self) -> Manifest:
        return self.predictor.manifest

    def class_ids(self, names: Sequence[str]) -> frozenset[int]:
        """Category names to ids; raises KeyError naming the first unknown one."""
        by_name = {name: i for i, name in self.names.items()}
        return frozenset(by_name[name] for name in names)


def store_loader(settings: Settings) -> Loader:
    precision = settings.precision
    # PRECISION=auto loads fp32 and lets the warm-up measure (service/warming.py).
    acceleration = Acceleration() if precision == "auto" else Acceleration(precision, settings.channels_last)

    def load(task: str, device: torch.device) -> ServedModel:
        return load_predictor(settings.model_dir, task, device, acceleration)

    return load


def batch_fn(predictor: ServedModel) -> Callable[[list[Job]], list[Output]]:
    """Predict a batch in the uploads' pixels and turn each result into its answer's items (RLE), on this
    thread."""
    manifest = predictor.manifest
    task, names = manifest.task, manifest.category_names()

    def run(jobs: list[Job]) -> list[Output]:
        images = [job.image.tensor for job in jobs]
        frames = [(job.image.height, job.image.width) for job in jobs]
        results = predictor.predict(images, [job.query for job in jobs], frames)
        return [Output(_answer(task, result, names), manifest) for result in results]

    return run


def _answer(task: str, result: Result, names: dict[int, str]) -> Answer:
    if isinstance(result, SemanticMap):
        return responses.segments(result, names)
    if task == "instances":
        return responses.instances(result, names)
    return responses.detections(result, names)


def image_limits(settings: Settings) -> Limits:
    """Decoding limits. Uploads are shrunk to MAX_IMAGE_SIDE only (memory); each predictor resizes for its
    network itself and answers in the upload's pixels, exactly as in the trainer's evaluation."""
    return Limits(settings.max_image_pixels, settings.max_image_side, settings.max_aspect_ratio)


def release_device_memory() -> None:
    """After a CUDA out-of-memory error: collect the failed batch's tensors and return cached blocks."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def job_pixels(predictor: ServedModel) -> Callable[[Job], float]:
    """A job's cost for the batch's pixel budget: pixels at the model's input size (R-CNNs upscale)."""
    input_shape = getattr(predictor, "input_shape", None)

    def pixels(job: Job) -> float:
        height, width = job.image.tensor.shape[-2:]
        if callable(input_shape):
            height, width = input_shape(height, width)
        return float(height * width)

    return pixels


def configure(predictor: ServedModel, settings: Settings) -> None:
    """The service's limits on a freshly loaded predictor, before its warm-up (at start-up and on reload)."""
    # Boxes beyond the cap would be dropped anyway; cutting them inside the model also bounds the
    # mask work (optional, like the padding figures: a test double may not have them).
    limit = getattr(predictor, "limit_detections", None)
    if callable(limit):
        limit(settings.max_detections)
    if getattr(predictor, "padding", None) is not None:
        setattr(predictor, "max_padding_waste", settings.max_padding_waste)  # noqa: B010 (optional attribute)


def watch(task: str, predictor: ServedModel, metrics: Metrics) -> None:
    """Point the per-model metrics at the predictor being served (padding counters restart with it)."""
    padding = getattr(predictor, "padding", None)
    if padding is not None:
        metrics.watch_padding(task, padding)
    metrics.serving(task, predictor.manifest.version, predictor.manifest.arch)


def _make_batcher(
    task: str, predictor: ServedModel, settings: Settings, metrics: Metrics, executor: Executor
) -> Batcher[Job, Output]:
    watch(task, predictor, metrics)
    return Batcher(
        batch_fn(predictor),
        name=task,
        max_batch_size=settings.max_batch_size,
        max_wait_s=settings.max_wait_ms / 1000,
        max_queue=settings.max_queue,
        observer=metrics.observer(task),
        split_on=(torch.cuda.OutOfMemoryError,),
        on_split=release_device_memory,
        cost=job_pixels(predictor),
        max_batch_cost=settings.max_batch_pixels,
        executor=executor,
        max_concurrent_batches=settings.inference_workers,
    )


class Runtime:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        device: torch.device,
        models: dict[str, TaskModel],
        executors: dict[str, ThreadPoolExecutor],
        cores: int,
        load: Loader,
    ):
        self.settings = settings
        self.load = load
        self.metrics = metrics
        self.device = device
        self.models = models
        self.executors = executors  # per task; on a CPU all the same pool
        # Decoding is CPU-bound: more threads than cores only add memory (each holds a decoded image).
        self.decode_limiter = anyio.CapacityLimiter(max(2, cores))
        self.draining = False  # set on SIGTERM: /readyz answers 503 while requests in flight finish
        self.warmed = False  # the start-up warm-up has run (whatever its outcome): reloads may start
        self.renderer = Renderer(settings.render_max_side, settings.max_renders)  # ?render=png

    @classmethod
    async def open(cls, settings: Settings, metrics: Metrics, loader: Loader | None = None) -> Runtime:
        """Load every configured model (a bad store fails startup) and start its queue."""
        device = resolve_device(settings.device)
        load = loader or store_loader(settings)
        available = available_cores()
        compute = torch_cores(settings.cpu_threads, available)
        if compute and not settings.cpu_threads and device.type == "cpu":
            log.info("computing on %d cores: the CPU quota allows no more (CPU_THREADS overrides)", compute)
        executors = inference_threads(settings.tasks, device, settings.inference_workers, compute)
        runtime = cls(settings, metrics, device, {}, executors, settings.cpu_threads or available, load)
        for task in settings.tasks:
            try:
                predictor = await runtime.load_model(task)
            except BaseException:
                for executor in set(executors.values()):  # startup fails: leave no thread behind
                    executor.shutdown(wait=False)
                raise
            batcher = _make_batcher(task, predictor, settings, metrics, executors[task])
            runtime.models[task] = TaskModel(predictor, batcher, image_limits(settings))
            m = predictor.manifest
            log.info("loaded %s: %s version %s on %s", task, m.arch, m.version or "-", device)
        for model in runtime.models.values():
            model.batcher.start()
        return runtime

    async def load_model(self, task: str, executor: Executor | None = None) -> ServedModel:
        """Load the store's entry for `task`, with the service's limits set: start-up (on the task's inference
        thread) and reloads (on `executor`, the reload thread) load through here, so a model is loaded one
        way whatever loads it."""
        loop = asyncio.get_running_loop()
        predictor = await loop.run_in_executor(executor or self.executors[task], self.load, task, self.device)
        configure(predictor, self.settings)
        return predictor

    async def warm_model(
        self, task: str, predictor: ServedModel, executor: Executor | None = None, measure: bool = True
    ) -> RuntimeChoice:
        """Choose the runtime (unless `measure` is false: see service/warming.py) and run the warm-up pass: at
        start-up on the thread that will run the model's batches; on a reload on the reload thread, with the
        measurement's forward passes on the inference thread, between batches (`on_inference`). Start-up and
        reloads warm through here."""
        loop = asyncio.get_running_loop()
        place = here if executor is None else self.on_inference(task)
        work = functools.partial(warm, predictor, self.settings, measure, place)
        return await loop.run_in_executor(executor or self.executors[task], work)

    def on_inference(self, task: str) -> Place:
        """Runs a piece of work on `task`'s inference thread, in a gap between the batches of every model that
        shares it, and waits for it (service/gaps.py): for the forward passes a runtime measurement times on
        a CPU (the reload thread has an OpenMP team of one; service/threads.py). On a GPU, where no team is
        shared, they run where they are asked for."""
        if self.device.type != "cpu":
            return here
        executor = self.executors[task]
        sharing = [model.batcher for name, model in self.models.items() if self.executors[name] is executor]
        return BetweenBatches(executor, lambda: not all(batcher.idle for batcher in sharing))

    @contextlib.contextmanager
    def reload_worker(self) -> Iterator[ThreadPoolExecutor]:
        """A thread for one reload's (or runtime measurement's) loading and preparing, ended afterwards: an
        idle thread keeps its OpenMP team, and with more teams than cores libgomp stops spinning for all of
        them, so the batches would run a third slower from the first reload on (measured: 22 -> 30 ms per
        Faster R-CNN image, back to 22 once that thread ended). A runtime measurement's forward passes run
        on the inference thread (`on_inference`)."""
        executor = reload_thread(self.device)
        try:
            yield executor
        finally:
            executor.shutdown(wait=False)  # its work is done: the thread ends, and its team with it

    @property
    def ready(self) -> bool:
        return not self.draining and all(model.state == "ready" for model in self.models.values())

    def unhealthy(self) -> str | None:
        """Why the inference machinery is broken (a warm-up failed, a worker died, a batch hangs), or None."""
        for task, model in self.models.items():
            if model.state == "failed":  # it would never become ready: a restart (or a fixed store) is needed
                return f"the warm-up of {task} failed; see the server log"
            if not model.batcher.running:
                return f"the {task} batching worker has stopped"
            if model.batcher.busy_s > self.settings.inference_timeout_s:
                return f"a {task} batch has run for {model.batcher.busy_s:.0f} s"
        return None

    async def warm_up(self) -> None:
        """Run each model's warm-up pass off the event loop (service/warming.py), after measuring its runtime
        unless RUNTIME_SELECTION=background (then the Reloader measures once serving); readiness flips once
        all have passed."""
        measure = self.settings.runtime_selection == "warm-up"
        for task, model in self.models.items():
            try:
                model.choice = await self.warm_model(task, model.predictor, measure=measure)
            except Exception:
                model.state = "failed"
                log.exception("warm-up of %s failed; /readyz and /healthz answer 503", task)
                continue
            model.state = "ready"
            self.metrics.runtime_chosen(model.choice)
            log.info("%s is warm", task)
        self.warmed = True
        if self.ready:
            log.info("ready. Try:\n%s", "\n".join(curl_examples(self.settings)))

    def start_compiling(self) -> None:
        """With COMPILE, compile each model in the background, once its runtime is chosen."""
        for task, model in self.models.items():
            if self.settings.compile and model.choice is not None:
                compile_in_background(model.predictor, model.choice, self.executors[task], self.metrics.runtime_chosen)

    async def close(self) -> None:
        for model in self.models.values():
            await model.batcher.stop()
        for executor in set(self.executors.values()):
            # Do not wait: a batch (or a reload's load) still running finishes on its own, its result dropped.
            executor.shutdown(wait=False, cancel_futures=True)


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
