"""The cores the service computes with: CPU affinity capped by a cgroup CPU quota, which torch ignores.

The cgroup files are written as the kernel shows them inside a container (`docker run --cpus`, a pod's
CPU limit): cgroup v2's cpu.max, or v1's CFS quota and period.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from service_helpers import WrappedPredictor, as_raw, blocks_image, encode, serve, settings_for

import service.cores
from models import Predictor
from service.cores import available_cores, cpu_quota, torch_cores

pytestmark = pytest.mark.anyio
AFFINITY = len(os.sched_getaffinity(0))


def _v2(root: Path, text: str) -> Path:
    (root / "cpu.max").write_text(text)
    return root


def _v1(root: Path, quota_us: str, period_us: str = "100000") -> Path:
    folder = root / "cpu,cpuacct"
    folder.mkdir()
    (folder / "cpu.cfs_quota_us").write_text(quota_us + "\n")
    (folder / "cpu.cfs_period_us").write_text(period_us + "\n")
    return root


def test_cgroup_v2_quota(tmp_path: Path) -> None:
    assert cpu_quota(_v2(tmp_path, "150000 100000\n")) == 1.5
    assert available_cores(tmp_path) == min(AFFINITY, 2)  # 1.5 cores' worth of time: two threads
    assert cpu_quota(_v2(tmp_path, "50000 100000\n")) == 0.5
    assert available_cores(tmp_path) == 1
    assert cpu_quota(_v2(tmp_path, "max 100000\n")) is None
    assert available_cores(tmp_path) == AFFINITY


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    assert cpu_quota(_v1(tmp_path, "-1")) is None
    (tmp_path / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("100000\n")
    assert cpu_quota(tmp_path) == 1.0
    assert available_cores(tmp_path) == 1


def test_no_cgroup_or_unreadable_values_mean_no_quota(tmp_path: Path) -> None:
    assert cpu_quota(tmp_path) is None
    assert cpu_quota(_v2(tmp_path, "garbage")) is None
    assert cpu_quota(_v2(tmp_path, "100000 0")) is None
    assert available_cores(tmp_path) == AFFINITY


def test_torch_keeps_its_default_unless_a_quota_or_the_setting_says_less(tmp_path: Path) -> None:
    assert torch_cores(3, available_cores(_v2(tmp_path, "max 100000"))) == 3  # CPU_THREADS wins
    assert torch_cores(0, available_cores(tmp_path)) == (AFFINITY if torch.get_num_threads() > AFFINITY else 0)
    _v2(tmp_path, "50000 100000")
    assert torch_cores(0, available_cores(tmp_path)) == (1 if torch.get_num_threads() > 1 else 0)


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="needs torch to default to at least two threads")
async def test_the_service_computes_within_its_cpu_quota(
    store: Path, predictors: dict[str, Predictor], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service.cores, "CGROUP", _v2(tmp_path, "100000 100000\n"))  # one core's worth
    seen: list[int] = []

    def record(images: object) -> None:
        seen.append(torch.get_num_threads())

    wrapped = WrappedPredictor(predictors["detect"], before_batch=record)
    cores = torch.get_num_threads()
    try:
        async with serve(settings_for(store, tasks="detect"), lambda task, device: wrapped) as client:
            response = await client.post("/detect", **as_raw(encode(blocks_image(3))))
    finally:
        torch.set_num_threads(cores)  # the inference thread set torch's process-wide default
    assert response.status_code == 200
    assert seen
    assert set(seen) == {1}
