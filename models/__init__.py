"""Architectures, predictors and the model-store format shared by the service and the trainer.

Pure torch/torchvision: nothing here imports fastapi, pydantic, `service` or `trainer`.
"""

from models.history import save_entry
from models.masks import InstanceMasks, Region, run_lengths
from models.predictors import (
    Acceleration,
    Detections,
    ImageRefusedError,
    Predictor,
    Query,
    Result,
    SemanticMap,
    load_predictor,
    make_predictor,
)
from models.registry import DEFAULT_ARCH, TASKS, Task, arch_names, build_model, get_arch
from models.store import Category, Manifest, StoreError, load_entry, read_manifest

__all__ = [
    "DEFAULT_ARCH",
    "Acceleration",
    "InstanceMasks",
    "Region",
    "run_lengths",
    "TASKS",
    "Category",
    "Detections",
    "ImageRefusedError",
    "Manifest",
    "Predictor",
    "Query",
    "Result",
    "SemanticMap",
    "StoreError",
    "Task",
    "arch_names",
    "build_model",
    "get_arch",
    "load_entry",
    "load_predictor",
    "make_predictor",
    "read_manifest",
    "save_entry",
]
