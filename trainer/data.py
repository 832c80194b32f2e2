"""COCO-format datasets as training tensors, for all three tasks.

Detection targets follow torchvision's R-CNN contract (boxes XYXY, labels, masks); the semantic target
for segmentation is painted from the instance masks, background 0, crowd regions ignored (255).
"""

from __future__ import annotations

import contextlib
import io
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import Dataset

from models import Category

IGNORE = 255
Target = dict[str, Tensor]


def load_coco(data: Path, split: str) -> COCO:
    path = data / "annotations" / f"{split}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no {split} annotations at {path}")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress we do not want
        return COCO(str(path))


def categories_of(coco: COCO) -> list[Category]:
    return [Category(int(c["id"]), str(c["name"])) for c in sorted(coco.dataset["categories"], key=lambda c: c["id"])]


def annotation_mask(ann: dict[str, Any], height: int, width: int) -> np.ndarray:
    """Decode polygons, uncompressed or compressed RLE into an HxW uint8 mask."""
    segm = ann["segmentation"]
    if isinstance(segm, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    elif isinstance(segm["counts"], list):
        rle = mask_utils.frPyObjects(segm, height, width)
    else:
        rle = segm
    return mask_utils.decode(rle)


class TrainingData(Dataset[tuple[Tensor, Target]], ABC):
    """What training, evaluation and the plots need from a dataset, whatever its layout (COCO or VOC)."""

    task: str
    categories: list[Category]

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def read_image(self, index: int) -> Tensor:
        """The image as a uint8 CHW tensor, as the service would receive it."""

    @abstractmethod
    def semantic_truth(self, index: int) -> Tensor:
        """The class map segmentation is scored against: int64 HxW, 0 background, 255 ignored."""


class CocoDataset(TrainingData):
    """Images as uint8 CHW tensors with task targets (training augments them: trainer/augment.py)."""

    def __init__(self, data: Path | str, split: str, task: str) -> None:
        self.root = Path(data)
        self.coco = load_coco(self.root, split)
        self.task = task
        self.image_ids = sorted(self.coco.getImgIds())
        self.categories = categories_of(self.coco)

    def __len__(self) -> int:
        return len(self.image_ids)

    def read_image(self, index: int) -> Tensor:
        info = self.coco.imgs[self.image_ids[index]]
        with Image.open(self.root / "images" / info["file_name"]) as image:
            pixels = np.array(image.convert("RGB"))  # a writable copy for torch.from_numpy
        return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()

    def semantic_truth(self, index: int) -> Tensor:
        # The class map it trains on: painted from the instance masks.
        info = self.coco.imgs[self.image_ids[index]]
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=self.image_ids[index]))
        return semantic_target(anns, int(info["height"]), int(info["width"]))["mask"]

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        image = self.read_image(index)
        image_id = self.image_ids[index]
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id))
        height, width = image.shape[-2:]
        target = semantic_target(anns, height, width) if self.task == "segment" else rcnn_target(anns, height, width)
        target["image_id"] = torch.tensor(image_id)
        return image, target


def rcnn_target(anns: list[dict[str, Any]], height: int, width: int) -> Target:
    anns = [a for a in anns if not a.get("iscrowd", 0) and a["bbox"][2] > 0 and a["bbox"][3] > 0]
    boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    masks = np.stack([annotation_mask(a, height, width) for a in anns]) if anns else np.zeros((0, height, width))
    return {
        "boxes": boxes,
        "labels": torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
        "masks": torch.from_numpy(masks.astype(np.uint8)),
    }


def semantic_target(anns: list[dict[str, Any]], height: int, width: int) -> Target:
    # Larger objects first so smaller ones on top stay visible where COCO masks overlap.
    label_map = np.zeros((height, width), dtype=np.uint8)
    for ann in sorted(anns, key=lambda a: -a["area"]):
        mask = annotation_mask(ann, height, width).astype(bool)
        label_map[mask] = IGNORE if ann.get("iscrowd", 0) else ann["category_id"]
    return {"mask": torch.from_numpy(label_map).long()}


def collate(batch: list[tuple[Tensor, Target]]) -> tuple[list[Tensor], list[Target]]:
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


def segmentation_batch(
    images: list[Tensor], targets: list[Target], mean: Tensor, std: Tensor, divisor: int = 32
) -> tuple[Tensor, Tensor]:
    """Normalise each image (float in [0, 1], or uint8) and pad the batch to a common size, a multiple of
    `divisor`, with labels IGNORE on the padding. (Scaling and cropping happen per sample before: augment.py.)"""
    xs = [((image.float() / 255 if image.dtype == torch.uint8 else image) - mean) / std for image in images]
    height = -(-max(x.shape[-2] for x in xs) // divisor) * divisor
    width = -(-max(x.shape[-1] for x in xs) // divisor) * divisor
    batch = xs[0].new_zeros((len(xs), 3, height, width))
    labels = torch.full((len(xs), height, width), IGNORE, dtype=torch.long)
    for i, (x, target) in enumerate(zip(xs, targets, strict=True)):
        batch[i, :, : x.shape[-2], : x.shape[-1]] = x
        labels[i, : x.shape[-2], : x.shape[-1]] = target["mask"]
    return batch, labels
