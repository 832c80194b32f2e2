"""Segmentation datasets in the Pascal VOC layout: read, trained on and evaluated like COCO ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models import load_predictor, read_manifest
from trainer.cli import main
from trainer.datasets import open_dataset
from trainer.voc import VOC_NAMES, VocDataset, voc_colormap

IGNORE = 255


def _write_voc(root: Path, train: int = 6, val: int = 2, labels: list[str] | None = None) -> Path:
    """Bars (class 1) and blocks (class 2) on noise, with VOC's 255 border round each object."""
    rng = np.random.default_rng(0)
    palette = [value for colour in voc_colormap() for value in colour]
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    names = {"train": [f"2007_{i:06d}" for i in range(train)], "val": [f"2008_{i:06d}" for i in range(val)]}
    for name in names["train"] + names["val"]:
        height, width = rng.integers(48, 96, size=2)
        pixels = rng.integers(0, 60, size=(height, width, 3), dtype=np.uint8)
        classes = np.zeros((height, width), dtype=np.uint8)
        for label, colour in ((1, (230, 40, 40)), (2, (40, 40, 230))):
            y, x = rng.integers(0, height // 2), rng.integers(0, width // 2)
            classes[y : y + height // 3 + 2, x : x + width // 3 + 2] = IGNORE
            classes[y + 1 : y + height // 3 + 1, x + 1 : x + width // 3 + 1] = label
            pixels[classes == label] = colour
        Image.fromarray(pixels).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
        png = Image.fromarray(classes)
        png.putpalette(palette)  # makes it a palette ("P") PNG, as VOC ships them
        png.save(root / "SegmentationClass" / f"{name}.png")
    for split, split_names in names.items():
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(split_names) + "\n")
    if labels is not None:
        (root / "labels.txt").write_text("\n".join(labels) + "\n")
    return root


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_voc(tmp_path_factory.mktemp("voc"), labels=["background", "bar", "block"])


def test_voc_layout_is_recognised_and_reads_class_indices(voc: Path) -> None:
    dataset = open_dataset(voc, "train", "segment")
    assert isinstance(dataset, VocDataset)
    assert len(dataset) == 6
    assert [(c.id, c.name) for c in dataset.categories] == [(1, "bar"), (2, "block")]
    image, target = dataset[0]
    assert image.dtype == torch.uint8
    assert image.shape[0] == 3
    # Palette indices, not palette colours: exactly background, the two classes and the ignored border.
    assert set(target["mask"].unique().tolist()) == {0, 1, 2, IGNORE}
    assert target["mask"].shape == image.shape[-2:]


def test_train_and_eval_on_a_voc_dataset(voc: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--task", "segment", "--data", str(voc), "--out", str(tmp_path), "--preset", "smoke",
            "--steps", "3", "--batch-size", "2", "--run-dir", str(tmp_path / "run"), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    manifest = read_manifest(tmp_path, "segment")
    assert manifest.num_classes == 3
    assert manifest.category_names() == {1: "bar", 2: "block"}
    assert manifest.metrics["val"]["images"] == 2
    assert set(manifest.metrics["val"]["iou"]) <= {"background", "bar", "block"}

    assert main(["eval", "--task", "segment", "--data", str(voc), "--model", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 2
    assert 0.0 <= report["mIoU"] <= 1.0
    assert load_predictor(tmp_path, "segment").manifest.categories == manifest.categories


def test_voc_names_by_default_and_clear_errors(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _write_voc(tmp_path / "voc", train=1, val=1)
    dataset = VocDataset(root, "train", "segment")
    assert [c.name for c in dataset.categories] == VOC_NAMES[1:]
    assert len(dataset.categories) == 20

    argv = ["train", "--task", "detect", "--data", str(root), "--out", str(tmp_path), "--no-progress"]
    assert main(argv) == 2
    assert "has class maps for `segment` only" in caplog.text

    (root / "labels.txt").write_text("background\nbar\n")  # class 2 is now out of range
    with pytest.raises(ValueError, match="has class 2; the dataset has 1"):
        VocDataset(root, "train", "segment").semantic_truth(0)
    with pytest.raises(FileNotFoundError, match="no test split"):
        VocDataset(root, "test", "segment")
