"""Transfer learning: start from another model's weights (`--init-from`) and freeze early backbone stages.

Sources: a store entry (any task), or a torchvision `.pth`, either a whole detection/segmentation model
or just a classification network (ImageNet ResNet, MobileNet) to use as the backbone.
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import Tensor, nn

from models.store import StoreError, load_entry, read_torchvision_checkpoint

log = logging.getLogger(__name__)

INIT_SCOPES = ("all", "backbone")

# Where the same backbone tensors live under other names, tried after exact names. The shape check in
# `match_weights` keeps each rename honest.
RENAMES = (
    ("backbone.body.", "backbone."),  # R-CNN backbone (inside the FPN wrapper) → FCN backbone
    ("backbone.", "backbone.body."),  # FCN backbone → R-CNN backbone
    ("", "backbone.body."),  # classification ResNet → R-CNN backbone
    ("", "backbone."),  # classification ResNet → FCN backbone
    ("features.", "backbone.body."),  # classification MobileNet → R-CNN backbone
)


def warm_start(model: nn.Module, source: Path, task: str, scope: str = "all") -> list[str]:
    """Copy every tensor of `source` that fits; returns the names of the model's tensors left fresh.

    Heads for another class count do not fit and so start fresh. `scope="backbone"` copies `backbone.*`
    only (for R-CNNs that includes the FPN).
    """
    if scope not in INIT_SCOPES:
        raise ValueError(f"init scope must be one of {', '.join(INIT_SCOPES)}, not {scope!r}")
    own = model.state_dict()
    matched = match_weights(read_init_weights(source, task), own)
    if scope == "backbone":
        matched = {k: v for k, v in matched.items() if k.startswith("backbone.")}
    if not matched:
        raise ValueError(f"nothing in {source} matches the model's {scope} parameters")
    model.load_state_dict(matched, strict=False)
    fresh = [k for k in own if k not in matched]
    log.info("init-from %s (%s): %d of %d tensors loaded; fresh: %s", source, scope, len(matched), len(own),
             _summarise(fresh))  # fmt: skip
    return fresh


def match_weights(weights: dict[str, Tensor], own: dict[str, Tensor]) -> dict[str, Tensor]:
    """Source tensors under the model's names: exact names first, then the backbone renames."""
    matched: dict[str, Tensor] = {}
    for old, new in (("", ""), *RENAMES):
        for key, value in weights.items():
            if not key.startswith(old):
                continue
            name = new + key.removeprefix(old)
            if name not in matched and name in own and own[name].shape == value.shape:
                matched[name] = value
    return matched


def read_init_weights(source: Path, task: str) -> dict[str, Tensor]:
    if source.is_file():
        return read_torchvision_checkpoint(source)
    # A store entry folder, or a store root holding one of any task (detect → instances transfer, say).
    for folder in (source, *(source / t for t in (task, "detect", "instances", "segment"))):
        if (folder / "manifest.json").is_file():
            return load_entry(folder.parent, folder.name)[1]
    raise StoreError(f"{source} is neither a checkpoint file nor a store entry")


def _summarise(names: list[str]) -> str:
    """`roi_heads.box_predictor.*, ...`: module prefixes rather than hundreds of tensor names."""
    prefixes = dict.fromkeys(".".join(name.split(".")[:2]) + ".*" for name in names)
    return ", ".join(prefixes) or "none"


def backbone_stages(model: nn.Module) -> list[nn.Module]:
    """The backbone's stages in input order: ResNet's stem (conv1 + bn1) and layer1..4, else its children."""
    backbone = model.get_submodule("backbone")
    body = backbone.get_submodule("body") if hasattr(backbone, "body") else backbone  # R-CNNs wrap it in an FPN
    if hasattr(body, "conv1") and hasattr(body, "layer1"):  # torchvision ResNet: the names of its paper
        stem = nn.ModuleList([body.get_submodule("conv1"), body.get_submodule("bn1")])
        return [stem, *(body.get_submodule(f"layer{i}") for i in range(1, 5))]
    return [child for child in body.children() if any(True for _ in child.parameters())]


def freeze_stages(model: nn.Module, count: int) -> list[nn.Module]:
    """Stop training the first `count` backbone stages (weights and BatchNorm statistics alike).

    Returns the frozen modules: `train_mode` keeps them in eval mode so their BatchNorm statistics hold.
    """
    if count <= 0:
        return []
    stages = backbone_stages(model)
    if count > len(stages):
        raise ValueError(f"--freeze-stages {count}: this backbone has {len(stages)} stages")
    frozen = stages[:count]
    for stage in frozen:
        stage.requires_grad_(False)
    return frozen


# torchvision builds these with FrozenBatchNorm2d in the backbone once it loads weights (weights or
# weights_backbone given); its FCNs and the *_v2 R-CNNs keep trainable BatchNorm.
FROZEN_BN_ARCHS = frozenset({"fasterrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn", "fasterrcnn_mobilenet_v3_large_fpn",
                             "fasterrcnn_mobilenet_v3_large_320_fpn"})  # fmt: skip
FREEZE_BN = ("auto", "on", "off")


def freeze_batch_norm(model: nn.Module, arch: str, init_from: Path | None, mode: str = "auto") -> list[nn.Module]:
    """Freeze the backbone's BatchNorm layers (statistics and affine parameters), as FrozenBatchNorm2d
    does: `on`, `off`, or `auto`, which follows torchvision (on for FROZEN_BN_ARCHS started from weights).

    The layers stay BatchNorm2d (in eval mode, without gradients), so the state dict, and the store entry
    the service loads, are the same as an unfrozen model's. Returns them for `train_mode`.
    """
    if mode not in FREEZE_BN:
        raise ValueError(f"freeze-bn must be one of {', '.join(FREEZE_BN)}, not {mode!r}")
    if mode == "off" or (mode == "auto" and (init_from is None or arch not in FROZEN_BN_ARCHS)):
        return []
    backbone = model.get_submodule("backbone")
    body = backbone.get_submodule("body") if hasattr(backbone, "body") else backbone
    norms: list[nn.Module] = [m for m in body.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.requires_grad_(False)
    log.info("froze %d BatchNorm layers of the backbone (freeze-bn %s)", len(norms), mode)
    return norms


def train_mode(model: nn.Module, frozen: list[nn.Module]) -> None:
    model.train()
    for module in frozen:
        module.eval()
