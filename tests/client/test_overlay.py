"""The overlay renderer on hand-made answers: real COCO RLE masks, exact pixel checks."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from PIL import Image
from processes import REPO
from pycocotools import mask as mask_utils

from client.overlay import PALETTE, color_for, encode_png, open_image, render_overlay

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy:DeprecationWarning")

H, W = 120, 160
GREY = 100


def _rle(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _box_mask(x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[y1:y2, x1:x2] = True
    return mask


def _image() -> Image.Image:
    return Image.new("RGB", (W, H), (GREY, GREY, GREY))


def _blend(color: tuple[int, int, int], alpha: float = 0.45) -> np.ndarray:
    return np.rint(GREY * (1 - alpha) + np.asarray(color) * alpha).astype(np.uint8)


def _instance(label_id: int, label: str, score: float, box: tuple[int, int, int, int]) -> dict[str, Any]:
    mask = _box_mask(*box)
    return {"label": label, "label_id": label_id, "score": score, "box": [float(v) for v in box],
            "area": int(mask.sum()), "mask": _rle(mask)}  # fmt: skip


def test_instances_tint_outline_box_and_label() -> None:
    answer = {"image": {"width": W, "height": H}, "detections": [_instance(2, "square", 0.9, (40, 50, 100, 110))]}
    out = np.asarray(render_overlay(_image(), answer))
    color = color_for(2)
    assert out.shape == (H, W, 3)
    assert (out[80, 70] == _blend(color)).all(), "mask interior is the class colour blended in"
    assert (out[80, 40] == color).all(), "the mask's edge is painted solid"
    assert (out[50:110, 99] == color).all(), "the box's right side"
    # The label sits on a filled tag just above the box, in the class colour, with text on it.
    tag = out[30:49, 40:70].reshape(-1, 3)
    share = (tag == color).all(axis=1).mean()
    assert 0.3 < share < 1.0, share
    assert (out[[5, 115], [150, 5]] == GREY).all(), "pixels away from it stay untouched"


def test_strongest_detection_is_drawn_on_top() -> None:
    weak = _instance(1, "circle", 0.3, (20, 30, 90, 100))
    strong = _instance(3, "triangle", 0.95, (60, 30, 130, 100))
    # Sent weakest last: the renderer orders by score itself.
    answer = {"image": {"width": W, "height": H}, "detections": [strong, weak]}
    out = np.asarray(render_overlay(_image(), answer)).astype(int)
    overlap = out[70, 75]
    twice = GREY * 0.55 * 0.55 + np.asarray(color_for(1)) * 0.45 * 0.55 + np.asarray(color_for(3)) * 0.45
    assert np.abs(overlap - twice).max() <= 1


def test_detections_without_masks_get_boxes_only() -> None:
    det = {"label": "circle", "label_id": 1, "score": 0.5, "box": [10.0, 40.0, 60.0, 90.0]}
    out = np.asarray(render_overlay(_image(), {"image": {"width": W, "height": H}, "detections": [det]}))
    assert (out[60, 30] == GREY).all(), "no mask: the inside stays as it was"
    assert (out[60, 10] == color_for(1)).all()


def test_segments_are_tinted_and_listed_in_a_legend() -> None:
    squares, circles = _box_mask(80, 60, 160, 120), _box_mask(0, 100, 40, 120)
    segments = [
        {"label": "circle", "label_id": 1, "area": int(circles.sum()), "mask": _rle(circles)},
        {"label": "square", "label_id": 2, "area": int(squares.sum()), "mask": _rle(squares)},
    ]
    out = np.asarray(render_overlay(_image(), {"image": {"width": W, "height": H}, "segments": segments}))
    assert (out[90, 120] == _blend(color_for(2))).all()
    assert (out[110, 20] == _blend(color_for(1))).all()
    legend = out[:30, :60].reshape(-1, 3)
    for label_id in (1, 2):
        assert (legend == color_for(label_id)).all(axis=1).any(), f"no legend entry for class {label_id}"
    assert (out[40, 100] == GREY).all()


def test_output_has_the_displayed_size_of_an_exif_rotated_upload() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 160x120, displayed rotated: 120 wide, 160 tall
    buffer = io.BytesIO()
    _image().save(buffer, "JPEG", exif=exif.tobytes())
    image = open_image(buffer.getvalue())
    assert image.size == (H, W)
    out = render_overlay(image, {"image": {"width": H, "height": W}, "detections": []})
    assert Image.open(io.BytesIO(encode_png(out))).size == (H, W)


def test_an_answer_for_another_image_is_refused() -> None:
    with pytest.raises(ValueError, match="EXIF"):
        render_overlay(_image(), {"image": {"width": H, "height": W}, "detections": []})
    bad_mask = {**_instance(1, "circle", 0.9, (0, 0, 10, 10)), "mask": {"size": [10, 10], "counts": "0"}}
    with pytest.raises(ValueError, match="mask size"):
        render_overlay(_image(), {"image": {"width": W, "height": H}, "detections": [bad_mask]})


def test_palette_gives_neighbouring_classes_distinct_colours() -> None:
    colours = [color_for(i) for i in range(1, len(PALETTE) + 1)]
    assert len(set(colours)) == len(PALETTE)
    assert color_for(1) == color_for(len(PALETTE) + 1)


def test_readme_shows_a_committed_overlay() -> None:
    readme = (REPO / "README.md").read_text()
    assert "](docs/overlay.png)" in readme
    picture = REPO / "docs/overlay.png"
    assert picture.stat().st_size < 300_000
    with Image.open(picture) as image:
        assert image.format == "PNG"
        assert min(image.size) >= 160
