"""bench/cross_render.py, the independent evaluation set: its files, its geometry and its targets rule."""

from __future__ import annotations

import contextlib
import io
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import cross_render as cr  # noqa: E402
from cross_backgrounds import KINDS  # noqa: E402

IMAGES = 2 * len(KINDS)  # every kind twice


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("cross")
    return out, cr.render_dataset(out, IMAGES, cr.DEFAULT_SEED)


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_the_same_bytes_and_an_image_does_not_depend_on_the_count(
    rendered: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    out, _ = rendered
    cr.render_dataset(tmp_path / "a", 3, cr.DEFAULT_SEED)
    cr.render_dataset(tmp_path / "b", 3, cr.DEFAULT_SEED)
    cr.render_dataset(tmp_path / "c", 3, cr.DEFAULT_SEED + 1)
    first, again, other = (files(tmp_path / name / "images") for name in "abc")
    assert len(first) == 3
    assert first == again
    assert (tmp_path / "a/annotations/val.json").read_bytes() == (tmp_path / "b/annotations/val.json").read_bytes()
    fourteen = files(out / "images")
    assert {name: fourteen[name] for name in first} == first  # the first three of fourteen are the same files
    assert not set(first.values()) & set(other.values())


def test_every_kind_appears_and_images_are_within_the_spec(rendered: tuple[Path, dict[str, Any]]) -> None:
    out, coco = rendered
    assert [image["background"] for image in coco["images"]] == list(KINDS) * 2
    per_image: dict[int, int] = {}
    for annotation in coco["annotations"]:
        per_image[annotation["image_id"]] = per_image.get(annotation["image_id"], 0) + 1
    for image in coco["images"]:
        assert 160 <= image["width"] <= 640
        assert 160 <= image["height"] <= 640
        assert 1 <= image["shapes_drawn"] <= 8
        assert per_image.get(image["id"], 0) <= image["shapes_drawn"]
        with Image.open(out / "images" / image["file_name"]) as decoded:
            assert decoded.size == (image["width"], image["height"])
            assert decoded.format == ("PNG" if image["jpeg_quality"] is None else "JPEG")
        assert image["jpeg_quality"] is None or 40 <= image["jpeg_quality"] <= 95
        assert image["blur_sigma"] == 0 or 0.3 <= image["blur_sigma"] <= 1.2
        assert image["grain"] == 0 or 2 <= image["grain"] <= 8
    formats = {image["jpeg_quality"] is None for image in coco["images"]}
    assert formats == {True, False}
    assert [c["name"] for c in coco["categories"]] == ["circle", "square", "triangle"]
    assert {a["category_id"] for a in coco["annotations"]} == {1, 2, 3}


def test_masks_decode_to_the_annotated_area_and_tight_box(rendered: tuple[Path, dict[str, Any]]) -> None:
    _, coco = rendered
    heights = {image["id"]: (image["height"], image["width"]) for image in coco["images"]}
    for annotation in coco["annotations"]:
        assert isinstance(annotation["segmentation"]["counts"], str)
        mask = mask_utils.decode(annotation["segmentation"])
        assert mask.shape == heights[annotation["image_id"]]
        rows, cols = np.nonzero(mask)
        assert mask.sum() == annotation["area"] > 0
        box = [cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1]
        assert annotation["bbox"] == [float(v) for v in box]


def test_shapes_have_the_spec_sizes_and_triangle_angles(rendered: tuple[Path, dict[str, Any]]) -> None:
    _, coco = rendered
    sides = {image["id"]: min(image["width"], image["height"]) for image in coco["images"]}
    whole = 0
    for annotation in coco["annotations"]:
        geometry, (_, _, w, h) = annotation["geometry"], annotation["bbox"]
        size = geometry["size"]
        assert 0.08 * sides[annotation["image_id"]] <= size <= 0.5 * sides[annotation["image_id"]]
        if annotation["category_id"] == 3:
            corners = np.array(geometry["vertices"])
            lengths = [np.linalg.norm(corners[i] - corners[i - 1]) for i in range(3)]
            assert max(lengths) == pytest.approx(size, abs=0.01)
            for i in range(3):
                u, v = corners[i - 1] - corners[i], corners[(i + 1) % 3] - corners[i]
                assert math.degrees(math.acos(u @ v / np.linalg.norm(u) / np.linalg.norm(v))) >= 25 - 0.01
        if annotation["visible_fraction"] < 0.99:
            continue
        whole += 1  # neither cut nor occluded: its mask's extent follows from its size
        if annotation["category_id"] == 1:
            assert abs(w - size) <= 1.5
            assert abs(h - size) <= 1.5
        elif annotation["category_id"] == 2:
            assert size - 1.5 <= max(w, h) <= size * math.sqrt(2) + 1.5
        else:
            assert max(w, h) <= size + 1.5 <= math.hypot(w, h) + 3
    assert whole >= 10


def test_triangles_take_varied_proportions_above_the_floor() -> None:
    rng = np.random.default_rng(0)
    smallest = [min(a, b, 180 - a - b) for a, b in (cr.random_triangle_angles(rng) for _ in range(2000))]
    assert min(smallest) >= 25
    assert sum(s < 30 for s in smallest) > 100  # often far from equilateral


@pytest.mark.parametrize(
    ("category", "center", "size", "angle"),
    [(1, (50.3, 40.7), 31.0, 0.0), (2, (48.6, 51.2), 40.0, 27.0), (3, (51.1, 47.9), 60.0, 203.0)],
)
def test_coverage_is_centred_on_the_geometry_with_its_exact_area(
    category: int, center: tuple[float, float], size: float, angle: float
) -> None:
    shape = cr.make_shape(category, center, size, angle, (0.0, 0.0, 0.0), (40.0, 75.0))
    covered = cr.coverage(shape, 100, 100).astype(np.float64)
    assert covered.sum() == pytest.approx(shape.area(), rel=0.005)
    rows, cols = np.mgrid[0:100, 0:100] + 0.5  # pixel centres
    centroid = (covered * cols).sum() / covered.sum(), (covered * rows).sum() / covered.sum()
    expected = center if category == 1 else tuple(np.mean(shape.vertices, axis=0))
    assert centroid == pytest.approx(expected, abs=0.02)  # no half-pixel shift
    assert ((covered > 0) & (covered < 1)).sum() > size  # antialiased edge pixels


def test_the_mask_is_the_pixels_at_least_half_covered() -> None:
    shape = cr.make_shape(2, (15.5, 15.25), 10.0, 0.0, (0.0, 0.0, 0.0))  # x 10.5..20.5, y 10.25..20.25
    covered = cr.coverage(shape, 30, 30)
    assert covered[15, 10] == covered[15, 20] == 0.5  # half-covered columns: in the mask
    assert (covered[10, 12], covered[20, 12]) == (0.75, 0.25)
    _, (mask,) = cr.compose(np.zeros((30, 30, 3)), [shape])
    assert (np.nonzero(mask.any(axis=0))[0].tolist(), np.nonzero(mask.any(axis=1))[0].tolist()) == (
        list(range(10, 21)),
        list(range(10, 20)),
    )


def test_a_later_shape_removes_its_pixels_from_an_earlier_mask_and_edges_blend() -> None:
    grey, red, blue = np.array([100.0, 100, 100]), (255.0, 0.0, 0.0), (0.0, 0.0, 255.0)
    under = cr.make_shape(2, (20.0, 20.0), 20.0, 0.0, red)  # pixels 10..29
    over = cr.make_shape(2, (30.25, 30.25), 20.0, 0.0, blue)  # spans 20.25..40.25: pixels 20..39 at >= 50 %
    image, (under_mask, over_mask) = cr.compose(np.broadcast_to(grey, (50, 60, 3)), [under, over])
    expected_over = np.zeros((50, 60), bool)
    expected_over[20:40, 20:40] = True
    expected_under = np.zeros((50, 60), bool)
    expected_under[10:30, 10:30] = True
    expected_under[20:30, 20:30] = False
    assert (over_mask == expected_over).all()
    assert (under_mask == expected_under).all()
    np.testing.assert_allclose(image[15, 15], red)
    np.testing.assert_allclose(image[25, 20], 0.75 * np.array(blue) + 0.25 * np.array(red))  # 3/4 covered
    np.testing.assert_allclose(image[40, 25], 0.25 * np.array(blue) + 0.75 * grey)  # 1/4 covered: not in mask
    annotation = cr.annotate(image, under, under_mask)
    assert annotation is not None
    assert (annotation["bbox"], annotation["area"], annotation["visible_fraction"]) == (
        [10.0, 10.0, 20.0, 20.0],
        300,
        0.75,
    )
    hidden = cr.make_shape(1, (30.0, 30.0), 8.0, 0.0, red)
    _, (hidden_mask, _) = cr.compose(np.broadcast_to(grey, (50, 60, 3)), [hidden, over])
    assert cr.annotate(image, hidden, hidden_mask) is None  # fully hidden: dropped


def annotate_square(
    colour: tuple[float, float, float], size: float, occluder: float = 0.0, background: Any = None
) -> dict[str, Any]:
    """A square at the centre of a grey (or given) 120x120 image, its top part under a black square."""
    ground = np.full((120, 120, 3), 100.0) if background is None else background
    shapes = [cr.make_shape(2, (60.0, 60.0), size, 0.0, colour)]
    if occluder:
        shapes.append(cr.make_shape(2, (60.0, 60.0 - size / 2 - 50 + occluder * size), 100.0, 0.0, (0.0, 0.0, 0.0)))
    image, masks = cr.compose(ground, shapes)
    annotation = cr.annotate(image, shapes[0], masks[0], masks[-1] if occluder else None)
    assert annotation is not None
    return annotation


def test_the_targets_rule_ignores_faint_tiny_and_mostly_hidden_shapes() -> None:
    faint, low = annotate_square((107.0, 100.0, 100.0), 40), annotate_square((120.0, 100.0, 100.0), 40)
    assert (faint["contrast"], faint["iscrowd"]) == (7.0, 1)
    assert (low["contrast"], low["iscrowd"]) == (20.0, 0)  # low contrast but visible: a target
    tiny, small = annotate_square((255.0, 0.0, 0.0), 6), annotate_square((255.0, 0.0, 0.0), 8)
    assert (tiny["area"], tiny["iscrowd"]) == (36, 1)
    assert (small["area"], small["iscrowd"]) == (64, 0)
    hidden, half = annotate_square((255.0, 0, 0), 40, occluder=0.75), annotate_square((255.0, 0, 0), 40, occluder=0.5)
    assert (hidden["visible_fraction"], hidden["iscrowd"]) == (0.25, 1)
    assert (half["visible_fraction"], half["iscrowd"]) == (0.5, 0)


def test_contrast_is_against_what_lies_around_not_against_the_shapes_drawn_over_it() -> None:
    faint_under_black = annotate_square((107.0, 100.0, 100.0), 40, occluder=0.5)
    assert (faint_under_black["contrast"], faint_under_black["iscrowd"]) == (7.0, 1)  # the edge is the black one's
    split = np.full((120, 120, 3), 100.0)
    split[:, 70:] = (100.0, 100.0, 230.0)  # grey left, blue right: two fifths of the ring are blue
    on_two_colours = annotate_square((100.0, 100.0, 100.0), 40, background=split)
    assert on_two_colours["contrast"] == pytest.approx(130.0)  # it shows against the blue (a median: 0)
    assert on_two_colours["iscrowd"] == 0


def test_iscrowd_is_set_exactly_by_the_stated_rule(rendered: tuple[Path, dict[str, Any]]) -> None:
    _, coco = rendered
    for annotation in coco["annotations"]:
        ignored = annotation["area"] < 40 or annotation["visible_fraction"] < 0.3 or annotation["contrast"] < 10
        assert annotation["iscrowd"] == int(ignored)
    targets = [a for a in coco["annotations"] if not a["iscrowd"]]
    assert len(targets) < len(coco["annotations"])  # some are ignored
    assert any(a["contrast"] < 40 for a in targets)  # low-contrast targets are there
    assert any(a["visible_fraction"] < 0.6 for a in targets)  # and cut or occluded ones


def test_coco_loads_and_the_ground_truth_as_detections_scores_ap_one(rendered: tuple[Path, dict[str, Any]]) -> None:
    out, coco = rendered
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(out / "annotations" / "val.json"))
        results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                    "segmentation": a["segmentation"], "score": 1.0} for a in coco["annotations"]]  # fmt: skip
        for kind in ("bbox", "segm"):
            evaluation = COCOeval(truth, truth.loadRes(json.loads(json.dumps(results))), kind)
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
            assert evaluation.stats[0] == pytest.approx(1.0)  # AP@[.5:.95]
            assert evaluation.stats[1] == pytest.approx(1.0)  # AP@.5


def test_the_command_writes_the_set_and_prints_a_summary(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(BENCH / "cross_render.py"), "--out", str(tmp_path), "--images", "2"],
                          capture_output=True, text=True, check=True, timeout=60)  # fmt: skip
    coco = json.loads((tmp_path / "annotations" / "val.json").read_text())
    assert len(coco["images"]) == 2
    assert coco["info"]["seed"] == 20261201
    assert all((tmp_path / "images" / image["file_name"]).is_file() for image in coco["images"])
    assert "cross_render: 2 images" in done.stderr
    assert "solid 1 (" in done.stderr
    assert "gradient 1 (" in done.stderr
