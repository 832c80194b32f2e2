"""The synthetic shapes dataset: deterministic, valid COCO, and faithful to its own pixels."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from trainer.synth import (
    CATEGORIES,
    MAX_SHAPES,
    MIN_CONTRAST,
    MIN_VISIBLE_FRACTION,
    MIN_VISIBLE_PIXELS,
    SIZE_RANGE,
    TOUCH_CONTRAST,
    Scene,
    generate_dataset,
    image_rng,
    render_scene,
)
from trainer.textures import BACKGROUNDS

SEED = 3
MIN_SIDE, MAX_SIDE = 120, 320  # smaller than the defaults to keep the file fast


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def load_coco(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        return COCO(str(path))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    generate_dataset(out, train=16, val=6, seed=SEED, min_side=MIN_SIDE, max_side=MAX_SIDE)
    return out


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    # ~1 % of shapes are barely visible (NEAR_COLOUR 0.1): 200 scenes hold a few.
    return [render_scene(image_rng(7, "train", i)) for i in range(200)]


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path: Path) -> None:
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        generate_dataset(tmp_path / name, train=4, val=2, seed=seed, min_side=MIN_SIDE, max_side=MAX_SIDE)
    first, again, other = (files_of(tmp_path / name) for name in "abc")
    assert first == again
    assert "annotations/train.json" in first
    assert "annotations/val.json" in first
    assert first["annotations/train.json"] != other["annotations/train.json"]
    assert first["annotations/val.json"] != other["annotations/val.json"]


def test_val_does_not_depend_on_the_train_count(tmp_path: Path) -> None:
    generate_dataset(tmp_path / "few", train=1, val=3, seed=5, min_side=MIN_SIDE, max_side=MAX_SIDE)
    generate_dataset(tmp_path / "more", train=4, val=3, seed=5, min_side=MIN_SIDE, max_side=MAX_SIDE)
    few, more = files_of(tmp_path / "few"), files_of(tmp_path / "more")
    val = [name for name in few if "val" in name]
    assert len(val) == 4  # three images and the annotations
    assert all(few[name] == more[name] for name in val)


@pytest.mark.parametrize("split", ["train", "val"])
def test_coco_annotations_are_valid_and_consistent(dataset: Path, split: str) -> None:
    coco = load_coco(dataset / "annotations" / f"{split}.json")
    assert coco.loadCats(coco.getCatIds()) == CATEGORIES
    assert [c["name"] for c in CATEGORIES] == ["circle", "square", "triangle"]
    anns = coco.loadAnns(coco.getAnnIds())
    assert len({a["id"] for a in anns}) == len(anns)
    for info in coco.loadImgs(coco.getImgIds()):
        with Image.open(dataset / "images" / info["file_name"]) as picture:
            assert picture.size == (info["width"], info["height"])
            assert picture.mode == "RGB"
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=info["id"])):
            mask = mask_utils.decode(ann["segmentation"])
            assert mask.shape == (info["height"], info["width"])
            assert isinstance(ann["segmentation"]["counts"], str)
            ys, xs = np.nonzero(mask)
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
            assert ann["area"] == mask.sum()
            assert ann["iscrowd"] == int(ann["contrast"] < MIN_CONTRAST)
            assert ann["category_id"] in {1, 2, 3}
        assert info["background"] in BACKGROUNDS


def test_annotations_agree_with_pixels_and_rerendered_scenes(dataset: Path) -> None:
    suffixes = set()
    for split in ("train", "val"):
        data: dict[str, Any] = json.loads((dataset / "annotations" / f"{split}.json").read_text())
        for index, info in enumerate(data["images"]):
            anns = [a for a in data["annotations"] if a["image_id"] == info["id"]]
            masks = [mask_utils.decode(a["segmentation"]).astype(bool) for a in anns]
            scene = render_scene(image_rng(SEED, split, index), MIN_SIDE, MAX_SIDE)
            assert [i.category_id for i in scene.instances] == [a["category_id"] for a in anns]
            for instance, mask in zip(scene.instances, masks, strict=True):
                assert np.array_equal(instance.mask, mask)
            assert np.sum(masks, axis=0).max() <= 1  # disjoint
            pixels = np.asarray(Image.open(dataset / "images" / info["file_name"]))
            suffixes.add(Path(info["file_name"]).suffix)
            if info["file_name"].endswith(".png"):
                assert np.array_equal(pixels, scene.image)
            if not scene.effects:  # no lighting, blur or grain: a shape's inside is its colour
                for instance in scene.instances:
                    inside = _eroded(instance.mask, 3)
                    if inside.any():
                        mean = pixels[inside].astype(float).mean(axis=0)
                        tolerance = 2 if info["file_name"].endswith(".png") else 12  # JPEG at any quality
                        assert np.abs(mean - instance.colour).max() <= tolerance
    assert suffixes == {".png", ".jpg"}


def _eroded(mask: np.ndarray, times: int) -> np.ndarray:
    inner = mask.copy()
    for _ in range(times):
        step = inner.copy()
        step[1:] &= inner[:-1]
        step[:-1] &= inner[1:]
        step[:, 1:] &= inner[:, :-1]
        step[:, :-1] &= inner[:, 1:]
        step[[0, -1]] = False
        step[:, [0, -1]] = False
        inner = step
    return inner


def test_scene_sizes_counts_and_shape_extents(scenes: list[Scene]) -> None:
    shapes = [s.image.shape for s in scenes]
    assert all(160 <= h <= 640 and 160 <= w <= 640 and c == 3 for h, w, c in shapes)
    assert len({h for h, _, _ in shapes}) > 30
    assert len({w for _, w, _ in shapes}) > 30
    assert sum(h != w for h, w, _ in shapes) > 50
    counts = [len(s.instances) for s in scenes]
    assert min(counts) >= 1
    assert max(counts) <= MAX_SHAPES
    assert len(set(counts)) >= 5
    for scene in scenes:
        short = min(scene.image.shape[:2])
        for inst in scene.instances:
            assert SIZE_RANGE[0] * short <= inst.size <= SIZE_RANGE[1] * short
            ys, xs = np.nonzero(inst.mask)
            # Visible extent fits in the unoccluded shape: a square's diagonal, a circle's or triangle's circle.
            reach = inst.size * (math.sqrt(2) if inst.category_id == 2 else 1) + 2
            assert xs.max() - xs.min() < reach
            assert ys.max() - ys.min() < reach
    assert {i.category_id for s in scenes for i in s.instances} == {1, 2, 3}


def test_every_drawn_shape_is_a_fair_target(scenes: list[Scene]) -> None:
    instances = [i for s in scenes for i in s.instances]
    cut = [i for i in instances if i.unoccluded_area < i.full_area]
    occluded = [i for i in instances if i.mask.sum() < i.unoccluded_area]
    assert len(cut) >= 10
    assert len(occluded) >= 10
    for inst in instances:
        visible = int(inst.mask.sum())
        assert visible >= MIN_VISIBLE_PIXELS
        assert visible >= MIN_VISIBLE_FRACTION * inst.full_area


def test_touching_shapes_contrast(scenes: list[Scene]) -> None:
    touching = 0
    for scene in scenes:
        ids = np.zeros(scene.image.shape[:2], np.int16)
        for k, inst in enumerate(scene.instances, start=1):
            ids[inst.mask] = k
        colours = {k: np.array(i.colour, float) for k, i in enumerate(scene.instances, start=1)}
        # Horizontally and vertically adjacent pixel pairs that belong to two different shapes.
        for a, b in ((ids[:, :-1], ids[:, 1:]), (ids[:-1, :], ids[1:, :])):
            border = (a != b) & (a > 0) & (b > 0)
            pairs = {(int(x), int(y)) for x, y in zip(a[border], b[border], strict=True)}
            touching += len(pairs)
            for x, y in pairs:
                assert np.linalg.norm(colours[x] - colours[y]) >= TOUCH_CONTRAST
    assert touching > 0


def test_the_data_covers_the_spec_and_marks_barely_visible_shapes(scenes: list[Scene]) -> None:
    assert {scene.background for scene in scenes} == set(BACKGROUNDS)
    instances = [i for s in scenes for i in s.instances]
    assert all(i.ignore == (i.contrast < MIN_CONTRAST) for i in instances)
    ignored = sum(i.ignore for i in instances)
    assert 0 < ignored < 0.2 * len(instances)
    # Shapes coloured close to their surroundings that are still targets: no contrast rule makes it easy.
    assert sum(MIN_CONTRAST <= i.contrast < 40 for i in instances) >= 0.03 * len(instances)
    # High-contrast textures: two-colour backgrounds spanning most of the RGB range.
    spans = [np.ptp(s.image.reshape(-1, 3).astype(float), axis=0).max() for s in scenes if s.background == "checker"]
    assert max(spans) > 150
    effects = {name for s in scenes for name in s.effects}
    assert effects == {"lighting", "blur", "grain"}
