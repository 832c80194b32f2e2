"""Procedural "shapes" dataset in COCO format: circles, squares and triangles on varied backgrounds.

Every scene is rasterised once into a per-pixel instance-id canvas, and colours are painted from that same
rasterisation, so masks and pixels can never disagree. Annotations describe visible pixels only.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

CATEGORIES: list[dict[str, Any]] = [
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 2, "name": "square", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
]
SPLITS = ("train", "val")
MAX_SHAPES = 8
SIZE_RANGE = (0.08, 0.5)  # shape size as a fraction of the image's shorter side
MIN_VISIBLE_FRACTION = 0.4  # of the shape's own area; less is no fair target
MIN_VISIBLE_PIXELS = 40
MIN_MAIN_PIECE = 0.85  # share of the visible pixels in the largest 4-connected piece
MIN_CONTRAST = 64.0  # RGB distance from what lies under (and next to) a shape
COLOUR_CANDIDATES = 32
JPEG_FRACTION = 0.3
PROGRESS_ABOVE = 100

BoolMask = NDArray[np.bool_]
Box = tuple[slice, slice]


@dataclass(frozen=True)
class Instance:
    category_id: int
    mask: BoolMask  # H x W, visible pixels only
    size: float  # unoccluded extent: circle diameter, square side, triangle circumcircle diameter
    full_area: int  # pixels of the whole shape, including any part beyond the image border
    unoccluded_area: int  # pixels inside the image before later shapes covered some of them
    colour: tuple[int, int, int]


@dataclass(frozen=True)
class Scene:
    image: NDArray[np.uint8]  # H x W x 3
    instances: list[Instance]


@dataclass
class _Shape:
    category_id: int
    size: float
    full_area: int
    mask: BoolMask  # clipped to the image, covering `box`
    box: Box
    visible: int = 0
    colour: tuple[int, int, int] = (0, 0, 0)


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator for one image: a SeedSequence child per split and index, so splits are independent streams."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLITS.index(split), index)))


def render_scene(rng: np.random.Generator, min_side: int = 160, max_side: int = 640) -> Scene:
    """Draw one scene: a random-size background with 1 to 8 shapes painted in z-order."""
    height, width = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
    image = _background(rng, height, width)
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
        Instance(s.category_id, canvas == i + 1, s.size, s.full_area, int(s.mask.sum()), s.colour)
        for i, s in enumerate(shapes)
    ]
    return Scene(image, instances)


def _background(rng: np.random.Generator, height: int, width: int) -> NDArray[np.uint8]:
    """Solid, gradient, noise, stripes, checker or smooth blobs: a blend weight t between two colours."""
    kind = rng.choice(["solid", "gradient", "noise", "stripes", "checker", "blobs"])
    c0 = rng.uniform(0, 255, 3).astype(np.float32)
    # Textures stay moderate in contrast so shape edges remain the strongest edges; gradients may span anything.
    c1 = rng.uniform(0, 255, 3) if kind == "gradient" else np.clip(c0 + rng.normal(0, 50, 3), 0, 255)
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    angle = rng.uniform(0, math.pi)
    along = xs * math.cos(angle) + ys * math.sin(angle)
    t: NDArray[np.floating[Any]]
    if kind == "gradient":
        t = (along - along.min()) / max(float(along.max() - along.min()), 1.0)
    elif kind == "stripes":
        wave = np.sin(along * (2 * math.pi / rng.uniform(6, 48)) + rng.uniform(0, 2 * math.pi))
        t = (wave > 0).astype(np.float32) if rng.random() < 0.5 else 0.5 + 0.5 * wave
    elif kind == "checker":
        across = -xs * math.sin(angle) + ys * math.cos(angle)
        period = rng.uniform(8, 64)
        t = ((np.floor(along / period) + np.floor(across / period)) % 2).astype(np.float32)
    elif kind == "blobs":
        grid = rng.uniform(0, 255, (int(rng.integers(2, 9)), int(rng.integers(2, 9)))).astype(np.uint8)
        t = np.asarray(Image.fromarray(grid).resize((width, height), Image.Resampling.BICUBIC), np.float32) / 255
    else:
        t = np.zeros((height, width), np.float32)
    image = c0 + (c1 - c0).astype(np.float32) * t[..., None]
    if kind == "noise" or rng.random() < 0.3:
        sigma = rng.uniform(8, 24) if kind == "noise" else rng.uniform(2, 8)
        image = image + sigma * rng.standard_normal((height, width, 3), dtype=np.float32)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)


def _sample_shape(rng: np.random.Generator, height: int, width: int) -> _Shape:
    """A random shape, rasterised at pixel centres (hard edges) on its own box, then clipped to the image."""
    category_id = int(rng.integers(1, 4))
    size = float(min(height, width) * math.exp(rng.uniform(*np.log(SIZE_RANGE))))  # log-uniform: more small shapes
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    reach = size / 2 * (math.sqrt(2) if category_id == 2 else 1)
    left, top = math.floor(cx - reach), math.floor(cy - reach)
    right, bottom = math.ceil(cx + reach) + 1, math.ceil(cy + reach) + 1
    px = np.arange(left, right, dtype=np.float64)[None, :] + 0.5 - cx
    py = np.arange(top, bottom, dtype=np.float64)[:, None] + 0.5 - cy
    if category_id == 1:
        full = px**2 + py**2 <= (size / 2) ** 2
    else:
        turn = rng.uniform(0, 2 * math.pi)
        if category_id == 2:
            angles = turn + np.array([0.25, 0.75, 1.25, 1.75]) * math.pi
        else:  # vertices jittered around the circumcircle keep every interior angle above 45 degrees
            angles = turn + np.radians([0.0, 120 + rng.uniform(-15, 15), 240 + rng.uniform(-15, 15)])
        full = _convex_polygon(np.cos(angles) * reach, np.sin(angles) * reach, px, py)
    # The centre lies inside the image, so the clipped box is never empty.
    box = (slice(max(top, 0), min(bottom, height)), slice(max(left, 0), min(right, width)))
    mask = full[box[0].start - top : box[0].stop - top, box[1].start - left : box[1].stop - left]
    return _Shape(category_id, size, int(full.sum()), mask, box)


def _convex_polygon(vx: NDArray[np.float64], vy: NDArray[np.float64], px: Any, py: Any) -> BoolMask:
    """Pixels on the inner side of every edge of a counter-clockwise convex polygon."""
    inside = np.ones(np.broadcast_shapes(px.shape, py.shape), bool)
    for i in range(len(vx)):
        ax, ay, bx, by = vx[i], vy[i], vx[(i + 1) % len(vx)], vy[(i + 1) % len(vx)]
        inside &= (bx - ax) * (py - ay) - (by - ay) * (px - ax) >= 0
    return inside


def _place(
    shape: _Shape, shapes: list[_Shape], canvas: NDArray[np.uint8], image: NDArray[np.uint8], rng: np.random.Generator
) -> bool:
    """Paint `shape` on top if it and every shape it covers stay fair targets and its colour contrasts."""
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
    colour = _contrasting_colour(shape, shapes, canvas, image, rng)
    if colour is None:
        return False
    for i in np.nonzero(covered)[0]:
        shapes[i].visible -= int(covered[i])
    canvas[...] = trial
    image[shape.box][shape.mask] = colour  # the very mask that went into the canvas
    shape.colour = colour
    return True


def _fair(visible: int, full_area: int) -> bool:
    return visible >= MIN_VISIBLE_PIXELS and visible >= MIN_VISIBLE_FRACTION * full_area


def _contrasting_colour(
    shape: _Shape, shapes: list[_Shape], canvas: NDArray[np.uint8], image: NDArray[np.uint8], rng: np.random.Generator
) -> tuple[int, int, int] | None:
    """The best of a few random colours against what lies under the shape and one pixel around it, if good enough."""
    padded = np.pad(shape.mask, 1)
    grown = padded.copy()  # 4-neighbour dilation: pixels the shape touches count as well as those it covers
    grown[1:] |= padded[:-1]
    grown[:-1] |= padded[1:]
    grown[:, 1:] |= padded[:, :-1]
    grown[:, :-1] |= padded[:, 1:]
    top, left = shape.box[0].start - 1, shape.box[1].start - 1
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + grown.shape[0], image.shape[0]), min(left + grown.shape[1], image.shape[1])
    grown = grown[y0 - top : y1 - top, x0 - left : x1 - left]
    ids = canvas[y0:y1, x0:x1][grown]
    background = image[y0:y1, x0:x1][grown][ids == 0].astype(np.float32)
    background = background[:: max(len(background) // 1024, 1)]  # a strided sample is plenty for a percentile
    touched = np.array([shapes[i - 1].colour for i in np.unique(ids[ids > 0])], np.float32).reshape(-1, 3)
    candidates = rng.integers(0, 256, (COLOUR_CANDIDATES, 3)).astype(np.float32)
    score = np.full(COLOUR_CANDIDATES, np.inf, np.float32)
    if len(background):
        # A low percentile, not the minimum, so a few noise pixels near the colour do not veto it.
        score = np.percentile(np.linalg.norm(candidates[:, None] - background[None], axis=-1), 2, axis=1)
    if len(touched):  # shapes are solid, so every one it touches must be clearly different
        score = np.minimum(score, np.linalg.norm(candidates[:, None] - touched[None], axis=-1).min(axis=1))
    best = int(np.argmax(score))
    if score[best] < MIN_CONTRAST:
        return None
    r, g, b = (int(v) for v in candidates[best])
    return r, g, b


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


def annotate(mask: BoolMask) -> dict[str, Any]:
    """COCO fields of one visible mask: compressed RLE (counts as str), tight bbox [x, y, w, h] and area."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    x, y = int(cols[0]), int(rows[0])
    return {
        "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
        "bbox": [x, y, int(cols[-1]) + 1 - x, int(rows[-1]) + 1 - y],
        "area": int(mask.sum()),
        "iscrowd": 0,
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
        jpeg = bool(rng.random() < JPEG_FRACTION)
        name = f"{split}/{index:06d}.{'jpg' if jpeg else 'png'}"
        picture = Image.fromarray(scene.image)
        if jpeg:
            picture.save(out / "images" / name, "JPEG", quality=int(rng.integers(90, 97)))
        else:
            picture.save(out / "images" / name, "PNG", compress_level=3)
        images.append({"id": index + 1, "file_name": name, "width": width, "height": height})
        for instance in scene.instances:
            annotation = {"id": len(annotations) + 1, "image_id": index + 1, "category_id": instance.category_id}
            annotations.append(annotation | annotate(instance.mask))
        bar.update()
    info = {"description": "densepred procedural shapes", "version": "1", "seed": seed, "split": split}
    return {"info": info, "licenses": [], "images": images, "annotations": annotations, "categories": CATEGORIES}
