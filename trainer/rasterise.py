"""Shapes as signed distances on the pixel grid: the mask (pixel centres inside) and the paint's coverage.

A pixel belongs to a shape when its centre lies inside it (distance >= 0), whatever the edge style; the
colour is painted with a coverage that is a step there (hard edges), a one-pixel ramp (antialiased, as a
renderer that supersamples draws) or a wider one (soft, out-of-focus edges). The mask is always the set
where coverage >= 0.5, so pixels and annotations agree whichever style a scene draws.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

Grid = NDArray[np.float64]
Box = tuple[slice, slice]
DistanceFn = Callable[[Grid, Grid], Grid]  # signed distance to an outline at pixel centres, relative to a centre


@dataclass(frozen=True)
class Stamp:
    """A shape rasterised on its own window of the image: `box` (clipped to the image) and, over it, the
    signed distance to the outline in pixels (positive inside)."""

    box: Box
    distance: NDArray[np.float32]
    full_area: int  # pixels whose centre is inside, beyond the image border included

    @property
    def mask(self) -> NDArray[np.bool_]:
        return self.distance >= 0

    def coverage(self, softness: float) -> NDArray[np.float32]:
        """Alpha to paint with: a step at the outline (softness 0), or a ramp `softness` pixels wide."""
        if softness <= 0:
            return self.mask.astype(np.float32)
        return np.clip(0.5 + self.distance / softness, 0, 1).astype(np.float32)


def edge_softness(rng: np.random.Generator) -> float:
    """Hard (40 %), antialiased (40 %) or soft (20 %) edges."""
    draw = rng.random()
    return 0.0 if draw < 0.4 else 1.0 if draw < 0.8 else float(rng.uniform(1.5, 3.0))


def stamp(
    height: int, width: int, centre: tuple[float, float], reach: float, distance_of: DistanceFn, margin: int = 4
) -> Stamp:
    """Evaluate `distance_of(px, py)` (coordinates relative to `centre`, pixel centres) on the window that
    holds everything within `reach` of the centre, plus `margin` for soft edges."""
    cx, cy = centre
    left, top = math.floor(cx - reach) - margin, math.floor(cy - reach) - margin
    right, bottom = math.ceil(cx + reach) + margin + 1, math.ceil(cy + reach) + margin + 1
    px = np.arange(left, right, dtype=np.float64)[None, :] + 0.5 - cx
    py = np.arange(top, bottom, dtype=np.float64)[:, None] + 0.5 - cy
    full = distance_of(px, py).astype(np.float32)
    box = (slice(max(top, 0), min(bottom, height)), slice(max(left, 0), min(right, width)))
    window = full[box[0].start - top : box[0].stop - top, box[1].start - left : box[1].stop - left]
    return Stamp(box, window, int((full >= 0).sum()))


def disc(radius: float) -> DistanceFn:
    return lambda px, py: radius - np.sqrt(px**2 + py**2)


def ring(radius: float, width: float) -> DistanceFn:
    return lambda px, py: width / 2 - np.abs(np.sqrt(px**2 + py**2) - radius)


def ellipse(a: float, b: float, angle: float) -> DistanceFn:
    """An approximate distance (exact on the axes): enough for a distractor's edge."""
    cos, sin = math.cos(angle), math.sin(angle)

    def distance(px: Grid, py: Grid) -> Grid:
        u, v = px * cos + py * sin, -px * sin + py * cos
        scaled = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        return (1 - scaled) * min(a, b)

    return distance


def segment(length: float, width: float, angle: float) -> DistanceFn:
    """A straight stroke with round caps, centred on the origin."""
    cos, sin = math.cos(angle), math.sin(angle)

    def distance(px: Grid, py: Grid) -> Grid:
        u = np.clip(px * cos + py * sin, -length / 2, length / 2)
        return width / 2 - np.sqrt((px - u * cos) ** 2 + (py - u * sin) ** 2)

    return distance


def convex_polygon(vx: NDArray[np.float64], vy: NDArray[np.float64]) -> DistanceFn:
    """Distance to the nearest edge line of a counter-clockwise convex polygon (positive inside; outside,
    near a vertex, an underestimate: enough for the paint's ramp)."""

    def distance(px: Grid, py: Grid) -> Grid:
        inside = np.full(np.broadcast_shapes(px.shape, py.shape), np.inf)
        for i in range(len(vx)):
            ax, ay, bx, by = vx[i], vy[i], vx[(i + 1) % len(vx)], vy[(i + 1) % len(vx)]
            cross = (bx - ax) * (py - ay) - (by - ay) * (px - ax)
            inside = np.minimum(inside, cross / math.hypot(bx - ax, by - ay))
        return inside

    return distance


def triangle_angles(rng: np.random.Generator, min_angle: float = 25.0) -> NDArray[np.float64]:
    """Vertex directions on the circumcircle: half the time near-equilateral, else any triangle whose
    interior angles are all at least `min_angle` degrees (an interior angle is half the opposite arc)."""
    turn = rng.uniform(0, 2 * math.pi)
    if rng.random() < 0.5:
        return turn + np.radians([0.0, 120 + rng.uniform(-15, 15), 240 + rng.uniform(-15, 15)])
    arcs = 2 * min_angle + (360 - 6 * min_angle) * rng.dirichlet((1.5, 1.5, 1.5))
    return turn + np.radians(np.concatenate(([0.0], np.cumsum(arcs[:2]))))
