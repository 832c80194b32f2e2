"""The service on a CUDA device: run by bench/gpu_check.sh on a GPU machine, skipped elsewhere."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from service_helpers import as_raw, blocks_image, encode, serve, settings_for

from models import SemanticMap, load_predictor
from service.batch_runner import BatchRunner
from service.runtime import release_device_memory

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


async def test_every_endpoint_answers_from_the_gpu(store: Path) -> None:
    settings = settings_for(store, device="cuda", precision="bf16", channels_last=True)
    async with serve(settings) as client:
        models = (await client.get("/models")).json()
        data = encode(blocks_image(5, 240, 320), "PNG")
        for task in ("segment", "detect", "instances"):
            response = await client.post(f"/{task}", params={} if task == "segment" else {"score_threshold": 0},
                                         **as_raw(data))  # fmt: skip
            assert response.status_code == 200, response.text
            body = response.json()
            for item in body.get("detections", []) + body.get("segments", []):
                if "mask" in item:
                    rle = {"size": item["mask"]["size"], "counts": item["mask"]["counts"].encode("ascii")}
                    assert mask_utils.decode(rle).shape == (240, 320)
                    assert int(np.asarray(mask_utils.area(rle))) == item["area"]
    assert models


def test_a_real_out_of_memory_batch_is_halved_until_it_fits(store: Path) -> None:
    predictor = load_predictor(store, "segment", torch.device("cuda"))
    image = torch.randint(0, 256, (3, 1024, 1024), dtype=torch.uint8)
    release_device_memory()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    alone = predictor.predict([image])[0]
    per_image = torch.cuda.max_memory_allocated() - base
    total = torch.cuda.get_device_properties(0).total_memory
    splits: list[int] = []

    def on_split() -> None:
        splits.append(1)
        release_device_memory()

    runner = BatchRunner(predictor.predict, name="segment", split_on=(torch.cuda.OutOfMemoryError,), on_split=on_split)
    # Room for about two lone images' peaks: a batch of eight cannot fit. How far it is halved depends on
    # the GPU's kernels (an image in a batch needs less than a lone image's peak, which includes fixed
    # workspace): twice on an H200, once on an H100. The exact halving sequence is tested on the CPU
    # (test_batching.py); this test shows a real CUDA out-of-memory error is caught and split.
    torch.cuda.set_per_process_memory_fraction((base + 2.5 * per_image) / total)
    try:
        outcomes = runner.run([image] * 8)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        release_device_memory()
    assert splits  # the batch of eight ran out of memory and was halved at least once
    assert all(not isinstance(outcome, Exception) for outcome in outcomes)
    for outcome in outcomes:
        assert isinstance(outcome, SemanticMap)
        # cuDNN picks kernels by batch size: a few pixels on class boundaries may flip.
        assert (outcome.labels == alone.labels).float().mean() > 0.99
