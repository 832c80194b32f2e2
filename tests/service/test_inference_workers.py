"""INFERENCE_WORKERS: several batches of a model at once, on threads that split the CPU's cores."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from service_helpers import WrappedPredictor, as_raw, blocks_image, encode, serve, settings_for

from models import TASKS, Predictor
from service.threads import inference_threads, reload_thread

pytestmark = pytest.mark.anyio


def test_cpu_workers_are_shared_by_every_model_and_split_the_cores() -> None:
    cores = torch.get_num_threads()
    barrier = threading.Barrier(2, timeout=10)  # both calls at once: they must be on two threads

    def report() -> tuple[str, int]:
        barrier.wait()
        return threading.current_thread().name, torch.get_num_threads()

    one = inference_threads(TASKS, torch.device("cpu"))
    # Before any worker sets torch's default: a new thread takes it (so the service builds one pool only).
    assert one["detect"].submit(torch.get_num_threads).result() == cores
    two = inference_threads(TASKS, torch.device("cpu"), 2)
    gpu = inference_threads(TASKS, torch.device("cuda"), 2)
    try:
        assert len(set(two.values())) == 1
        pool = two["segment"]
        seen = [future.result() for future in [pool.submit(report), pool.submit(report)]]
        assert len({name for name, _ in seen}) == 2
        assert {threads for _, threads in seen} == {max(1, cores // 2)}
        assert len(set(gpu.values())) == len(TASKS)  # on a GPU: workers per model
        assert all(executor._max_workers == 2 for executor in gpu.values())
    finally:
        for executor in {*one.values(), *two.values(), *gpu.values()}:
            executor.shutdown()
        torch.set_num_threads(cores)  # the workers set torch's process-wide default too


def test_cpu_threads_caps_the_cores_the_workers_split() -> None:
    cores = torch.get_num_threads()
    one = inference_threads(TASKS, torch.device("cpu"), 1, cpu_threads=1)
    two = inference_threads(TASKS, torch.device("cpu"), 2, cpu_threads=4)
    try:
        assert one["detect"].submit(torch.get_num_threads).result() == 1
        assert two["detect"].submit(torch.get_num_threads).result() == 2
    finally:
        for executor in {*one.values(), *two.values()}:
            executor.shutdown()
        torch.set_num_threads(cores)


async def test_two_workers_run_two_batches_of_one_model_at_once(store: Path, predictors: dict[str, Predictor]) -> None:
    barrier = threading.Barrier(2, timeout=10)  # a batch waits here for a second one: with one worker it fails
    wrapped = WrappedPredictor(predictors["detect"], before_batch=lambda images: barrier.wait() and None)
    settings = settings_for(store, tasks="detect", max_batch_size=1, max_wait_ms=0, inference_workers=2)
    async with serve(settings, lambda task, device: wrapped) as client:
        data = [encode(blocks_image(seed, 48, 64)) for seed in (1, 2)]
        answers = await asyncio.gather(*(client.post("/detect", **as_raw(d)) for d in data))
    assert [a.status_code for a in answers] == [200, 200]
    assert wrapped.batch_sizes[-2:] == [1, 1]


def _bodies(responses: list[Any]) -> list[Any]:
    bodies = []
    for response in responses:
        assert response.status_code == 200, response.text
        body = json.loads(response.content)
        body.pop("timing_ms")
        bodies.append(body)
    return bodies


_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, _CUDA])])
@pytest.mark.parametrize("task", TASKS)
async def test_two_batches_at_once_answer_as_one_at_a_time(store: Path, task: str, device: str) -> None:
    # Real predictors called from two threads at once must share no state between their batches. Batches
    # of one image, so that batch composition (padding) cannot change an answer either.
    images = [encode(blocks_image(seed, 40 + 8 * seed, 64)) for seed in range(10)]
    settings = settings_for(store, tasks=task, max_batch_size=1, max_wait_ms=0, inference_workers=2, device=device)
    async with serve(settings) as client:
        one_at_a_time = [await client.post(f"/{task}", **as_raw(image)) for image in images]
        at_once = await asyncio.gather(*(client.post(f"/{task}", **as_raw(image)) for image in images))
    assert _bodies(list(at_once)) == _bodies(one_at_a_time)


def test_the_reload_thread_has_a_team_of_one_and_leaves_the_default_alone() -> None:
    cores = torch.get_num_threads()
    reload = reload_thread(torch.device("cpu"))
    later = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    seen: list[int] = []
    try:
        assert reload.submit(torch.get_num_threads).result() == 1  # it only prepares; passes run elsewhere
        later.start()
        later.join()
        assert seen == [cores]  # a thread made afterwards (an inference worker, say) gets every core
        assert torch.get_num_threads() == cores
    finally:
        reload.shutdown()
