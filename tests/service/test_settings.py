"""Settings come from DENSEPRED_* variables and nowhere else."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from models.devices import resolve_device
from service.settings import Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in os.environ:
        if key.startswith("DENSEPRED_"):
            monkeypatch.delenv(key)


def test_defaults() -> None:
    settings = Settings()
    assert settings.model_dir == Path("artifacts/models")
    assert (settings.host, settings.port, settings.device) == ("127.0.0.1", 8000, "auto")
    assert settings.tasks == ("segment", "detect", "instances")
    assert settings.inference_workers == 1  # one OpenMP team over all cores: lowest latency when idle
    assert settings.cpu_threads == 0  # torch's default: every core


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = {
        "DENSEPRED_MODEL_DIR": str(tmp_path),
        "DENSEPRED_DEVICE": "CUDA:1",
        "DENSEPRED_HOST": "0.0.0.0",
        "DENSEPRED_PORT": "9001",
        "DENSEPRED_MAX_BATCH_SIZE": "16",
        "DENSEPRED_MAX_WAIT_MS": "2.5",
        "DENSEPRED_MAX_QUEUE": "7",
        "DENSEPRED_REQUEST_TIMEOUT_S": "3",
        "DENSEPRED_MAX_IMAGE_BYTES": "1000",
        "DENSEPRED_MAX_IMAGE_PIXELS": "2000",
        "DENSEPRED_TASKS": "instances, detect,instances",
        "DENSEPRED_INFERENCE_WORKERS": "2",
        "DENSEPRED_CPU_THREADS": "1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.model_dir == tmp_path
    assert settings.device == "cuda:1"
    assert (settings.host, settings.port, settings.max_batch_size, settings.max_wait_ms) == ("0.0.0.0", 9001, 16, 2.5)
    assert (settings.max_queue, settings.request_timeout_s) == (7, 3.0)
    assert (settings.max_image_bytes, settings.max_image_pixels) == (1000, 2000)
    assert settings.tasks == ("detect", "instances")
    assert settings.inference_workers == 2
    assert settings.cpu_threads == 1


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("DENSEPRED_DEVICE", "tpu"),
        ("DENSEPRED_TASKS", "detect,classify"),
        ("DENSEPRED_TASKS", ""),
        ("DENSEPRED_MAX_BATCH_SIZE", "0"),
        ("DENSEPRED_PORT", "70000"),
        ("DENSEPRED_REQUEST_TIMEOUT_S", "0"),
        ("DENSEPRED_INFERENCE_WORKERS", "0"),
        ("DENSEPRED_CPU_THREADS", "-1"),
    ],
)
def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch, key: str, value: str) -> None:
    monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError):
        Settings()


def test_device_resolution() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
