"""Backgrounds of bench/cross_render.py's evaluation set: seven kinds, each a function (rng, width, height) ->
(float RGB array of shape (height, width, 3), a short description of the variant drawn).

- solid: one colour.
- gradient: multi-stop linear or radial, with a vignette and smooth lighting each half of the time.
- checker, stripes: two colours at least 120 RGB units and 40 in luma apart, any scale and rotation; stripes are
  plaids half of the time; sampled at 3x3 points per pixel, so their edges are antialiased.
- clouds: blurred colour noise, 3-5 octaves, a feature size of 12-200 px, each channel its own noise.
- grain: fine per-pixel noise (mono or colour, sigma 6-30) on a solid or gradient base.
- marble: sine bands (or wood rings) bent by turbulence, in any two colours.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image

Rng = np.random.Generator
Array = np.ndarray[Any, Any]
TEXTURE_SUBSAMPLES = 3  # per pixel side, for hard-edged textures
TEXTURE_MIN_DISTANCE, TEXTURE_MIN_LUMA = 120.0, 40.0  # between a texture's two colours, in RGB units
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _grid(width: int, height: int, n: int = 1) -> tuple[Array, Array]:
    """Sample-point coordinates, n per pixel side: xs (1, width*n) and ys (height*n, 1)."""
    offsets = (np.arange(n) + 0.5) / n
    xs = (np.arange(width)[:, None] + offsets).ravel()[None, :]
    ys = (np.arange(height)[:, None] + offsets).ravel()[:, None]
    return xs.astype(np.float32), ys.astype(np.float32)


def _pool(values: Array, n: int) -> Array:
    return values.reshape(values.shape[0] // n, n, values.shape[1] // n, n).mean(axis=(1, 3))


def _rotated(xs: Array, ys: Array, degrees: float) -> tuple[Array, Array]:
    cos, sin = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return xs * cos + ys * sin, ys * cos - xs * sin


def _log_uniform(rng: Rng, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def _colour(rng: Rng) -> Array:
    return rng.uniform(0, 255, 3).astype(np.float32)


def _two_colours(rng: Rng) -> tuple[Array, Array]:
    while True:
        a, b = _colour(rng), _colour(rng)
        if np.linalg.norm(a - b) >= TEXTURE_MIN_DISTANCE and abs(float(LUMA @ (a - b))) >= TEXTURE_MIN_LUMA:
            return a, b


def _mix(a: Array, b: Array, t: Array) -> Array:
    return a + (b - a) * t[..., None]


def _noise(rng: Rng, width: int, height: int, cell: float) -> Array:
    """Smooth value noise of about `cell` px per feature: a random grid scaled up bicubically."""
    grid = rng.random((max(2, round(height / cell)) + 1, max(2, round(width / cell)) + 1), dtype=np.float32)
    return np.asarray(Image.fromarray(grid, "F").resize((width, height), Image.Resampling.BICUBIC))


def _octaves(rng: Rng, width: int, height: int, cell: float, count: int, turbulent: bool = False) -> Array:
    """A sum of noise octaves (cell halving, amplitude halving), scaled to [0, 1]."""
    total = np.zeros((height, width), np.float32)
    for k in range(count):
        layer = _noise(rng, width, height, max(2.0, cell / 2**k))
        total += (np.abs(2 * layer - 1) if turbulent else layer) / 2**k
    return (total - total.min()) / max(1e-6, float(total.max() - total.min()))


def _solid(rng: Rng, width: int, height: int) -> tuple[Array, str]:
    return np.broadcast_to(_colour(rng), (height, width, 3)).copy(), "solid"


def _gradient(rng: Rng, width: int, height: int) -> tuple[Array, str]:
    xs, ys = _grid(width, height)
    if rng.random() < 0.5:
        u = _rotated(xs, ys, rng.uniform(0, 360))[0]
        t, detail = (u - u.min()) / (u.max() - u.min()), "linear"
    else:
        distance = np.hypot(xs - rng.uniform(-0.25, 1.25) * width, ys - rng.uniform(-0.25, 1.25) * height)
        t, detail = distance / distance.max(), "radial"
    stops = int(rng.integers(2, 5))
    positions = np.sort(np.concatenate([[0.0, 1.0], rng.uniform(0, 1, stops - 2)]))
    colours = rng.uniform(0, 255, (stops, 3))
    image = np.stack([np.interp(t, positions, colours[:, c]) for c in range(3)], axis=-1)
    light = np.ones((height, width), np.float32)
    if rng.random() < 0.5:
        radius = np.hypot(xs / width - 0.5, ys / height - 0.5) / math.sqrt(0.5)
        light *= 1 - rng.uniform(0.2, 0.7) * radius**2
        detail += "+vignette"
    if rng.random() < 0.5:
        field = _noise(rng, width, height, max(width, height) * rng.uniform(0.4, 1.0))
        light *= 1 + rng.uniform(0.1, 0.35) * (2 * field - 1)
        detail += "+lighting"
    return image * light[..., None], f"{detail} {stops} stops"


def _bands(u: Array, rng: Rng) -> tuple[Array, float]:
    period = _log_uniform(rng, 4, 120)
    return ((u / period + rng.uniform(0, 1)) % 1 < rng.uniform(0.3, 0.7)).astype(np.float32), period


def _checker(rng: Rng, width: int, height: int) -> tuple[Array, str]:
    u, v = _rotated(*_grid(width, height, TEXTURE_SUBSAMPLES), rng.uniform(0, 90))
    cell = _log_uniform(rng, 3, 90)
    phase = rng.uniform(0, cell, 2)
    squares = (np.floor((u + phase[0]) / cell) + np.floor((v + phase[1]) / cell)) % 2
    return _mix(*_two_colours(rng), _pool(squares, TEXTURE_SUBSAMPLES)), f"checker {cell:.0f}px"


def _stripes(rng: Rng, width: int, height: int) -> tuple[Array, str]:
    xs, ys = _grid(width, height, TEXTURE_SUBSAMPLES)
    angle = rng.uniform(0, 180)
    t, period = _bands(_rotated(xs, ys, angle)[0], rng)
    detail = f"stripes {period:.0f}px"
    if rng.random() < 0.5:
        across, period2 = _bands(_rotated(xs, ys, angle + 90 + rng.uniform(-20, 20))[0], rng)
        t, detail = (t + across) / 2, f"plaid {period:.0f}/{period2:.0f}px"
    return _mix(*_two_colours(rng), _pool(t, TEXTURE_SUBSAMPLES)), detail


def _clouds(rng: Rng, width: int, height: int) -> tuple[Array, str]:
    cell, count = _log_uniform(rng, 12, 200), int(rng.integers(3, 6))
    channels = []
    for _ in range(3):
        low = rng.uniform(0, 195)
        channels.append(low + (rng.uniform(low + 60, 255) - low) * _octaves(rng, width, height, cell, count))
    return np.stack(channels, axis=-1), f"clouds {cell:.0f}px x{count}"


def _grain(rng: Rng, width: int, height: int) -> tuple[Array, str]:
    base, detail = _solid(rng, width, height) if rng.random() < 0.5 else _gradient(rng, width, height)
    sigma, mono = rng.uniform(6, 30), rng.random() < 0.5
    noise = rng.normal(0, sigma, (height, width, 1 if mono else 3)).astype(np.float32)
    return base + noise, f"{'mono' if mono else 'colour'} grain {sigma:.0f} on {detail.split()[0]}"


def _marble(rng: Rng, width: int, height: int) -> tuple[Array, str]:
    xs, ys = _grid(width, height)
    if rng.random() < 0.5:
        u, detail = _rotated(xs, ys, rng.uniform(0, 180))[0], "marble"
    else:
        u, detail = np.hypot(xs - rng.uniform(0, width), ys - rng.uniform(0, height)), "wood"
    turbulence = _octaves(rng, width, height, _log_uniform(rng, 30, 250), 4, turbulent=True)
    period = _log_uniform(rng, 20, 200)
    t = (0.5 + 0.5 * np.sin(2 * np.pi * (u / period + rng.uniform(0.5, 4) * turbulence))) ** rng.uniform(0.5, 2)
    return _mix(_colour(rng), _colour(rng), t), f"{detail} {period:.0f}px"


BACKGROUNDS = {"solid": _solid, "gradient": _gradient, "checker": _checker, "stripes": _stripes,
               "clouds": _clouds, "grain": _grain, "marble": _marble}  # fmt: skip
KINDS = tuple(BACKGROUNDS)
