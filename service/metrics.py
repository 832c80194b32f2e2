"""Prometheus metrics, declared once per app on the app's own registry (so test apps never collide)."""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from models.runtimes import RuntimeChoice
from models.shape_groups import PaddingStats

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
RELOAD_RESULTS = ("reloaded", "failed")


class Metrics:
    def __init__(self, tasks: Iterable[str]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.request_duration = Histogram(
            "densepred_request_duration_seconds",
            "Time to answer a request, by endpoint and HTTP status.",
            ["endpoint", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "densepred_queue_wait_seconds", "Time an image waited before its batch ran.", ["task"],
            buckets=WAIT_BUCKETS, registry=r,
        )  # fmt: skip
        self.inference_duration = Histogram(
            "densepred_inference_duration_seconds", "Model time per batch.", ["task"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "densepred_batch_size", "Images per batch.", ["task"], buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("densepred_queue_depth", "Images waiting for a batch.", ["task"], registry=r)
        self.rejected = Counter(
            "densepred_requests_rejected_total", "Requests answered with an error, by reason.", ["task", "reason"],
            registry=r,
        )  # fmt: skip
        self.upload_buffer = Gauge(
            "densepred_upload_buffer_bytes",
            "Bytes of uploads being read or decoded now, all requests together (MAX_UPLOAD_BUFFER_BYTES caps it).",
            registry=r,
        )
        self.connections_refused = Counter(
            "densepred_connections_refused_total",
            "Requests refused before reaching the app (header timeout or size, connection limit), by reason.",
            ["reason"],
            registry=r,
        )
        self.padding_waste = Gauge(
            "densepred_padding_waste_ratio",
            "Share of the pixels computed that were batch padding, since start (images are grouped by shape).",
            ["task"],
            registry=r,
        )
        self.forward_passes = Gauge(
            "densepred_forward_passes", "Forward passes run since start (a batch of mixed shapes may take several).",
            ["task"], registry=r,
        )  # fmt: skip
        self.runtime_info = Gauge(
            "densepred_runtime_info",
            "The runtime each model runs with (1), chosen at warm-up: PRECISION=auto measures, see /models.",
            ["task", "precision", "memory_format", "compiled", "backend"],
            registry=r,
        )
        self._runtime_labels: dict[str, tuple[str, ...]] = {}
        self.model_info = Gauge(
            "densepred_model_info", "1 for the model version each task serves.", ["task", "version", "arch"],
            registry=r,
        )  # fmt: skip
        self.model_reloads = Counter(
            "densepred_model_reloads_total",
            "Reloads that found a new version in the store, by outcome (reloaded, failed).",
            ["task", "result"],
            registry=r,
        )
        self._served: dict[str, tuple[str, str]] = {}  # task -> the (version, arch) of its info series
        for task in tasks:
            # Touch each per-task series so dashboards see zeros, not gaps, before the first request.
            for family in (self.queue_wait, self.inference_duration, self.batch_size, self.queue_depth):
                family.labels(task=task)
            for result in RELOAD_RESULTS:
                self.model_reloads.labels(task=task, result=result)

    def serving(self, task: str, version: str, arch: str) -> None:
        """The info series says what `task` serves now; the replaced version's series goes (not 0: a
        version served once would otherwise stay in every scrape)."""
        previous = self._served.pop(task, None)
        if previous is not None and previous != (version, arch):
            self.model_info.remove(task, *previous)
        self.model_info.labels(task=task, version=version, arch=arch).set(1)
        self._served[task] = (version, arch)

    def watch_padding(self, task: str, stats: PaddingStats) -> None:
        """Padding figures read off a predictor's own counters at each scrape."""
        self.padding_waste.labels(task=task).set_function(lambda: stats.waste)
        self.forward_passes.labels(task=task).set_function(lambda: stats.forwards)

    def runtime_chosen(self, choice: RuntimeChoice) -> None:
        """One series per task: the old one goes when the runtime changes (compiled, or a reload)."""
        labels = (choice.task, choice.precision, choice.memory_format, str(choice.compiled).lower(), choice.backend)
        old = self._runtime_labels.get(choice.task)
        if old is not None and old != labels:
            self.runtime_info.remove(*old)
        self._runtime_labels[choice.task] = labels
        self.runtime_info.labels(*labels).set(1)

    def observer(self, task: str) -> TaskObserver:
        return TaskObserver(self, task)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class TaskObserver:
    """The batching queue's hooks, bound to one task's series."""

    def __init__(self, metrics: Metrics, task: str) -> None:
        self._depth = metrics.queue_depth.labels(task=task)
        self._wait = metrics.queue_wait.labels(task=task)
        self._inference = metrics.inference_duration.labels(task=task)
        self._batch = metrics.batch_size.labels(task=task)

    def queue_depth(self, depth: int) -> None:
        self._depth.set(depth)

    def queue_wait(self, seconds: float) -> None:
        self._wait.observe(seconds)

    def batch_done(self, size: int, seconds: float) -> None:
        self._batch.observe(size)
        self._inference.observe(seconds)


class RequestMetricsMiddleware:
    """Times every request to a known endpoint; other paths create no series (no label explosion)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, endpoints: Collection[str]) -> None:
        self.app = app
        self.histogram = metrics.request_duration
        self.endpoints = frozenset(endpoints)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.endpoints:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # if the app raises before answering, the server answers 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self.histogram.labels(endpoint=scope["path"], status=str(status)).observe(time.perf_counter() - start)
