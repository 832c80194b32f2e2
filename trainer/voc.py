"""Segmentation datasets in the Pascal VOC layout, as the FCN paper trains on.

- `DIR/JPEGImages/<name>.jpg`
- `DIR/SegmentationClass/<name>.png`: palette PNG of class indices, 255 = ignore (VOC's object borders)
- `DIR/ImageSets/Segmentation/<split>.txt`: one `<name>` per line
- `DIR/labels.txt` (optional): class names, background first; default: VOC's 20 classes
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.models.segmentation import FCN_ResNet50_Weights

from models import Category
from trainer.data import IGNORE, Target, TrainingData

# torchvision's VOC-label weights carry the 21 names (background first); reading them downloads nothing.
VOC_NAMES: list[str] = list(FCN_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1.meta["categories"])


def is_voc_layout(data: Path) -> bool:
    return (data / "JPEGImages").is_dir() and (data / "SegmentationClass").is_dir()


def voc_colormap(size: int = 256) -> list[tuple[int, int, int]]:
    """The VOC devkit's palette: class i's colour spreads i's bits over the high bits of R, G and B."""
    colours = []
    for index in range(size):
        r = g = b = 0
        value = index
        for shift in range(7, -1, -1):
            r |= (value & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        colours.append((r, g, b))
    return colours


def read_categories(data: Path) -> list[Category]:
    labels = data / "labels.txt"
    names = VOC_NAMES
    if labels.is_file():
        names = [line.strip() for line in labels.read_text().splitlines() if line.strip()]
    if len(names) < 2:
        raise ValueError(f"{labels} must list the background and at least one class, one name per line")
    return [Category(i, name) for i, name in enumerate(names) if i > 0]


class VocDataset(TrainingData):
    """Images as uint8 CHW tensors with `{"mask": class map}` targets (training augments them: augment.py)."""

    def __init__(self, data: Path | str, split: str, task: str) -> None:
        self.root = Path(data)
        if task != "segment":
            raise ValueError(f"{self.root} is a VOC segmentation dataset: it has class maps for `segment` only, "
                             f"{task} needs COCO annotations")  # fmt: skip
        names = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not names.is_file():
            raise FileNotFoundError(f"no {split} split at {names}")
        self.names = [line.strip() for line in names.read_text().splitlines() if line.strip()]
        self.task = task
        self.categories = read_categories(self.root)
        self.num_classes = len(self.categories) + 1

    def __len__(self) -> int:
        return len(self.names)

    def read_image(self, index: int) -> Tensor:
        with Image.open(self.root / "JPEGImages" / f"{self.names[index]}.jpg") as image:
            pixels = np.array(image.convert("RGB"))
        return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()

    def semantic_truth(self, index: int) -> Tensor:
        path = self.root / "SegmentationClass" / f"{self.names[index]}.png"
        with Image.open(path) as png:
            if png.mode not in ("P", "L"):  # an RGB rendering of the palette holds colours, not class ids
                raise ValueError(f"{path} is {png.mode}; class maps must be palette (P) or greyscale (L) PNGs")
            labels = torch.from_numpy(np.array(png)).long()
        unknown = (labels >= self.num_classes) & (labels != IGNORE)
        if unknown.any():
            raise ValueError(f"{path} has class {int(labels[unknown][0])}; the dataset has {self.num_classes - 1}")
        return labels

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        image = self.read_image(index)
        labels = self.semantic_truth(index)
        if labels.shape != image.shape[-2:]:
            raise ValueError(f"{self.names[index]}: class map {tuple(labels.shape)} != image {tuple(image.shape[-2:])}")
        return image, {"mask": labels, "image_id": torch.tensor(index)}
