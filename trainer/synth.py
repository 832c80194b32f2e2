"""Procedural "shapes" dataset in COCO format: circles, squares and triangles on varied backgrounds.

Every scene is rasterised once into a per-pixel instance-id canvas (a pixel belongs to a shape when its
centre lies inside it), and colours are painted from that same rasterisation with the pixel's coverage as
alpha (hard, antialiased or soft edges), so masks and pixels can never disagree. Annotations describe
visible pixels only. Backgrounds, distractors and camera effects (trainer/textures.py) cover the whole range
the spec allows, shape colours included: any colour, also close to what lies under the shape.

What counts as a target (the same rules for train and val):
- a shape is placed only if it keeps at least MIN_VISIBLE_PIXELS and MIN_VISIBLE_FRACTION of its own area
  in view (border cuts and occlusion by later shapes both count), in one main piece (MIN_MAIN_PIECE), and
  only if it leaves every shape it covers just as fair: anything less is not drawn at all;
- two touching shapes differ in colour by at least TOUCH_CONTRAST (RGB distance): solid shapes of one colour
  would merge into one region no annotation could split fairly;
- a shape whose colour is within MIN_CONTRAST (the median RGB distance to the pixels just around its
  outline) of its surroundings is drawn but annotated `iscrowd: 1`: ignored by COCOeval and by the FCN's
  loss (255), since it is barely visible; R-CNN targets drop it (torchvision's losses have no ignore
  regions, so there it counts as background); every other shape is a target, however little it stands out.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

from trainer import rasterise, textures

CATEGORIES: list[dict[str, Any]] = [
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 2, "name": "square", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
]
SPLITS = ("train", "val")
MAX_SHAPES = 8
SIZE_RANGE = (0.08, 0.5)  # shape size as a fraction of the image's shorter side
MIN_VISIBLE_FRACTION = 0.3  # of the shape's own area; less is no fair target
MIN_VISIBLE_PIXELS = 40
MIN_MAIN_PIECE = 0.85  # share of the visible pixels in the largest 4-connected piece
MIN_CONTRAST = 16.0  # median RGB distance from a shape's colour to the pixels around its outline: below, ignored
TOUCH_CONTRAST = 32.0  # RGB distance between the colours of two touching shapes
# Share of shapes coloured close to what lies under them (else any colour). With 0.3 and distractors in half
# the scenes, the quick chain's Mask R-CNN scored mask mAP@0.5 0.286 on this generator's hard val; with 0.1
# and none, 0.329 (bench/results/accuracy_experiments.md).
NEAR_COLOUR = 0.1
COLOUR_TRIES = 8
DISTRACTORS = 0.0  # share of scenes with 1 to 3 non-target marks (lines, rings, long ellipses); see above
JPEG_FRACTION = 0.4
JPEG_QUALITY = (35, 96)
PROGRESS_ABOVE = 100

BoolMask = NDArray[np.bool_]
Box = rasterise.Box


@dataclass(frozen=True)
class Instance:
    category_id: int
    mask: BoolMask  # H x W, visible pixels only
    size: float  # unoccluded extent: circle diameter, square side, triangle circumcircle diameter
    full_area: int  # pixels of the whole shape, including any part beyond the image border
    unoccluded_area: int  # pixels inside the image before later shapes covered some of them
    colour: tuple[int, int, int]
    contrast: float  # median RGB distance from the colour to the pixels around the outline, when painted
    ignore: bool  # below MIN_CONTRAST: drawn, annotated iscrowd (neither target nor background)


@dataclass(frozen=True)
class Scene:
    image: NDArray[np.uint8]  # H x W x 3
    instances: list[Instance]
    background: str = "solid"
    effects: dict[str, float] = field(default_factory=dict)  # camera effects applied (trainer/textures.py)


@dataclass
class _Shape:
    category_id: int
    size: float
    full_area: int
    mask: BoolMask  # clipped to the image, covering `box`: pixels whose centre is inside the shape
    coverage: NDArray[np.float32]  # the alpha it is painted with over `box` (nonzero just outside `mask` too)
    box: Box
    visible: int = 0
    colour: tuple[int, int, int] = (0, 0, 0)
    contrast: float = math.inf


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator for one image: a SeedSequence child per split and index, so splits are independent streams."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLITS.index(split), index)))


def render_scene(rng: np.random.Generator, min_side: int = 160, max_side: int = 640) -> Scene:
    """Draw one scene: a random-size background (with distractors) and 1 to 8 shapes painted in z-order,
    then the camera's lighting, blur and grain over everything."""
    height, width = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
    kind, image = textures.background(rng, height, width)
    image = np.ascontiguousarray(image, np.float32)
    if rng.random() < DISTRACTORS:
        _distractors(rng, image)
    canvas = np.zeros((height, width), np.uint8)  # 0 is background, i + 1 is shapes[i]
    shapes: list[_Shape] = []
    target = int(rng.integers(1, MAX_SHAPES + 1))
    attempts = 0
    # Rejected candidates are never drawn; keep trying until the scene holds at least one shape.
    while len(shapes) < target and (attempts < 6 * target or not shapes):
        attempts += 1
        if attempts > 500:
            raise RuntimeError("could not place a single shape")
        shape = _sample_shape(rng, height, width)
        if _place(shape, shapes, canvas, image, rng):
            shapes.append(shape)
    instances = [
        Instance(s.category_id, canvas == i + 1, s.size, s.full_area, int(s.mask.sum()), s.colour,
                 round(s.contrast, 2), s.contrast < MIN_CONTRAST)
        for i, s in enumerate(shapes)
    ]  # fmt: skip
    picture, effects = textures.camera(rng, image)
    return Scene(picture, instances, kind, effects)


def _sample_shape(rng: np.random.Generator, height: int, width: int) -> _Shape:
    """A random shape on its own window of the image, with a random edge style."""
    category_id = int(rng.integers(1, 4))
    size = float(min(height, width) * math.exp(rng.uniform(*np.log(SIZE_RANGE))))  # log-uniform: more small shapes
    centre = (rng.uniform(0, width), rng.uniform(0, height))
    reach = size / 2 * (math.sqrt(2) if category_id == 2 else 1)
    if category_id == 1:
        outline = rasterise.disc(size / 2)
    else:
        turn = rng.uniform(0, 2 * math.pi)
        angles = turn + np.array([0.25, 0.75, 1.25, 1.75]) * math.pi if category_id == 2 else None
        if angles is None:
            angles = rasterise.triangle_angles(rng)
        outline = rasterise.convex_polygon(np.cos(angles) * reach, np.sin(angles) * reach)
    # The centre lies inside the image, so the clipped window is never empty.
    drawn = rasterise.stamp(height, width, centre, reach, outline)
    coverage = drawn.coverage(rasterise.edge_softness(rng))
    return _Shape(category_id, size, drawn.full_area, drawn.mask, coverage, drawn.box)


def _distractors(rng: np.random.Generator, image: NDArray[np.float32]) -> None:
    """Paint 1 to 3 marks that are not targets into the background: strokes, rings and long ellipses,
    so that "a solid region with sharp edges" is not enough to be a shape."""
    height, width = image.shape[:2]
    short = min(height, width)
    for _ in range(int(rng.integers(1, 4))):
        kind, angle = int(rng.integers(3)), rng.uniform(0, math.pi)
        length = short * rng.uniform(0.1, 0.6)
        if kind == 0:
            outline, reach = rasterise.segment(length, rng.uniform(1, max(1.5, short * 0.03)), angle), length / 2
        elif kind == 1:
            radius = length / 2
            outline, reach = rasterise.ring(radius, rng.uniform(1.5, max(2.0, radius * 0.3))), radius + 2
        else:
            outline, reach = rasterise.ellipse(length / 2, length / 2 / rng.uniform(2, 4), angle), length / 2
        drawn = rasterise.stamp(height, width, (rng.uniform(0, width), rng.uniform(0, height)), reach, outline)
        _paint(image, drawn.box, drawn.coverage(rasterise.edge_softness(rng)), rng.uniform(0, 255, 3))


def _paint(image: NDArray[np.float32], box: Box, coverage: NDArray[np.float32], colour: Any) -> None:
    window = image[box]
    window += (np.asarray(colour, np.float32) - window) * coverage[..., None]


def _place(
    shape: _Shape, shapes: list[_Shape], canvas: NDArray[np.uint8], image: NDArray[np.float32], rng: np.random.Generator
) -> bool:
    """Paint `shape` on top if it and every shape it covers stay fair targets, in a colour that differs from
    every shape it touches (see the module docstring)."""
    shape.visible = int(shape.mask.sum())
    if not _fair(shape.visible, shape.full_area):
        return False
    covered = np.bincount(canvas[shape.box][shape.mask], minlength=len(shapes) + 1)[1:]
    trial = canvas.copy()  # cheap (uint8), and keeps the real canvas untouched if the shape is rejected
    trial[shape.box][shape.mask] = len(shapes) + 1
    for i in np.nonzero(covered)[0]:
        left = shapes[i].visible - int(covered[i])
        if not _fair(left, shapes[i].full_area):
            return False
        if _largest_piece(trial[shapes[i].box] == i + 1) < MIN_MAIN_PIECE * left:
            return False
    surroundings = _around(shape, canvas, image)
    colour = _shape_colour(shape, [shapes[i - 1].colour for i in np.unique(surroundings[0]) if i > 0], image, rng)
    if colour is None:
        return False
    for i in np.nonzero(covered)[0]:
        shapes[i].visible -= int(covered[i])
    canvas[...] = trial
    shape.colour = colour
    pixels = surroundings[1]
    distances = np.linalg.norm(pixels - np.asarray(colour, np.float32), axis=-1)
    shape.contrast = float(np.median(distances)) if len(distances) else math.inf
    _paint(image, shape.box, shape.coverage, colour)
    return True


def _fair(visible: int, full_area: int) -> bool:
    return visible >= MIN_VISIBLE_PIXELS and visible >= MIN_VISIBLE_FRACTION * full_area


def _around(
    shape: _Shape, canvas: NDArray[np.uint8], image: NDArray[np.float32], width: int = 2
) -> tuple[NDArray[np.uint8], NDArray[np.float32]]:
    """The canvas ids and pixels of the band `width` pixels wide just outside the shape's mask."""
    grown = np.pad(shape.mask, width)
    for _ in range(width):  # 4-neighbour dilation, `width` times
        step = grown.copy()
        step[1:] |= grown[:-1]
        step[:-1] |= grown[1:]
        step[:, 1:] |= grown[:, :-1]
        step[:, :-1] |= grown[:, 1:]
        grown = step
    band = grown & ~np.pad(shape.mask, width)
    top, left = shape.box[0].start - width, shape.box[1].start - width
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + band.shape[0], image.shape[0]), min(left + band.shape[1], image.shape[1])
    band = band[y0 - top : y1 - top, x0 - left : x1 - left]
    return canvas[y0:y1, x0:x1][band], image[y0:y1, x0:x1][band]


def _shape_colour(
    shape: _Shape, touched: list[tuple[int, int, int]], image: NDArray[np.float32], rng: np.random.Generator
) -> tuple[int, int, int] | None:
    """Any colour, or (NEAR_COLOUR of the time) one close to what lies under the shape; redrawn while it is
    within TOUCH_CONTRAST of a shape it touches, and None if that keeps happening."""
    under = np.median(image[shape.box][shape.mask], axis=0)
    others = np.asarray(touched, np.float32).reshape(-1, 3)
    for _ in range(COLOUR_TRIES):
        if rng.random() < NEAR_COLOUR:
            candidate = np.clip(under + rng.normal(0, rng.uniform(6, 40), 3), 0, 255)
        else:
            candidate = rng.uniform(0, 255, 3)
        colour = np.rint(candidate).astype(np.float32)
        if not len(others) or np.linalg.norm(others - colour, axis=-1).min() >= TOUCH_CONTRAST:
            r, g, b = (int(v) for v in colour)
            return r, g, b
    return None


def _largest_piece(mask: BoolMask) -> int:
    """Pixels in the largest 4-connected component, by union-find over horizontal runs (few per row)."""
    edges = np.diff(np.pad(mask, ((0, 0), (1, 1))).astype(np.int8), axis=1)
    rows, starts = np.nonzero(edges == 1)  # row-major order, so starts and ends pair up
    ends = np.nonzero(edges == -1)[1]
    parent = list(range(len(rows)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    bounds = np.searchsorted(rows, np.arange(mask.shape[0] + 1))
    for r in range(1, mask.shape[0]):
        for i in range(bounds[r - 1], bounds[r]):
            for j in range(bounds[r], bounds[r + 1]):
                if starts[i] < ends[j] and starts[j] < ends[i]:
                    parent[find(i)] = find(j)
    sizes: dict[int, int] = {}
    for i in range(len(rows)):
        root = find(i)
        sizes[root] = sizes.get(root, 0) + int(ends[i] - starts[i])
    return max(sizes.values(), default=0)


def annotate(mask: BoolMask, ignore: bool = False) -> dict[str, Any]:
    """COCO fields of one visible mask: compressed RLE (counts as str), tight bbox [x, y, w, h] and area;
    `ignore` marks it iscrowd (neither a target nor background for COCOeval and the losses)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    x, y = int(cols[0]), int(rows[0])
    return {
        "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
        "bbox": [x, y, int(cols[-1]) + 1 - x, int(rows[-1]) + 1 - y],
        "area": int(mask.sum()),
        "iscrowd": int(ignore),
    }


def generate_dataset(out: Path, train: int, val: int, seed: int = 0, min_side: int = 160, max_side: int = 640) -> None:
    """Write `out/images/<split>/NNNNNN.{png,jpg}` and `out/annotations/<split>.json`; same seed, same bytes."""
    if not 1 <= min_side <= max_side:
        raise ValueError(f"need 1 <= min_side <= max_side, got {min_side} and {max_side}")
    out = Path(out)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    with tqdm(total=train + val, desc="synth", unit="img", disable=train + val <= PROGRESS_ABOVE) as bar:
        for split, count in zip(SPLITS, (train, val), strict=True):
            dataset = _write_split(out, split, count, seed, min_side, max_side, bar)
            text = json.dumps(dataset, separators=(",", ":"))
            (out / "annotations" / f"{split}.json").write_text(text + "\n", encoding="utf-8")


def _write_split(
    out: Path, split: str, count: int, seed: int, min_side: int, max_side: int, bar: tqdm[Any]
) -> dict[str, Any]:
    folder = out / "images" / split
    folder.mkdir(parents=True, exist_ok=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for index in range(count):
        rng = image_rng(seed, split, index)
        scene = render_scene(rng, min_side, max_side)
        height, width = scene.image.shape[:2]
        # Drawn after the scene, so re-rendering from image_rng() reproduces the scene alone.
        quality = int(rng.integers(*JPEG_QUALITY)) if rng.random() < JPEG_FRACTION else None
        name = f"{split}/{index:06d}.{'png' if quality is None else 'jpg'}"
        picture = Image.fromarray(scene.image)
        if quality is None:
            picture.save(out / "images" / name, "PNG", compress_level=3)
        else:
            picture.save(out / "images" / name, "JPEG", quality=quality)
        images.append({"id": index + 1, "file_name": name, "width": width, "height": height,
                       "background": scene.background, "effects": scene.effects, "jpeg_quality": quality})  # fmt: skip
        for instance in scene.instances:
            annotation = {"id": len(annotations) + 1, "image_id": index + 1, "category_id": instance.category_id}
            annotations.append(annotation | annotate(instance.mask, instance.ignore) | {"contrast": instance.contrast})
        bar.update()
    info = {"description": "densepred procedural shapes", "version": "2", "seed": seed, "split": split}
    return {"info": info, "licenses": [], "images": images, "annotations": annotations, "categories": CATEGORIES}
