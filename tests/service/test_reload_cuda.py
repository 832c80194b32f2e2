"""Reloads on a CUDA device: the replaced model's memory goes back. Skipped without a GPU (bench/gpu_check.sh)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from reload_helpers import copy_store, publish
from service_helpers import as_raw, blocks_image, encode, serve, settings_for

from models import history

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


async def test_twenty_reloads_return_to_the_baseline_cuda_allocation(store: Path, tmp_path: Path) -> None:
    own = copy_store(store, tmp_path / "store")
    task, image = "instances", encode(blocks_image(4, 240, 320))
    first = publish(own, task, seed=500)
    second = publish(own, task, seed=501)
    history.promote(own, task, first)
    allocated: list[int] = []
    async with serve(settings_for(own, device="cuda", tasks=task)) as client:
        for cycle in range(20):
            target = second if cycle % 2 == 0 else first
            history.promote(own, task, target)
            answer = await client.post("/models/reload")
            assert answer.status_code == 200, answer.text
            response = await client.post(f"/{task}", **as_raw(image))
            assert response.json()["model"]["version"] == target
            torch.cuda.synchronize()
            allocated.append(torch.cuda.memory_allocated())
    print(f"\nCUDA bytes allocated after each of 20 reloads: {allocated}")
    # One model's weights are allocated after every cycle: the same bytes each time, no second copy left.
    assert max(allocated[1:]) <= allocated[0] + (1 << 20), allocated
