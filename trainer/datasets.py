"""Pick the dataset reader by the folder's layout: COCO (`annotations/*.json`) or VOC (`JPEGImages/` ...)."""

from __future__ import annotations

from pathlib import Path

from trainer.data import CocoDataset, TrainingData
from trainer.voc import VocDataset, is_voc_layout


def open_dataset(data: Path | str, split: str, task: str) -> TrainingData:
    data = Path(data)
    if is_voc_layout(data):
        return VocDataset(data, split, task)
    return CocoDataset(data, split, task)
