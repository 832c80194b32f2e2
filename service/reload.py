"""Model reloads: a new version in the store takes over under load, or is refused and the old one serves on.

Triggers: `POST /models/reload` (answered with the report), SIGHUP and `RELOAD_INTERVAL_S` polling
(logged, and shown per task as `last_reload` in /models). For each task whose store entry names another
version than the one served:

1. load it beside the running model through `Runtime.load_model`, start-up's own path (the loader
   verifies the sha256 and that the weights fit the manifest's architecture), on the reload thread,
   while the running model goes on serving;
2. warm it through `Runtime.warm_model`, start-up's warm-up, on that thread, whose OpenMP team is one
   thread on a CPU (service/threads.py); a runtime measurement's forward passes run on the inference
   thread between batches, so that its timings see what a batch will see and no request waits behind
   more than one such pass; the warm-up pass itself stays on the reload thread (a slow one must not
   stall the batches);
3. switch at a batch boundary (`Batcher.swap`): batches running finish on the old model, queued and new
   requests run on the new one, and every answer names the version that computed it;
4. once the old model's batches are done, drop it and give its memory back.

Any error in 1-2 (missing or damaged files, a checksum or architecture mismatch, a warm-up that raises,
out of memory) leaves the old version serving; the task's result says why. Reloads never interleave:
`POST` while one runs is a 409; signals and polls that arrive meanwhile, or during start-up, run once
after it (coalesced into one). Once draining has begun, nothing new starts (503 for `POST`).

The same kind of thread and the same switch serve start-up's runtime measurement (`measure_runtimes`,
with PRECISION=auto and RUNTIME_SELECTION=background): fp32 serves from readiness on, and the measured
runtime of the same version takes over at a batch boundary once chosen. A reload's load and warm-up and
a measurement never run at once (`_computing`): a reload asked for meanwhile waits for it, not a 409.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import sys
import time

import torch

from models import Predictor, StoreError, read_manifest
from models.runtimes import RuntimeChoice
from service.errors import ApiError
from service.runtime import Runtime, ServedModel, TaskModel, batch_fn, configure, job_pixels, watch
from service.schemas import ErrorDetail, Outcome, ReloadReport, TaskReload
from service.warming import PENDING, measure

log = logging.getLogger(__name__)

POLL = "poll"


def utc(epoch_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_s))


class Reloader:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.last: dict[str, TaskReload] = {}  # per task, the last reload that tried a new version
        self._lock = asyncio.Lock()
        # One background computation at a time, a reload's load and warm-up or a runtime measurement: they
        # would time each other's work, and share the cores with the batches besides.
        self._computing = asyncio.Lock()
        self._pending: str | None = None  # a signal's or poll's trigger, waiting for its turn
        self._follow_up: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._failed: dict[str, str] = {}  # task -> the store version that failed; polls do not retry it

    async def reload(self, trigger: str) -> ReloadReport:
        """Reload now; ApiError 503 during start-up or draining, 409 while another reload runs."""
        if self.runtime.draining:
            raise ApiError(503, "shutting_down", "shutting down: no reload now", {"Retry-After": "5"})
        if not self.runtime.warmed:
            raise ApiError(503, "not_ready", "still starting up: reload once /readyz is 200", {"Retry-After": "5"})
        if self._lock.locked():
            message = "another reload is running; its outcome is in the server log and in /models"
            raise ApiError(409, "reload_in_progress", message, {"Retry-After": "5"})
        async with self._lock:
            return await self._run(trigger, retry_failed=True)

    def request(self, trigger: str) -> None:
        """For signals and polls, which nobody answers: reload now, or after the running reload or start-up
        (any number of requests meanwhile make one reload, which reads the store as it is then)."""
        if self.runtime.draining:
            log.info("reload (%s) ignored: shutting down", trigger)
            return
        self._pending = trigger
        if self._follow_up is None or self._follow_up.done():
            self._follow_up = asyncio.create_task(self._run_pending(), name="reload")

    def start_polling(self, interval_s: float) -> None:
        if interval_s > 0:
            self._poller = asyncio.create_task(self._poll(interval_s), name="reload-poll")
            log.info("looking for new versions in %s every %.3g s", self.runtime.settings.model_dir, interval_s)

    async def close(self) -> None:
        for task in (self._poller, self._follow_up):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def measure_runtimes(self) -> None:
        """After start-up: measure the runtime of each model whose choice is pending (PRECISION=auto with
        RUNTIME_SELECTION=background; nothing otherwise) while fp32 serves (prepared on a reload thread, its
        timed passes on the inference thread between batches), and switch to the winner at a batch
        boundary. Not under the reload lock: a reload meanwhile waits for the measurement's computation
        only, and a model it replaced is not switched (the new version measured its own runtime)."""
        for task, model in self.runtime.models.items():
            if self.runtime.draining:
                return
            if model.state == "ready" and model.choice is not None and model.choice.mode == PENDING:
                await self._measure(task, model)

    async def _measure(self, task: str, model: TaskModel) -> None:
        served = model.predictor
        if not isinstance(served, Predictor):  # a test double: nothing to measure
            return
        loop = asyncio.get_running_loop()
        try:
            async with self._computing:
                with self.runtime.reload_worker() as worker:
                    place = self.runtime.on_inference(task)
                    choice = await loop.run_in_executor(worker, measure, served, self.runtime.settings, place)
        except Exception as exc:  # noqa: BLE001 (fp32 goes on serving; the reason is shown in /models)
            log.exception("%s: measuring the runtimes failed; fp32 serves on", task)
            model.choice = RuntimeChoice(task, str(served.device), served.acceleration, "measured", f"failed: {exc}")
            return
        runner, choice.runner = choice.runner, None
        if model.predictor is not served:  # a reload replaced it meanwhile, and measured its own runtime
            return
        old_batches: set[asyncio.Task[None]] = set()
        if runner is not None:  # another runtime won: same version, so no reload is recorded
            configure(runner, self.runtime.settings)
            runner.padding = served.padding  # the padding counters go on, not restart
            old_batches = model.batcher.swap(batch_fn(runner), job_pixels(runner))
            model.predictor = runner
        model.choice = choice
        self.runtime.metrics.runtime_chosen(choice)
        if runner is not None:
            del served, runner
            await self._free_old(task, old_batches)

    async def _run_pending(self) -> None:
        while self._pending is not None:
            while not self.runtime.warmed:  # start-up loads the store too; reload what changed after
                await asyncio.sleep(0.1)
            async with self._lock:
                trigger, self._pending = self._pending, None
                if trigger is None or self.runtime.draining:
                    return
                await self._run(trigger, retry_failed=trigger != POLL)

    async def _poll(self, interval_s: float) -> None:
        while not self.runtime.draining:
            await asyncio.sleep(interval_s)
            if self.runtime.warmed and not self._lock.locked() and await asyncio.to_thread(self._store_changed):
                self.request(POLL)

    def _store_changed(self) -> bool:
        for task, model in self.runtime.models.items():
            try:
                found = read_manifest(self.runtime.settings.model_dir, task).version
            except StoreError:
                continue  # mid-publish, or broken: a POST or SIGHUP reports it
            if found not in (model.manifest.version, self._failed.get(task)):
                return True
        return False

    async def _run(self, trigger: str, retry_failed: bool) -> ReloadReport:
        results = [
            await self._reload_task(task, model, trigger, retry_failed) for task, model in self.runtime.models.items()
        ]
        bad = [r for r in results if r.result in ("failed", "skipped")]
        error = None
        if bad:
            reasons = "; ".join(f"{r.task}: {r.reason}" for r in bad)
            error = ErrorDetail(code="reload_failed", message=f"{reasons}; the versions before keep serving")
        return ReloadReport(ok=not bad, trigger=trigger, tasks=results, error=error)

    async def _reload_task(self, task: str, model: TaskModel, trigger: str, retry_failed: bool) -> TaskReload:
        started = time.perf_counter()
        before = model.manifest.version

        def result(outcome: Outcome, after: str, store: str | None, reason: str | None = None) -> TaskReload:
            seconds = round(time.perf_counter() - started, 3)
            return TaskReload(task=task, result=outcome, before=before, after=after, store=store, reason=reason,
                              seconds=seconds, at=utc(time.time()))  # fmt: skip

        try:
            found: str | None = (await asyncio.to_thread(read_manifest, self.runtime.settings.model_dir, task)).version
        except StoreError as exc:
            return self._failed_with(result("failed", before, None, f"store: {exc}"), trigger)
        if found == before and model.state == "ready":
            return result("unchanged", before, found)
        if not retry_failed and self._failed.get(task) == found:
            return result("skipped", before, found, f"version {found} failed before; POST /models/reload retries it")
        stage, failure = "load", None
        candidate: ServedModel | None = None
        try:
            async with self._computing:
                with self.runtime.reload_worker() as worker:
                    candidate = await self.runtime.load_model(task, worker)
                    stage = "warm-up"
                    choice = await self.runtime.warm_model(task, candidate, worker)
        except Exception as exc:
            failure = f"{stage}: {type(exc).__name__}: {exc}"
            if not isinstance(exc, StoreError):  # the store's own errors say all there is to say
                log.warning("%s: %s of version %s raised", task, stage, found, exc_info=True)
        if failure is not None or candidate is None:
            candidate = None  # what the failed load built goes now (the traceback went with the except block)
            await asyncio.to_thread(free_memory)
            return self._failed_with(result("failed", before, found, failure), trigger)
        if candidate.manifest.version == before and model.state == "ready":  # the store changed back meanwhile
            candidate = None
            await asyncio.to_thread(free_memory)
            return result("unchanged", before, found)
        old_batches = self._switch(task, model, candidate, choice)
        del candidate
        done = result("reloaded", model.manifest.version, found)
        self._failed.pop(task, None)
        self.last[task] = done  # with the switch, before any await: /models never shows one without the other
        self.runtime.metrics.model_reloads.labels(task=task, result="reloaded").inc()
        log.info("%s: reloaded %s -> %s (%s) in %.2f s [%s]", task, before, done.after, model.manifest.arch,
                 done.seconds, trigger)  # fmt: skip
        await self._free_old(task, old_batches)
        return done

    def _failed_with(self, failed: TaskReload, trigger: str) -> TaskReload:
        if failed.store is not None:
            self._failed[failed.task] = failed.store
        self.last[failed.task] = failed
        self.runtime.metrics.model_reloads.labels(task=failed.task, result="failed").inc()
        log.error("%s: reload to %s refused, %s keeps serving: %s [%s]", failed.task, failed.store or "?",
                  failed.before, failed.reason, trigger)  # fmt: skip
        return failed

    def _switch(
        self, task: str, model: TaskModel, candidate: ServedModel, choice: RuntimeChoice
    ) -> set[asyncio.Task[None]]:
        """Serve `candidate` from the next batch on; returns the batches still running the old model. No
        await in here: requests see the old model or the new one, whole."""
        old_batches = model.batcher.swap(batch_fn(candidate), job_pixels(candidate))
        model.replace(candidate)  # the old model lives on only in the batches it is finishing
        model.choice = choice  # a new version measures its own runtime (PRECISION=auto), as at start-up
        self.runtime.metrics.runtime_chosen(choice)
        watch(task, candidate, self.runtime.metrics)
        return old_batches

    async def _free_old(self, task: str, old_batches: set[asyncio.Task[None]]) -> None:
        if old_batches:
            _, still = await asyncio.wait(old_batches, timeout=self.runtime.settings.inference_timeout_s)
            if still:
                log.warning("%s: the old model is still running a batch; it is freed when that ends", task)
        await asyncio.to_thread(free_memory)


def free_memory() -> None:
    """Give a dropped model's memory back: to the CUDA driver, and on glibc to the system (freed heap
    pages otherwise stay in the process, and 20 reloads would look like a leak)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
