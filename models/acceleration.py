"""How a model runs on its device: precision, memory format, batch-norm folding. What a device supports.

`Acceleration` is the what; `prepare_model` applies it to a network; `autocast_dtype` says what the
forward pass autocasts to. Which `Acceleration` wins on a device is measured, not assumed
(models/runtimes.py): bf16 autocast is slower than fp32 on a CPU without native bf16 dot products and
faster on one with them (AVX512-BF16, AMX), by model.
"""

from __future__ import annotations

import copy
import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.fx
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.ops.misc import FrozenBatchNorm2d

from models import onnx_backend

log = logging.getLogger(__name__)

Precision = Literal["fp32", "fp16", "bf16"]
Backend = Literal["torch", "onnxruntime"]
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

    @property
    def name(self) -> str:
        parts = [self.precision] + ["channels_last"] * self.channels_last + ["fold_bn"] * self.fold_bn
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
    """Fold every eval-mode batch norm that directly follows a convolution into it (torch.fx).

    A network whose forward cannot be traced as a whole (torchvision's detectors: data-dependent control
    flow) is folded part by part: each child is tried in turn, so the backbone and FPN fold while the
    RPN and RoI heads stay as they are. A part is replaced only where something was folded."""
    try:
        graph = torch.fx.GraphModule(model, _Tracer().trace(model))
    except Exception:  # noqa: BLE001 (tracing fails in many ways on untraceable code: recurse instead)
        for name, child in model.named_children():
            setattr(model, name, fold_batch_norms(child))
        return model
    return graph if _fold_graph(graph) else model


class _Tracer(torch.fx.Tracer):
    """torch.nn's modules are leaves by default; torchvision's frozen batch norm must be one too."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, FrozenBatchNorm2d) or super().is_leaf_module(m, module_qualified_name)


def _fold_graph(graph: torch.fx.GraphModule) -> int:
    modules = dict(graph.named_modules())
    folded = 0
    for node in list(graph.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], _BATCH_NORMS):
            continue
        source = node.args[0]
        if not isinstance(source, torch.fx.Node) or source.op != "call_module" or len(source.users) > 1:
            continue
        conv, norm = modules[source.target], modules[node.target]
        if not isinstance(conv, nn.Conv2d) or conv.transposed:
            continue
        fused = copy.deepcopy(conv)  # same geometry and padding mode; weights and bias replaced below
        fused.weight, fused.bias = fuse_conv_bn_weights(
            conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias
        )
        _replace_module(graph, str(source.target), fused.eval())
        node.replace_all_uses_with(source)
        graph.graph.erase_node(node)
        folded += 1
    if folded:
        graph.graph.lint()
        graph.delete_all_unused_submodules()
        graph.recompile()
    return folded


def _replace_module(root: nn.Module, target: str, module: nn.Module) -> None:
    *parents, name = target.split(".")
    parent = functools.reduce(getattr, parents, root) if parents else root
    setattr(parent, name, module)


__all__ = ["Acceleration", "Precision", "autocast_dtype", "fold_batch_norms", "precisions", "prepare_model"]
