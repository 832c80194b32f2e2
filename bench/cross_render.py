"""An independent second renderer of the DESIGN.md "shapes" spec, for evaluation only (never trained on).

    python bench/cross_render.py --out DIR [--images 150] [--seed 20261201]

Writes `DIR/images/val/NNNNNN.{png,jpg}` and `DIR/annotations/val.json` (COCO; categories 1 circle,
2 square, 3 triangle), which `python -m trainer eval --data DIR` reads. Written from the spec alone, with
no code shared with trainer/, so that a score on it says something about generalisation.

Rules:
- Rasteriser: exact inside tests at 4x4 sub-pixel centres per pixel (pixel i spans [i, i+1)); a shape's
  coverage is the fraction of its 16 samples inside, its colour is painted with the coverage as alpha
  (antialiased edges), and its mask is the pixels with coverage >= 50 %. After all shapes are drawn, a
  shape's annotation is its mask minus the masks of every later shape; bbox is that mask's tight box
  and area its pixel count. A shape with no visible pixel is dropped.
- Shapes: 1 to 8 per image; size 8-50 % of the shorter side (circle diameter, square side, triangle
  longest side); squares and triangles at any rotation; triangles with every interior angle >= 25 deg;
  centres anywhere in the image (border cuts). Colours: any RGB colour, and in 25 % of shapes a colour
  4-48 RGB units away from what lies under the shape's centre.
- What counts as a target: a shape is drawn but annotated `iscrowd: 1` (ignored by COCOeval) when it
  has fewer than 40 visible pixels, or shows less than 30 % of its own full (unoccluded, uncut) area,
  or its contrast is below 10 (JPEG at quality 40 and grain can erase less than that). Contrast: the
  75th percentile, over the pixels 2-3 px outside its visible mask (Chebyshev distance) that no later
  shape covers, of the RGB distance between them and the shape's colour, measured on the composite
  before blur, grain and JPEG: a shape stands out when a quarter of its outline does (on a two-colour
  texture it may match one colour and still show against the other; a median would call it invisible).
  Every other shape is a target (`iscrowd: 0`). Per annotation: `visible_fraction`, `contrast`, `geometry`.
- Backgrounds (cross_backgrounds.py), drawn round-robin so each has a seventh of the images: solid,
  gradient, checker, stripes, clouds, grain, marble. Recorded per image as `background` and
  `background_detail`.
- Post-processing per image: Gaussian blur (sigma 0.3-1.2) in 35 %, colour grain (sigma 2-8) in 40 %,
  JPEG (quality 40-95) in half, PNG otherwise; recorded as `blur_sigma`, `grain`, `jpeg_quality`.
Image i comes from its own stream, SeedSequence(seed, spawn_key=(i,)), so it does not depend on how
many images are made; the same seed gives byte-identical files.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cross_backgrounds import BACKGROUNDS, KINDS, Array, Rng
from PIL import Image, ImageFilter
from pycocotools import mask as mask_utils

DEFAULT_SEED = 20261201
SPLIT = "val"
SUBSAMPLES = 4  # per pixel side, for shapes
MIN_SIDE, MAX_SIDE = 160, 640
MIN_SIZE, MAX_SIZE = 0.08, 0.50
MIN_TRIANGLE_ANGLE = 25.0
NEAR_COLOUR_SHARE, NEAR_COLOUR_DISTANCE = 0.25, (4.0, 48.0)
MIN_PIXELS, MIN_VISIBLE_FRACTION, MIN_CONTRAST = 40, 0.30, 10.0
RING = (2, 3)  # contrast ring: Chebyshev distance from the visible mask, inclusive
CONTRAST_QUANTILE = 0.75  # a shape is as visible as the contrast along a quarter of its outline
CATEGORIES = [{"id": i, "name": n, "supercategory": "shape"} for i, n in enumerate(("circle", "square", "triangle"), 1)]


@dataclass(frozen=True)
class Shape:
    category: int  # 1 circle, 2 square, 3 triangle
    center: tuple[float, float]
    size: float  # circle diameter, square side, triangle longest side
    angle: float  # degrees
    colour: tuple[float, float, float]
    vertices: tuple[tuple[float, float], ...] = ()  # a convex polygon, either winding; none for circles

    def area(self) -> float:
        if self.category == 1:
            return math.pi * self.size**2 / 4
        xs, ys = zip(*self.vertices, strict=True)
        return abs(sum(xs[i - 1] * ys[i] - xs[i] * ys[i - 1] for i in range(len(xs)))) / 2

    def bounds(self) -> tuple[float, float, float, float]:
        if self.category == 1:
            (cx, cy), r = self.center, self.size / 2
            return cx - r, cy - r, cx + r, cy + r
        xs, ys = zip(*self.vertices, strict=True)
        return min(xs), min(ys), max(xs), max(ys)

    def inside(self, xs: Array, ys: Array) -> Array:
        """Whether each point (xs broadcast against ys) lies in the shape."""
        if self.category == 1:
            (cx, cy), r = self.center, self.size / 2
            return (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r
        result: Array = np.ones(np.broadcast_shapes(xs.shape, ys.shape), bool)
        edges = list(zip(self.vertices, self.vertices[1:] + self.vertices[:1], strict=True))
        turn = 1.0 if sum(ax * by - bx * ay for (ax, ay), (bx, by) in edges) >= 0 else -1.0
        for (ax, ay), (bx, by) in edges:
            result &= turn * ((bx - ax) * (ys - ay) - (by - ay) * (xs - ax)) >= 0
        return result


def make_shape(
    category: int,
    center: tuple[float, float],
    size: float,
    angle: float,
    colour: tuple[float, float, float],
    triangle_angles: tuple[float, float] = (60.0, 60.0),
) -> Shape:
    """A shape from its geometry. A triangle's first two interior angles (degrees) set its proportions."""
    if category == 1:
        return Shape(1, center, size, angle, colour)
    if category == 2:
        local = [(-0.5, -0.5), (-0.5, 0.5), (0.5, 0.5), (0.5, -0.5)]
        points = [(x * size, y * size) for x, y in local]
    else:
        a, b = (math.radians(t) for t in triangle_angles)
        c = math.pi - a - b
        scale = size / max(math.sin(a), math.sin(b), math.sin(c))  # longest side = size (law of sines)
        side_ab, side_ac = scale * math.sin(c), scale * math.sin(b)
        corners = [(0.0, 0.0), (side_ac * math.cos(a), side_ac * math.sin(a)), (side_ab, 0.0)]
        mx, my = sum(x for x, _ in corners) / 3, sum(y for _, y in corners) / 3
        points = [(x - mx, y - my) for x, y in corners]
    cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    vertices = tuple((center[0] + x * cos - y * sin, center[1] + x * sin + y * cos) for x, y in points)
    return Shape(category, center, size, angle, colour, vertices)


def coverage(shape: Shape, width: int, height: int) -> Array:
    """The fraction of each pixel's SUBSAMPLES**2 sample points inside the shape, (height, width) float32."""
    out = np.zeros((height, width), np.float32)
    x0, y0, x1, y1 = shape.bounds()
    c0, r0 = max(0, math.floor(x0)), max(0, math.floor(y0))
    c1, r1 = min(width, math.ceil(x1)), min(height, math.ceil(y1))
    if c1 <= c0 or r1 <= r0:
        return out
    offsets = (np.arange(SUBSAMPLES) + 0.5) / SUBSAMPLES
    xs = (np.arange(c0, c1)[:, None] + offsets).ravel()[None, :]
    ys = (np.arange(r0, r1)[:, None] + offsets).ravel()[:, None]
    hits = shape.inside(xs, ys).reshape(r1 - r0, SUBSAMPLES, c1 - c0, SUBSAMPLES).sum(axis=(1, 3))
    out[r0:r1, c0:c1] = hits / SUBSAMPLES**2
    return out


def paint(canvas: Array, shape: Shape) -> Array:
    """Paints the shape onto the float (H, W, 3) canvas in place, coverage as alpha; returns its mask."""
    alpha = coverage(shape, canvas.shape[1], canvas.shape[0])
    canvas += (np.asarray(shape.colour, np.float32) - canvas) * alpha[..., None]
    mask: Array = alpha >= 0.5
    return mask


def occluders(masks: list[Array]) -> list[Array]:
    """For each shape, the union of the masks of all shapes drawn after it."""
    later: list[Array] = []
    covered: Array = np.zeros_like(masks[0]) if masks else np.zeros((0, 0), bool)
    for mask in reversed(masks):
        later.append(covered.copy())
        covered |= mask
    return later[::-1]


def visible_masks(masks: list[Array]) -> list[Array]:
    """Each shape's mask minus the masks of all shapes drawn after it."""
    return [mask & ~over for mask, over in zip(masks, occluders(masks), strict=True)]


def compose(background: Array, shapes: list[Shape]) -> tuple[Array, list[Array]]:
    """A scene of known geometry: the composite (float, before post-processing) and the visible masks."""
    canvas = background.astype(np.float32).copy()
    return canvas, visible_masks([paint(canvas, shape) for shape in shapes])


def _dilate(mask: Array, steps: int) -> Array:
    for _ in range(steps):
        padded = np.pad(mask, 1)
        grown = padded[1:-1, 1:-1].copy()
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                grown |= padded[dy : dy + mask.shape[0], dx : dx + mask.shape[1]]
        mask = grown
    return mask


def contrast(image: Array, mask: Array, colour: tuple[float, float, float], occluder: Array | None = None) -> float:
    """The CONTRAST_QUANTILE of the RGB distances between the colour and the image's pixels RING px outside
    the mask, leaving out the pixels of shapes drawn over it (their edges are theirs) while any others remain."""
    rows, cols = np.nonzero(mask)
    r0, c0 = max(0, rows.min() - RING[1]), max(0, cols.min() - RING[1])
    window = np.s_[r0 : rows.max() + RING[1] + 1, c0 : cols.max() + RING[1] + 1]
    part = mask[window]
    ring = _dilate(part, RING[1]) & ~_dilate(part, RING[0] - 1)
    if occluder is not None and (ring & ~occluder[window]).any():
        ring &= ~occluder[window]
    if not ring.any():
        return 0.0
    distances = np.linalg.norm(image[window][ring] - np.asarray(colour, np.float32), axis=1)
    return float(np.quantile(distances, CONTRAST_QUANTILE))


def random_triangle_angles(rng: Rng) -> tuple[float, float]:
    """Two interior angles, uniform over the triangles whose three angles are all >= MIN_TRIANGLE_ANGLE."""
    while True:
        a, b = rng.uniform(MIN_TRIANGLE_ANGLE, 180 - 2 * MIN_TRIANGLE_ANGLE, 2)
        if 180 - a - b >= MIN_TRIANGLE_ANGLE:
            return float(a), float(b)


def _random_shape(rng: Rng, canvas: Array) -> Shape:
    height, width = canvas.shape[:2]
    category = int(rng.integers(1, 4))
    center = (float(rng.uniform(0, width)), float(rng.uniform(0, height)))
    size = float(rng.uniform(MIN_SIZE, MAX_SIZE)) * min(width, height)
    angle = float(rng.uniform(0, 360))
    if rng.random() < NEAR_COLOUR_SHARE:  # a colour close to what lies under it
        direction = rng.normal(size=3)
        under = canvas[min(height - 1, int(center[1])), min(width - 1, int(center[0]))]
        colour = np.clip(under + direction / np.linalg.norm(direction) * rng.uniform(*NEAR_COLOUR_DISTANCE), 0, 255)
    else:
        colour = rng.uniform(0, 255, 3)
    rgb = (float(colour[0]), float(colour[1]), float(colour[2]))
    return make_shape(category, center, size, angle, rgb, random_triangle_angles(rng))


def is_ignored(area: int, visible_fraction: float, measured_contrast: float) -> bool:
    """The targets rule: too few pixels, too little of the shape showing, or too faint is not a target."""
    return area < MIN_PIXELS or visible_fraction < MIN_VISIBLE_FRACTION or measured_contrast < MIN_CONTRAST


def annotate(composite: Array, shape: Shape, mask: Array, occluder: Array | None = None) -> dict[str, Any] | None:
    """The COCO annotation (without ids) of a shape's visible mask, given the union of the shapes drawn over
    it; None when nothing of it shows."""
    area = int(mask.sum())
    if area == 0:
        return None
    fraction = round(min(1.0, area / shape.area()), 4)
    measured = round(contrast(composite, mask, shape.colour, occluder), 2)
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rows, cols = np.nonzero(mask)
    box = [int(cols.min()), int(rows.min()), int(cols.max() - cols.min() + 1), int(rows.max() - rows.min() + 1)]
    geometry = {"center": [round(v, 3) for v in shape.center], "size": round(shape.size, 3),
                "angle": round(shape.angle, 2), "colour": [round(v, 1) for v in shape.colour],
                "vertices": [[round(x, 3), round(y, 3)] for x, y in shape.vertices]}  # fmt: skip
    return {"category_id": shape.category, "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
            "bbox": [float(v) for v in box], "area": area, "iscrowd": int(is_ignored(area, fraction, measured)),
            "visible_fraction": fraction, "contrast": measured, "geometry": geometry}  # fmt: skip


def _finish(rng: Rng, composite: Array) -> tuple[bytes, dict[str, Any]]:
    """Blur, grain and encoding of the composite: the file's bytes and what was done."""
    blur = round(float(rng.uniform(0.3, 1.2)), 2) if rng.random() < 0.35 else 0.0
    grain = round(float(rng.uniform(2, 8)), 2) if rng.random() < 0.4 else 0.0
    quality = int(rng.integers(40, 96)) if rng.random() < 0.5 else None
    image = Image.fromarray(np.clip(np.rint(composite), 0, 255).astype(np.uint8))
    if blur:
        image = image.filter(ImageFilter.GaussianBlur(blur))  # Pillow's radius is the standard deviation
    if grain:
        noisy = np.asarray(image, np.float32) + rng.normal(0, grain, (image.height, image.width, 3))
        image = Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    if quality is None:
        image.save(buffer, "PNG")
    else:
        image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue(), {"blur_sigma": blur, "grain": grain, "jpeg_quality": quality}


def render_image(index: int, seed: int) -> tuple[bytes, dict[str, Any], list[dict[str, Any]]]:
    """Image `index` of the set from its own random stream: file bytes, image record and annotations (no ids)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
    width, height = (int(v) for v in rng.integers(MIN_SIDE, MAX_SIDE + 1, 2))
    kind = KINDS[index % len(KINDS)]
    background, detail = BACKGROUNDS[kind](rng, width, height)
    canvas = np.clip(background, 0, 255).astype(np.float32)
    shapes, masks = [], []
    for _ in range(int(rng.integers(1, 9))):  # one by one: a shape's colour may be close to the shapes under it
        shapes.append(_random_shape(rng, canvas))
        masks.append(paint(canvas, shapes[-1]))
    scene = zip(shapes, masks, occluders(masks), strict=True)
    annotations = [annotate(canvas, shape, mask & ~over, over) for shape, mask, over in scene]
    data, post = _finish(rng, canvas)
    suffix = "png" if post["jpeg_quality"] is None else "jpg"
    record = {"file_name": f"{SPLIT}/{index:06d}.{suffix}", "width": width, "height": height, "background": kind,
              "background_detail": detail, "shapes_drawn": len(shapes), **post}  # fmt: skip
    return data, record, [a for a in annotations if a is not None]


def render_dataset(out: Path, images: int, seed: int) -> dict[str, Any]:
    """Writes the set under `out` (images/val/, annotations/val.json) and returns its COCO dict."""
    (out / "images" / SPLIT).mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    rules = {"coverage_threshold": 0.5, "subsamples": SUBSAMPLES**2, "min_pixels": MIN_PIXELS,
             "min_visible_fraction": MIN_VISIBLE_FRACTION, "min_contrast": MIN_CONTRAST, "contrast_ring_px": RING,
             "min_triangle_angle": MIN_TRIANGLE_ANGLE}  # fmt: skip
    coco: dict[str, Any] = {"info": {"description": "cross-renderer evaluation set (bench/cross_render.py)",
                                     "seed": seed, "images": images, "rules": rules},
                            "images": [], "annotations": [], "categories": CATEGORIES}  # fmt: skip
    for index in range(images):
        data, record, annotations = render_image(index, seed)
        (out / "images" / record["file_name"]).write_bytes(data)
        coco["images"].append({"id": index + 1, **record})
        for annotation in annotations:
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": index + 1, **annotation})
    (out / "annotations" / f"{SPLIT}.json").write_text(json.dumps(coco))
    return coco


def summary(coco: dict[str, Any]) -> str:
    kinds = {image["id"]: image["background"] for image in coco["images"]}
    counts: Counter[tuple[str, int]] = Counter((kinds[a["image_id"]], a["iscrowd"]) for a in coco["annotations"])
    per_kind = Counter(kinds.values())
    parts = [f"{kind} {per_kind[kind]} ({counts[kind, 0]}/{counts[kind, 1]})" for kind in KINDS]
    targets = sum(1 for a in coco["annotations"] if not a["iscrowd"])
    return (f"{len(coco['images'])} images, {targets} targets, {len(coco['annotations']) - targets} ignored; "
            f"kinds (images, targets/ignored): {', '.join(parts)}")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--images", type=int, default=150)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error("--images must be at least 1")
    started = time.perf_counter()
    coco = render_dataset(args.out, args.images, args.seed)
    print(f"cross_render: {summary(coco)}; {time.perf_counter() - started:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
