"""Mixed precision, on by default where it pays: on CUDA, autocast to bfloat16 where the GPU has it, else
float16 with loss scaling; on a CPU with native bf16 dot products (AVX512-BF16 or AMX:
models.acceleration.native_cpu_bf16), bfloat16: the quick chain trains 1.15-1.24x faster there at
accuracy within the training seeds' spread (bench/results/accuracy_experiments.md). Other CPUs train in
float32 (autocast there is slower than float32) and refuse `--amp`.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

from models.acceleration import native_cpu_bf16


@dataclass(frozen=True)
class Precision:
    device_type: str
    dtype: torch.dtype | None = None  # None: plain float32

    @property
    def name(self) -> str:
        return "float32" if self.dtype is None else str(self.dtype).removeprefix("torch.")

    @property
    def needs_scaler(self) -> bool:
        # float16 gradients underflow without loss scaling; bfloat16 has float32's exponent range.
        return self.dtype == torch.float16

    def autocast(self) -> AbstractContextManager[object]:
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        return torch.amp.GradScaler(self.device_type) if self.needs_scaler else None


def choose_precision(device: torch.device, amp: bool | None = None) -> Precision:
    """`amp=None` means on where it pays (CUDA, a CPU with native bf16); asking for it where it does not is an
    error, not a silent no-op."""
    cpu_bf16 = device.type == "cpu" and native_cpu_bf16()
    if amp is None:
        amp = device.type == "cuda" or cpu_bf16
    if not amp:
        return Precision(device.type)
    if cpu_bf16:
        return Precision(device.type, torch.bfloat16)
    if device.type != "cuda":
        raise ValueError(
            f"--amp needs a CUDA device or a CPU with native bf16 (AVX512-BF16, AMX), not {device}; "
            "training runs in float32"
        )
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return Precision(device.type, dtype)
