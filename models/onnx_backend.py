"""ONNX Runtime as an optional CPU backend for the convolutional part of a model.

The FCN runs whole in ONNX Runtime; of the R-CNNs, the backbone and FPN do (torchvision's RPN and RoI
heads have data-dependent control flow and stay in torch, where the post-processing is). The part is
exported once, with the batch, height and width left dynamic, so every input size runs in the one
session; its outputs come back as the same tensors (or dict of tensors) the torch module returns.

Optional: `onnxruntime` and `onnx` (`pip install densepred[onnx]`). Without them `available()` is False
and the runtime selection simply has no such candidate. Whether it is used is decided like every other
runtime (models/runtimes.py): it must answer as fp32 does and be measurably faster on this machine.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import io
import threading
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

# The example input the part is exported with (dynamic axes make the size irrelevant but for tracing).
_EXAMPLE = (1, 3, 256, 320)


@functools.cache
def available() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))


def network_of(model: nn.Module) -> tuple[nn.Module, str | None]:
    """The part ONNX Runtime runs, and its attribute name on `model` (None: the model itself). An R-CNN
    (torchvision's GeneralizedRCNN: a backbone and RoI heads) exports its backbone and FPN only."""
    backbone = getattr(model, "backbone", None)
    if hasattr(model, "roi_heads") and isinstance(backbone, nn.Module):
        return backbone, "backbone"
    return model, None


class OrtModule(nn.Module):
    """A torch module's forward pass run by an ONNX Runtime session on the CPU (inference only).

    Keeps the original module (`torch_module`), so a predictor switched to another runtime gets it back."""

    def __init__(self, module: nn.Module, threads: int | None = None) -> None:
        super().__init__()
        self.torch_module = module.eval()
        example = torch.zeros(_EXAMPLE)
        with torch.inference_mode():
            reference = module(example)
        self._keys = list(reference) if isinstance(reference, Mapping) else None
        outputs = [f"output_{i}" for i in range(len(self._keys or [None]))]  # ONNX names: not "0", "pool"...
        buffer = io.BytesIO()
        dynamic: dict[str, Any] = {"input": {0: "batch", 2: "height", 3: "width"}}
        dynamic |= {name: {0: "batch", 2: f"{name}_height", 3: f"{name}_width"} for name in outputs}
        export: Any = torch.onnx.export  # (its stubs do not take a file object, which it writes to)
        with warnings.catch_warnings():
            # The TorchScript-based exporter is deprecated; the dynamo one needs onnxscript, not installed.
            warnings.simplefilter("ignore", DeprecationWarning)
            export(module, (example,), buffer, input_names=["input"], output_names=outputs, dynamic_axes=dynamic,
                   opset_version=17, dynamo=False)  # fmt: skip
        self._onnx, self._threads = buffer.getvalue(), threads
        self._session: Any = None
        self._session_lock = threading.Lock()

    def session(self) -> Any:
        """The session, made on first use by the thread that runs it: its intra-op threads are that thread's
        OpenMP team size (service/threads.py), wherever the export happened (the runtime measurement
        prepares candidates on a thread of one)."""
        with self._session_lock:
            if self._session is None:
                import onnxruntime as ort

                options = ort.SessionOptions()
                options.intra_op_num_threads = self._threads or torch.get_num_threads()
                options.inter_op_num_threads = 1
                # No spinning once a run ends: torch's own OpenMP team computes next (the R-CNN heads, the
                # post-processing), and ORT threads spinning on the same cores would slow it several-fold.
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
                self._session = ort.InferenceSession(self._onnx, options, providers=["CPUExecutionProvider"])
            return self._session

    def forward(self, x: Tensor) -> Tensor | dict[str, Tensor]:
        array = x.detach().float().contiguous().cpu().numpy()
        got = [torch.from_numpy(out) for out in self.session().run(None, {"input": array})]
        if self._keys is None:
            return got[0]
        return dict(zip(self._keys, got, strict=True))

    def __deepcopy__(self, memo: dict[int, Any]) -> OrtModule:
        # A session is not copied: the copy exports its own copy of the torch module.
        return OrtModule(copy.deepcopy(self.torch_module, memo))


def attach(model: nn.Module) -> nn.Module:
    """`model` with its convolutional part run by ONNX Runtime (the FCN: the whole model)."""
    part, name = network_of(model)
    if isinstance(part, OrtModule):
        return model
    wrapped = OrtModule(part)
    if name is None:
        return wrapped
    setattr(model, name, wrapped)
    return model


def detach(model: nn.Module) -> nn.Module:
    """`model` with any ONNX Runtime part replaced by the torch module it was made from."""
    if isinstance(model, OrtModule):
        return model.torch_module
    for name, child in model.named_children():
        if isinstance(child, OrtModule):
            setattr(model, name, child.torch_module)
    return model
