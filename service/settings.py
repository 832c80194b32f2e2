"""Service configuration: the one place that reads the environment (variables prefixed `DENSEPRED_`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from models import TASKS, Task

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DENSEPRED_", extra="ignore", frozen=True)

    model_dir: Path = Field(default=Path("artifacts/models"), description="Model store: one folder per task.")
    device: str = Field(default="auto", description="auto (cuda when available, else cpu), cpu, cuda or cuda:N.")
    host: str = Field(default="127.0.0.1", description="Interface to bind; widen deliberately.")
    port: int = Field(default=8000, ge=1, le=65535)
    max_batch_size: int = Field(default=8, ge=1, le=256, description="A batch closes at this many images...")
    max_wait_ms: float = Field(
        default=10.0, ge=0, le=10_000, description="...or once its oldest image waited this long."
    )
    max_queue: int = Field(default=64, ge=1, description="Images waiting per model; beyond it requests get 429.")
    request_timeout_s: float = Field(default=10.0, gt=0, description="A request still waiting after this gets 504.")
    max_image_bytes: int = Field(default=20 * 1024 * 1024, ge=1, description="Largest accepted upload (413 beyond).")
    max_image_pixels: int = Field(default=40_000_000, ge=1, description="Largest width*height, read from the header.")
    # NoDecode: read "segment,detect" as a comma-separated list rather than as JSON.
    tasks: Annotated[tuple[Task, ...], NoDecode] = Field(default=TASKS, min_length=1, description="Tasks to serve.")

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        value = value.strip().lower()
        if not _DEVICE.match(value):
            raise ValueError("device must be auto, cpu, cuda or cuda:N")
        return value

    @field_validator("tasks", mode="before")
    @classmethod
    def _split_tasks(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple):
            # Keep the canonical order and drop repeats, so "detect,segment,detect" serves two models.
            return tuple(task for task in TASKS if task in value) + tuple(t for t in value if t not in TASKS)
        return value
