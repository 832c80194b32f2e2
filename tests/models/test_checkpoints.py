from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.models import detection, segmentation

from models import Category, Detections, Query, StoreError, load_predictor, read_manifest
from models.checkpoints import import_torchvision_checkpoint
from models.registry import SCORE_FLOOR


def test_imported_fasterrcnn_matches_torchvision_exactly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2).eval()
    torch.save(reference.state_dict(), tmp_path / "frcnn.pth")
    import_torchvision_checkpoint("detect", "fasterrcnn_resnet50_fpn", tmp_path / "frcnn.pth", tmp_path / "store",
                                  [Category(1, "thing")])  # fmt: skip
    predictor = load_predictor(tmp_path / "store", "detect")

    image = torch.randint(0, 256, (3, 180, 260), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = reference([image.float() / 255])[0]
    (result,) = predictor.predict([image], [Query(score_threshold=SCORE_FLOOR)])  # torchvision's own floor
    assert isinstance(result, Detections)
    assert len(expected["boxes"]) > 0
    assert torch.equal(result.boxes, expected["boxes"])
    assert torch.equal(result.scores, expected["scores"])
    assert torch.equal(result.labels, expected["labels"])
    assert read_manifest(tmp_path / "store", "detect").categories == [Category(1, "thing")]


def test_coco_sized_checkpoints_get_coco_names(tmp_path: Path) -> None:
    model = detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    torch.save(model.state_dict(), tmp_path / "mrcnn.pth")
    import_torchvision_checkpoint("instances", "maskrcnn_resnet50_fpn", tmp_path / "mrcnn.pth", tmp_path)
    names = read_manifest(tmp_path, "instances").category_names()
    assert names[1] == "person"
    assert names[3] == "car"
    assert names[90] == "toothbrush"
    assert len(names) == 80  # COCO's unused ids ("N/A") are not categories


@pytest.mark.parametrize("aux_loss", [True, False])
def test_fcn_checkpoints_with_or_without_aux_head_import(tmp_path: Path, aux_loss: bool) -> None:
    model = segmentation.fcn_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=aux_loss)
    torch.save(model.state_dict(), tmp_path / "fcn.pth")
    import_torchvision_checkpoint("segment", "fcn_resnet50", tmp_path / "fcn.pth", tmp_path)
    manifest = read_manifest(tmp_path, "segment")
    assert manifest.options["aux_loss"] is aux_loss
    assert manifest.category_names()[15] == "person"
    assert load_predictor(tmp_path, "segment").manifest.num_classes == 21


def test_checkpoint_of_the_wrong_architecture_is_refused(tmp_path: Path) -> None:
    model = detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=3)
    torch.save(model.state_dict(), tmp_path / "mobile.pth")
    with pytest.raises(StoreError, match="does not fit"):
        import_torchvision_checkpoint("detect", "fasterrcnn_resnet50_fpn", tmp_path / "mobile.pth", tmp_path)
    assert not (tmp_path / "detect").exists()
