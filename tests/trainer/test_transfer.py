"""Transfer learning: `--init-from` copies what fits, `--init-scope` limits it, `--freeze-stages` holds stages."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor
from torchvision.models import mobilenet_v3_large, segmentation

from models import build_model, load_entry, read_manifest
from tests.conftest import save_random_model
from trainer.cli import main
from trainer.transfer import backbone_stages, freeze_stages, match_weights, warm_start


def _same(a: dict[str, Tensor], b: dict[str, Tensor], prefix: str) -> bool:
    names = [k for k in a if k.startswith(prefix)]
    assert names, f"no tensors under {prefix}"
    return all(torch.equal(a[k], b[k]) for k in names)


@pytest.fixture(scope="module")
def detect_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("detect_store")
    save_random_model(store, "detect", seed=7)  # 4 classes
    return store


@pytest.mark.parametrize("num_classes", [4, 3])
def test_detector_into_instances_copies_backbone_rpn_and_box_head(detect_store: Path, num_classes: int) -> None:
    source = load_entry(detect_store, "detect")[1]
    model = build_model("instances", "maskrcnn_small", num_classes)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    warm_start(model, detect_store / "detect", "instances")
    tuned = model.state_dict()
    for prefix in ("backbone.", "rpn.", "roi_heads.box_head."):
        assert _same(tuned, source, prefix), prefix
    assert _same(tuned, fresh, "roi_heads.mask_")  # the detector has no mask head
    # A predictor of another class count cannot be copied: it starts fresh.
    source_of_predictor = source if num_classes == 4 else fresh
    assert _same(tuned, source_of_predictor, "roi_heads.box_predictor.")


def test_backbone_scope_leaves_the_heads_fresh(detect_store: Path) -> None:
    source = load_entry(detect_store, "detect")[1]
    model = build_model("detect", "fasterrcnn_small", 4)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    left_fresh = warm_start(model, detect_store, "detect", scope="backbone")  # a store root works too
    tuned = model.state_dict()
    assert _same(tuned, source, "backbone.")  # body and FPN
    assert _same(tuned, fresh, "rpn.")
    assert _same(tuned, fresh, "roi_heads.")
    assert all(not name.startswith("backbone.") for name in left_fresh)


def test_a_classification_network_seeds_a_detector_backbone(tmp_path: Path) -> None:
    torch.manual_seed(0)
    classifier = mobilenet_v3_large(weights=None).state_dict()
    torch.save(classifier, tmp_path / "mobilenet.pth")
    model = build_model("detect", "fasterrcnn_mobilenet_v3_large_320_fpn", 5)
    warm_start(model, tmp_path / "mobilenet.pth", "detect")
    tuned = model.state_dict()
    body = {k.removeprefix("backbone.body."): v for k, v in tuned.items() if k.startswith("backbone.body.")}
    assert body
    assert all(torch.equal(v, classifier[f"features.{k}"]) for k, v in body.items())


def test_backbone_renames_between_rcnn_fcn_and_classifier_names() -> None:
    w = torch.ones(2, 3)
    own = {"backbone.body.conv1.weight": torch.zeros(2, 3), "backbone.layer1.weight": torch.zeros(2, 3),
           "head.weight": torch.zeros(4)}  # fmt: skip
    assert match_weights({"conv1.weight": w}, own).keys() == {"backbone.body.conv1.weight"}
    assert match_weights({"backbone.body.layer1.weight": w}, own).keys() == {"backbone.layer1.weight"}
    assert match_weights({"head.weight": torch.ones(5)}, own) == {}  # wrong shape: left fresh


def test_resnet_stages_are_its_stem_and_layers() -> None:
    model = segmentation.fcn_resnet50(weights=None, weights_backbone=None, num_classes=3)
    stages = backbone_stages(model)
    assert len(stages) == 5
    assert stages[0][0] is model.backbone.conv1
    assert stages[4] is model.backbone.layer4
    frozen = freeze_stages(model, 2)
    assert all(not p.requires_grad for stage in frozen for p in stage.parameters())
    assert all(p.requires_grad for p in model.backbone.layer2.parameters())
    with pytest.raises(ValueError, match="has 5 stages"):
        freeze_stages(model, 6)


def test_frozen_stages_do_not_move_while_the_rest_trains(tiny_shapes: Path, detect_store: Path, tmp_path: Path) -> None:
    argv = ["train", "--task", "instances", "--data", str(tiny_shapes), "--out", str(tmp_path), "--preset", "smoke",
            "--steps", "2", "--batch-size", "2", "--init-from", str(detect_store / "detect"), "--init-scope",
            "backbone", "--freeze-stages", "2", "--run-dir", str(tmp_path / "run"), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    source = load_entry(detect_store, "detect")[1]
    tuned = load_entry(tmp_path, "instances")[1]
    # Weights and BatchNorm statistics of the frozen stem and layer2 are the detector's, bit for bit.
    assert _same(tuned, source, "backbone.body.stem.")
    assert _same(tuned, source, "backbone.body.layer2.")
    assert not _same(tuned, source, "backbone.body.layer3.")
    trained = read_manifest(tmp_path, "instances").trained
    assert (trained["init_scope"], trained["freeze_stages"]) == ("backbone", 2)
