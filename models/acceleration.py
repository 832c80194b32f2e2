"""How a model runs on its device: precision, memory format, batch-norm folding. What a device supports.

`Acceleration` is the what; `prepare_model` applies it to a network; `autocast_dtype` says what the
forward pass autocasts to. Which `Acceleration` wins on a device is measured, not assumed
(models/runtimes.py): bf16 autocast is slower than fp32 on a CPU without native bf16 dot products and
faster on one with them (AVX512-BF16, AMX), by model.
"""

from __future__ import annotations

import functools
import itertools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops.misc import FrozenBatchNorm2d

from models import onnx_backend

log = logging.getLogger(__name__)

Precision = Literal["fp32", "fp16", "bf16"]
Backend = Literal["torch", "onnxruntime"]
# What autocasts: the whole forward pass, or an R-CNN's backbone and FPN only (its RPN and RoI heads stay
# fp32: in bf16 their box deltas round by pixels, and whole-model bf16 boxes fail the parity check at times).
AutocastScope = Literal["model", "backbone"]
_AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}
_BATCH_NORMS = (nn.BatchNorm2d, FrozenBatchNorm2d)


@dataclass(frozen=True)
class Acceleration:
    """How a model runs. On a CPU fp16 is not offered (no CPU kernels worth having); bf16 autocasts there too."""

    precision: Precision = "fp32"  # fp16/bf16: autocast the forward pass (weights stay fp32)
    channels_last: bool = False  # NHWC memory layout: oneDNN and tensor cores prefer it for convolutions
    fold_bn: bool = False  # batch norm folded into the convolution before it (inference only)
    # "onnxruntime": the convolutional part runs in ONNX Runtime on the CPU (models/onnx_backend.py).
    backend: Backend = "torch"
    autocast_scope: AutocastScope = "model"  # "backbone": R-CNN predictors only (DetectionPredictor)

    @property
    def precision_label(self) -> str:
        """The precision as logs, /models and metrics show it: "bf16", or "bf16-backbone" for a partial one."""
        partial = self.precision != "fp32" and self.autocast_scope != "model"
        return f"{self.precision}-{self.autocast_scope}" if partial else self.precision

    @property
    def name(self) -> str:
        parts = [self.precision_label] + ["channels_last"] * self.channels_last + ["fold_bn"] * self.fold_bn
        return "+".join(parts + ([self.backend] if self.backend != "torch" else []))


def cpu_flags(path: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags (Linux), or none where /proc/cpuinfo cannot be read."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def native_cpu_bf16() -> bool:
    """bf16 dot products in hardware (AVX512-BF16 or AMX) and oneDNN able to use them. Elsewhere oneDNN
    emulates bf16 (AVX-512 without BF16) or torch falls back to reference kernels (AVX2): slower than fp32."""
    flags = cpu_flags()
    hardware = "avx512_bf16" in flags or "amx_bf16" in flags
    return hardware and torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def precisions(device: torch.device) -> list[Precision]:
    """The precisions worth trying on `device`: fp32 always; bf16 where it has native support; fp16 on CUDA."""
    if device.type == "cuda":
        out: list[Precision] = ["fp32", "fp16"]
        return out + (["bf16"] if torch.cuda.is_bf16_supported() else [])
    return ["fp32", "bf16"] if native_cpu_bf16() else ["fp32"]


def autocast_dtype(device: torch.device, acceleration: Acceleration) -> torch.dtype | None:
    """What the forward pass autocasts to, or None (fp32). fp16 on a CPU runs fp32, with a warning."""
    if device.type != "cuda" and acceleration.precision == "fp16":
        log.warning("fp16 applies on CUDA devices only; running fp32 on %s", device)
        return None
    if device.type not in ("cuda", "cpu"):
        return None
    return _AUTOCAST.get(acceleration.precision)


def prepare_model(model: nn.Module, device: torch.device, acceleration: Acceleration) -> nn.Module:
    """The network in eval mode on `device`, batch norm folded, NHWC or partly in ONNX Runtime as
    `acceleration` asks."""
    model = onnx_backend.detach(model).eval().to(device)
    if acceleration.fold_bn:
        model = fold_batch_norms(model)
    # Back to NCHW too: a predictor switched from NHWC to a runtime without it must not keep NHWC weights.
    model = model.to(memory_format=torch.channels_last if acceleration.channels_last else torch.contiguous_format)
    if acceleration.backend == "onnxruntime":
        if device.type != "cpu":
            raise ValueError(f"the onnxruntime backend runs on a CPU, not on {device}")
        model = onnx_backend.attach(model)
    return model


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """Fold, in place, every eval-mode batch norm that directly follows a convolution, where the structure
    says it does: consecutive children of a container that runs them in order (nn.Sequential, torchvision's
    IntermediateLayerGetter), and the named pairs of torchvision's ResNet blocks. The folded norm becomes an
    identity. By structure, not by torch.fx: tracing patches nn.Module.__call__ for every thread, and the
    service folds a copy while the model itself serves on another thread. (A fold the structure gets wrong
    would change the answers: models/runtimes.py keeps a candidate only where they match fp32's.)"""
    for module in list(model.modules()):
        for conv_name, norm_name in _conv_norm_pairs(module):
            conv, norm = getattr(module, conv_name), getattr(module, norm_name)
            conv.weight, conv.bias = fuse_conv_bn_weights(
                conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias
            )
            setattr(module, norm_name, nn.Identity())
    return model


def _conv_norm_pairs(module: nn.Module) -> list[tuple[str, str]]:
    if isinstance(module, _IN_ORDER):
        children = list(module.named_children())
        candidates = [(a, b) for (a, _), (b, _) in itertools.pairwise(children)]
    else:
        candidates = list(_NAMED_PAIRS.get(type(module), ()))
    return [(c, n) for c, n in candidates if _foldable(getattr(module, c), getattr(module, n))]


def _foldable(conv: nn.Module, norm: nn.Module) -> bool:
    if not isinstance(conv, nn.Conv2d) or conv.transposed or not isinstance(norm, _BATCH_NORMS):
        return False
    return norm.running_mean is not None and not norm.training


_IN_ORDER = (nn.Sequential, IntermediateLayerGetter)
_NAMED_PAIRS: dict[type[nn.Module], tuple[tuple[str, str], ...]] = {
    BasicBlock: (("conv1", "bn1"), ("conv2", "bn2")),
    Bottleneck: (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
}


__all__ = [
    "Acceleration",
    "AutocastScope",
    "Precision",
    "autocast_dtype",
    "fold_batch_norms",
    "precisions",
    "prepare_model",
]
