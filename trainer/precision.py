"""Mixed precision on CUDA: autocast to bfloat16 where the GPU has it, else float16 with loss scaling.

CPU training stays in float32: CPU autocast is slow for convolutions and buys nothing here.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch


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
    """`amp=None` means on for CUDA, off elsewhere; asking for it off CUDA is an error, not a silent no-op."""
    if amp is None:
        amp = device.type == "cuda"
    if not amp:
        return Precision(device.type)
    if device.type != "cuda":
        raise ValueError(f"--amp needs a CUDA device, not {device}; CPU training runs in float32")
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return Precision(device.type, dtype)
