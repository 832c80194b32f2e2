"""PRECISION through a real `python -m service`: the runtime chosen at warm-up or in the background once
serving, in /models, /metrics and the log."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from processes import service
from service_helpers import metric_samples

from service.settings import Settings


def test_auto_measures_at_warm_up_and_shows_the_choice(random_store: Path, tmp_path: Path) -> None:
    log = tmp_path / "service.log"
    # A small timing budget: the test checks the wiring, not which runtime wins on a loaded machine.
    with service(random_store, log, tasks="segment", runtime_budget_s="0", runtime_selection="warm-up") as served:
        models = httpx.get(f"{served.url}/models", timeout=10).json()["models"]
        metrics = httpx.get(f"{served.url}/metrics", timeout=10).text
    runtime = models[0]["runtime"]
    _assert_measured(runtime, metrics, log)


def test_background_selection_serves_fp32_first_then_switches(random_store: Path, tmp_path: Path) -> None:
    log = tmp_path / "service.log"
    png = io.BytesIO()
    Image.new("RGB", (96, 64), (200, 40, 40)).save(png, format="PNG")
    statuses, modes = [], []
    # The default RUNTIME_SELECTION=background: ready before measuring; 2 s of timing rounds.
    with service(random_store, log, tasks="segment", runtime_budget_s="2") as served:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # requests all through the measurement and the switch
            statuses.append(httpx.post(f"{served.url}/segment", files={"image": ("a.png", png.getvalue())},
                                       timeout=30).status_code)  # fmt: skip
            runtime = httpx.get(f"{served.url}/models", timeout=10).json()["models"][0]["runtime"]
            modes.append(runtime["mode"])
            if runtime["mode"] != "pending":
                break
        statuses.append(httpx.post(f"{served.url}/segment", files={"image": ("a.png", png.getvalue())},
                                   timeout=30).status_code)  # fmt: skip
        metrics = httpx.get(f"{served.url}/metrics", timeout=10).text
    assert modes[-1] == "measured", modes
    assert set(statuses) == {200}, statuses
    text = log.read_text()
    assert text.index("ready. Try:") < text.index("segment runtime on cpu:")  # serving came first
    _assert_measured(runtime, metrics, log)


def _assert_measured(runtime: dict[str, Any], metrics: str, log: Path) -> None:
    assert runtime["mode"] == "measured"
    assert runtime["candidates"][0]["runtime"] == "fp32"
    tried = {c["runtime"] for c in runtime["candidates"]}
    assert {"fp32+fold_bn", "fp32+channels_last", "fp32+channels_last+fold_bn"} <= tried
    assert all(c["parity"]["ok"] for c in runtime["candidates"][1:])  # folding and NHWC answer as fp32
    assert all(c["speedup"] is not None for c in runtime["candidates"])  # every one timed
    assert runtime["runtime"] in tried
    info = metric_samples(metrics, "densepred_runtime_info")
    labels = (
        f'{{backend="{runtime["backend"]}",compiled="false",memory_format="{runtime["memory_format"]}",'
        f'precision="{runtime["precision"]}",task="segment"}}'
    )
    assert info == {labels: 1.0}, info
    assert f"segment runtime on cpu: {runtime['runtime']}" in log.read_text()


def test_a_fixed_precision_is_not_measured(random_store: Path, tmp_path: Path) -> None:
    with service(random_store, tmp_path / "service.log", tasks="segment", precision="fp32",
                 channels_last="true") as served:  # fmt: skip
        runtime = httpx.get(f"{served.url}/models", timeout=10).json()["models"][0]["runtime"]
    assert (runtime["mode"], runtime["runtime"], runtime["candidates"]) == ("fixed", "fp32+channels_last", [])


def test_precision_setting_defaults_to_auto_and_refuses_unknown_values() -> None:
    assert Settings.model_construct().precision == "auto"
    assert Settings(precision="bf16").precision == "bf16"
    with pytest.raises(ValueError, match="precision"):
        Settings(precision="int8")  # type: ignore[arg-type]
