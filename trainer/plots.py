"""PNG plots next to the run: `loss.png` (each loss term, smoothed) and `val_overlay.png` (predictions)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks, make_grid

from models import Predictor, Query, Result, SemanticMap
from trainer.data import TrainingData
from trainer.voc import voc_colormap

# The papers' names for torchvision's loss keys.
LOSS_LABELS = {
    "loss": "total",
    "loss_classifier": "L_cls",
    "loss_box_reg": "L_box",
    "loss_mask": "L_mask",
    "loss_objectness": "L_rpn_cls (objectness)",
    "loss_rpn_box_reg": "L_rpn_box",
    "loss_seg": "L_seg",
    "loss_aux": "L_aux",
}
OVERLAY_QUERY = Query(score_threshold=0.5, max_detections=30)
COLOURS = voc_colormap()


def smooth(values: Sequence[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average with bias correction (as TensorBoard's smoothing), so early steps count."""
    smoothed, average = [], 0.0
    for i, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        smoothed.append(average / (1 - weight**i))
    return smoothed


def plot_losses(history: Sequence[dict[str, float]], path: Path) -> None:
    """One curve per loss term: raw values faint, smoothed on top."""
    figure = Figure(figsize=(8, 4.5), layout="constrained")  # no pyplot: no GUI backend, no global state
    axes = figure.subplots()
    steps = [row["step"] for row in history]
    terms = [key for key in (history[0] if history else {}) if key.startswith("loss")]
    for key in terms:
        values = [row[key] for row in history]
        (raw,) = axes.plot(steps, values, alpha=0.25, linewidth=1)
        axes.plot(steps, smooth(values), color=raw.get_color(), linewidth=2, label=LOSS_LABELS.get(key, key))
    if history and all(row[key] > 0 for row in history for key in terms):
        axes.set_yscale("log")
    axes.set(xlabel="step", ylabel="loss", title="training loss")
    axes.grid(alpha=0.3)
    if terms:
        axes.legend()
    figure.savefig(path, dpi=100)


def save_val_overlay(predictor: Predictor, dataset: TrainingData, path: Path, count: int = 8, tile: int = 256) -> None:
    """A grid of the first `count` val images with the predicted masks and boxes drawn on them."""
    names = predictor.manifest.category_names()
    tiles = []
    for index in range(min(count, len(dataset))):
        image = dataset.read_image(index)
        (result,) = predictor.predict([image], [OVERLAY_QUERY])
        tiles.append(_fit(draw_result(image, result, names), tile))
    if not tiles:
        return
    grid = make_grid(tiles, nrow=4, padding=4, pad_value=255)
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)


def draw_result(image: Tensor, result: Result, names: dict[int, str]) -> Tensor:
    if isinstance(result, SemanticMap):
        ids = [int(i) for i in result.labels.unique() if i != 0]
        if ids:
            masks = torch.stack([result.labels == i for i in ids])
            image = draw_segmentation_masks(image, masks, alpha=0.5, colors=[COLOURS[i] for i in ids])
        return image
    colours = [COLOURS[int(label) % len(COLOURS)] for label in result.labels]
    if result.masks is not None and len(result.masks):
        image = draw_segmentation_masks(image, result.masks.dense(), alpha=0.5, colors=colours)
    if len(result.boxes):
        rows = zip(result.labels.tolist(), result.scores.tolist(), strict=True)
        labels = [f"{names.get(label, str(label))} {score:.2f}" for label, score in rows]
        image = draw_bounding_boxes(image, result.boxes, labels=labels, colors=colours, width=2)
    return image


def _fit(image: Tensor, size: int) -> Tensor:
    """Scale the longer side to `size` and pad to a square, so images of any size share one grid."""
    scale = size / max(image.shape[-2:])
    height, width = (max(1, round(s * scale)) for s in image.shape[-2:])
    resized = F.interpolate(image[None].float(), size=(height, width), mode="bilinear", antialias=True)[0]
    square = torch.full((3, size, size), 255, dtype=torch.uint8)
    square[:, :height, :width] = resized.round().clamp(0, 255).to(torch.uint8)
    return square
