"""Label maps at any size: banded bilinear upsampling equals one whole-frame interpolate."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models import labelmaps
from models.labelmaps import label_map


def _whole_frame(scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    upsampled = F.interpolate(scores[None], size=size, mode="bilinear", align_corners=False)[0]
    return upsampled.max(0).indices


@pytest.mark.parametrize(
    ("classes", "source", "size"),
    [(4, (240, 320), (480, 640)), (4, (100, 37), (333, 71)), (21, (64, 64), (700, 900)), (3, (10, 10), (5, 7)),
     (4, (1, 1), (9, 4)), (2, (7, 300), (7, 300))],
)  # fmt: skip
def test_bands_give_the_whole_frame_interpolation(
    classes: int, source: tuple[int, int], size: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(labelmaps, "BAND_PIXELS", 997)  # many bands, of a size that divides nothing
    scores = torch.randn(classes, *source, generator=torch.Generator().manual_seed(sum(size)))
    labels = label_map(scores, size, torch.int64)
    assert labels.shape == size
    assert torch.equal(labels, _whole_frame(scores, size))


def test_labels_take_the_asked_dtype_and_ties_go_to_the_first_class() -> None:
    scores = torch.zeros(3, 4, 4)
    scores[2, :2] = 1.0
    labels = label_map(scores, (8, 8))
    assert labels.dtype == torch.uint8
    assert set(labels.unique().tolist()) <= {0, 2}
    assert bool((labels[6:] == 0).all())  # all three tie there: the first wins
