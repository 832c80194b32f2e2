"""Service configuration: the one place that reads the environment (variables prefixed `DENSEPRED_`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from models import TASKS, Task
from models.registry import MAX_DETECTIONS

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
    max_batch_pixels: int = Field(
        default=4_194_304,
        ge=1,
        description="...or once its images' pixels, at the model's input size, would pass this (memory bound).",
    )
    max_padding_waste: float = Field(
        default=0.2, ge=0, le=1, description="Forward passes group images by shape: padding at most this share."
    )
    inference_workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description=(
            "Batches of a model that may run at once, each on its own thread. On a CPU they split the cores: "
            "1 is lowest latency when idle, the number of cores most throughput under load."
        ),
    )
    cpu_threads: int = Field(
        default=0,
        ge=0,
        le=1024,
        description=(
            "On a CPU: cores this process computes with (0: all it may use, its CPU affinity capped by a cgroup "
            "CPU quota). Replicas that share a machine each take their share: cores / replicas."
        ),
    )
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        default="auto",
        description=(
            "auto: at warm-up, measure the runtimes this device supports (fp32/bf16 autocast, NHWC, batch norm "
            "folded; fp16 too on CUDA) and keep the fastest that answers as fp32 does, if >= 5 % faster. Or a fixed "
            "precision: fp16 applies on CUDA only; bf16 on a CPU without native bf16 is slower than fp32."
        ),
    )
    channels_last: bool = Field(default=False, description="With a fixed PRECISION: NHWC memory layout.")
    runtime_selection: Literal["background", "warm-up"] = Field(
        default="background",
        description=(
            "PRECISION=auto: background: serve fp32 as soon as it is warm and switch to the measured runtime at a "
            "batch boundary once chosen (cold start as with a fixed precision); warm-up: measure before /readyz."
        ),
    )
    runtime_budget_s: float = Field(
        default=10.0,
        ge=0,
        le=60,
        description=(
            "PRECISION=auto: seconds per model for timing candidates (more rounds, a steadier choice). In the "
            "background they cost no cold start; with RUNTIME_SELECTION=warm-up they add to it."
        ),
    )
    compile: bool = Field(
        default=False,
        description=(
            "torch.compile the model in the background once serving (eager serves meanwhile); switched in only if "
            "it answers as eager does and is >= 5 % faster. Off by default: on a CPU compiling takes minutes."
        ),
    )
    max_queue: int = Field(default=64, ge=1, description="Images waiting per model; beyond it requests get 429.")
    request_timeout_s: float = Field(default=10.0, gt=0, description="A request still waiting after this gets 504.")
    max_image_bytes: int = Field(default=20 * 1024 * 1024, ge=1, description="Largest accepted upload (413 beyond).")
    body_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="The whole upload must arrive within this (and within the request's timeout), else 408.",
    )
    max_upload_buffer_bytes: int = Field(
        default=512 * 1024 * 1024,
        ge=1,
        description="Bytes of uploads being read or decoded, all requests together; beyond it 429 uploads_full.",
    )
    header_timeout_s: float = Field(
        default=10.0, gt=0, description="Request line and headers must arrive within this, else 408 and close."
    )
    max_header_bytes: int = Field(
        default=32 * 1024, ge=1024, description="Request line plus headers at most this many bytes, else 431."
    )
    max_connections: int = Field(
        default=1024, ge=1, description="Open connections (or requests) at most; beyond them uvicorn answers 503."
    )
    keep_alive_s: int = Field(
        default=5, ge=1, description="Idle kept-alive connections close after this; behind a load balancer, exceed its."
    )
    max_image_pixels: int = Field(default=40_000_000, ge=1, description="Largest width*height, read from the header.")
    max_image_side: int = Field(
        default=1333, ge=32, description="Longer sides beyond this are shrunk before the model; results mapped back."
    )
    max_aspect_ratio: float = Field(
        default=20.0, ge=1, description="Longer over shorter side; beyond it R-CNNs cannot resize the image (422)."
    )
    render_max_side: int = Field(
        default=1333,
        ge=32,
        description="?render=png draws the overlay at most this many pixels on its longer side (memory and CPU).",
    )
    max_renders: int = Field(
        default=2,
        ge=1,
        le=64,
        description="?render=png pictures drawn at once; others wait while their deadline allows, then 429.",
    )
    max_detections: int = Field(
        default=MAX_DETECTIONS, ge=1, le=MAX_DETECTIONS, description="Cap on detections per image."
    )
    inference_timeout_s: float = Field(
        default=60.0, gt=0, description="A batch running longer than this marks the process unhealthy (/healthz 503)."
    )
    reload_interval_s: float = Field(
        default=0.0,
        ge=0,
        le=86_400,
        description=(
            "Seconds between looks at the store for new versions, each then reloaded as POST /models/reload "
            "does (0: never; reload with POST /models/reload or SIGHUP)."
        ),
    )
    drain_delay_s: float = Field(
        default=0.0, ge=0, le=300, description="After SIGTERM: /readyz 503, serving on this long, then drain."
    )
    # SecretStr: the key never appears in reprs or logs.
    api_key: SecretStr | None = Field(default=None, description="When set, inference and /models need this key.")
    # NoDecode: read "segment,detect" as a comma-separated list rather than as JSON.
    tasks: Annotated[tuple[Task, ...], NoDecode] = Field(default=TASKS, min_length=1, description="Tasks to serve.")

    @model_validator(mode="after")
    def _one_upload_fits_the_buffer(self) -> Settings:
        # Else no upload of the largest size could ever be read: every one would be 429 uploads_full.
        if self.max_upload_buffer_bytes < self.max_image_bytes + 64 * 1024:
            raise ValueError("max_upload_buffer_bytes must be at least max_image_bytes + 64 KiB (multipart overhead)")
        return self

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        value = value.strip().lower()
        if not _DEVICE.match(value):
            raise ValueError("device must be auto, cpu, cuda or cuda:N")
        return value

    @field_validator("api_key", mode="before")
    @classmethod
    def _blank_key_is_none(cls, value: Any) -> Any:
        # DENSEPRED_API_KEY= (empty) in a compose file means "no key", not "the empty key".
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("tasks", mode="before")
    @classmethod
    def _split_tasks(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple):
            # Keep the canonical order and drop repeats, so "detect,segment,detect" serves two models.
            return tuple(task for task in TASKS if task in value) + tuple(t for t in value if t not in TASKS)
        return value
