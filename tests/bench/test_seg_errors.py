"""bench/seg_errors.py: the FCN error breakdown, checked against an oracle and for consistency."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import cross_render as cr  # noqa: E402
import seg_errors  # noqa: E402

from trainer.data import IGNORE, CocoDataset  # noqa: E402


@pytest.fixture(scope="module")
def cross_set(tmp_path_factory: pytest.TempPathFactory) -> CocoDataset:
    out = tmp_path_factory.mktemp("cross")
    cr.render_dataset(out, 4, cr.DEFAULT_SEED)
    return CocoDataset(out, "val", "segment")


def test_interior_is_the_mask_eroded_by_the_outline_band() -> None:
    mask = torch.zeros(15, 15, dtype=torch.bool)
    mask[3:12, 3:12] = True
    expected = torch.zeros_like(mask)
    expected[6:9, 6:9] = True
    assert torch.equal(seg_errors.interior(mask), expected)


def test_the_truth_itself_is_right_everywhere(cross_set: CocoDataset) -> None:
    def truth(index: int) -> torch.Tensor:
        labels = cross_set.semantic_truth(index).clone()
        labels[labels == IGNORE] = 0
        return labels

    report = seg_errors.analyse(truth, cross_set, 4)
    assert report["confusion_row_normalised"] == [[1.0 if i == j else 0.0 for j in range(4)] for i in range(4)]
    assert {"interior", "outline band", "contrast >=100"} <= set(report["pixels"])
    assert all(row["right"] == 1.0 and row["as_background"] == 0.0 for row in report["pixels"].values())


def test_all_background_is_counted_as_missed_and_every_view_sums_to_the_same_pixels(cross_set: CocoDataset) -> None:
    report = seg_errors.analyse(lambda i: torch.zeros_like(cross_set.semantic_truth(i)), cross_set, 4)
    pixels = report["pixels"]
    assert all(row["right"] == 0.0 and row["as_background"] == 1.0 for row in pixels.values())

    def total(prefix: str) -> int:
        return sum(row["pixels"] for group, row in pixels.items() if group.startswith(prefix))

    assert total("size") == total("background ") == total("visible") == pixels["interior"]["pixels"] + pixels[
        "outline band"]["pixels"] > 0  # fmt: skip
