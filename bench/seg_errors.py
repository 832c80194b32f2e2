"""Where a stored FCN goes wrong on a COCO-layout set: the confusion matrix, and each shape's visible pixels
labelled right (or as background) by the shape's size, contrast, visible fraction and position (outline
band or interior), so that "misses whole shapes" and "blurs their outlines" can be told apart.

    python bench/seg_errors.py --model STORE --data DIR [--split val] [--out errors.json]

Shapes count by the pixels the semantic truth gives their category inside their own mask (what is left
after occlusion); fields an annotation lacks (our renderer writes no `visible_fraction`) are skipped.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from models import Predictor, SemanticMap, load_predictor
from trainer.data import CocoDataset, annotation_mask
from trainer.evaluate import confusion_matrix

OUTLINE_PX = 3  # pixels within this distance of a shape's outline form its outline band


def size_bucket(ann: dict[str, Any], height: int, width: int) -> str:
    relative = (ann["bbox"][2] * ann["bbox"][3]) ** 0.5 / min(height, width)
    low = min(int(relative * 10), 5) / 10
    return f"size {low:.1f}+" if low >= 0.5 else f"size {low:.1f}-{low + 0.1:.1f}"


def contrast_bucket(contrast: float) -> str:
    for limit in (30, 60, 100):
        if contrast < limit:
            return f"contrast <{limit}"
    return "contrast >=100"


def visible_bucket(fraction: float) -> str:
    return "visible <0.4" if fraction < 0.4 else "visible <0.7" if fraction < 0.7 else "visible >=0.7"


def interior(mask: Tensor) -> Tensor:
    """The mask eroded by OUTLINE_PX (a min-pool, done as a max-pool of the complement)."""
    k = 2 * OUTLINE_PX + 1
    return ~(F.max_pool2d((~mask)[None, None].float(), k, 1, OUTLINE_PX)[0, 0] > 0.5)


class Tally:
    """Pixels per group: labelled as the shape's category, as background, in all."""

    def __init__(self) -> None:
        self.counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])

    def add(self, group: str, predicted: Tensor, category: int) -> None:
        row = self.counts[group]
        row[0] += int((predicted == category).sum())
        row[1] += int((predicted == 0).sum())
        row[2] += predicted.numel()

    def report(self) -> dict[str, dict[str, float]]:
        return {
            group: {"pixels": n, "right": round(right / n, 3), "as_background": round(bg / n, 3)}
            for group, (right, bg, n) in sorted(self.counts.items())
            if n
        }


def analyse(label: Callable[[int], Tensor], dataset: CocoDataset, classes: int) -> dict[str, Any]:
    """`label(index)` is the label map predicted for the dataset's image `index`."""
    confusion = torch.zeros(classes, classes, dtype=torch.int64)
    tally = Tally()
    for index, image_id in enumerate(dataset.image_ids):
        labels, truth = label(index), dataset.semantic_truth(index)
        confusion += confusion_matrix(truth, labels, classes)
        info = dataset.coco.imgs[image_id]
        height, width = info["height"], info["width"]
        for ann in dataset.coco.imgToAnns[image_id]:
            category = ann["category_id"]
            visible = torch.from_numpy(annotation_mask(ann, height, width).astype(bool)) & (truth == category)
            if not visible.any():
                continue
            predicted = labels[visible].long()
            tally.add(size_bucket(ann, height, width), predicted, category)
            tally.add(f"background {info.get('background', '?')}", predicted, category)
            if "contrast" in ann:
                tally.add(contrast_bucket(ann["contrast"]), predicted, category)
            if "visible_fraction" in ann:
                tally.add(visible_bucket(ann["visible_fraction"]), predicted, category)
            inner = interior(visible)
            tally.add("interior", labels[inner].long(), category)
            tally.add("outline band", labels[visible & ~inner].long(), category)
    rows = (confusion.double() / confusion.sum(1, keepdim=True).clamp(min=1)).tolist()
    return {"confusion_row_normalised": [[round(v, 3) for v in row] for row in rows], "pixels": tally.report()}


def labeller(predictor: Predictor, dataset: CocoDataset) -> Callable[[int], Tensor]:
    def label(index: int) -> Tensor:
        result = predictor.predict([dataset.read_image(index)])[0]
        assert isinstance(result, SemanticMap)
        return result.labels

    return label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="model store root")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    dataset = CocoDataset(args.data, args.split, "segment")
    predictor = load_predictor(args.model, "segment")
    report = analyse(labeller(predictor, dataset), dataset, predictor.manifest.num_classes)
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
