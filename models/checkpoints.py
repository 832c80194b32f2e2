"""Bring a user's torchvision checkpoint into the store, unchanged, after proving it fits the architecture."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import Tensor
from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights
from torchvision.models.segmentation import FCN_ResNet50_Weights

from models.history import DEFAULT_KEEP, save_entry
from models.registry import build_model, get_arch
from models.store import Category, Manifest, StoreError, read_torchvision_checkpoint


def infer_num_classes(task: str, state_dict: dict[str, Tensor]) -> int:
    """The class count is the width of the classifier's output layer, whatever the checkpoint was trained on."""
    key = "classifier.4.weight" if task == "segment" else "roi_heads.box_predictor.cls_score.weight"
    if key not in state_dict:
        raise StoreError(f"checkpoint has no {key!r}; is it a {task} model?")
    return int(state_dict[key].shape[0])


def import_torchvision_checkpoint(
    task: str,
    arch: str,
    weights: Path | str,
    store: Path | str,
    categories: Sequence[Category] | None = None,
    keep: int = DEFAULT_KEEP,
) -> Path:
    """Wrap a `.pth` state dict into `store/<task>/`; categories default to COCO's when the sizes match."""
    spec = get_arch(task, arch)
    state_dict = read_torchvision_checkpoint(weights)
    num_classes = infer_num_classes(task, state_dict)
    options = dict(spec.options)
    if task == "segment" and not any(k.startswith("aux_classifier.") for k in state_dict):
        options["aux_loss"] = False
    model = build_model(task, arch, num_classes, **options)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise StoreError(f"{weights} does not fit {arch}: {exc}") from exc
    cats = list(categories) if categories is not None else _default_categories(task, num_classes)
    manifest = Manifest(
        task=task,
        arch=arch,
        num_classes=num_classes,
        categories=cats,
        input=dict(spec.input),
        options=options,
        trained={"dataset": "imported", "source": str(Path(weights).name)},
    )
    return save_entry(store, manifest, model.state_dict(), keep)


def _default_categories(task: str, num_classes: int) -> list[Category]:
    # torchvision's weight enums carry the label names of their checkpoints (no download needed to read them).
    if task != "segment" and num_classes == 91:
        names = FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
    elif task == "segment" and num_classes == 21:
        names = FCN_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1.meta["categories"]
    else:
        names = ["__background__"] + [f"class_{i}" for i in range(1, num_classes)]
    # Index 0 is background and "N/A" marks ids COCO left unused.
    return [Category(i, name) for i, name in enumerate(names) if i > 0 and name != "N/A"]
