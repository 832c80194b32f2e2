"""Backgrounds and camera effects of the shapes dataset, over the whole range the spec allows.

Nothing here keeps shape edges the strongest edges of a picture: textures take any two colours at any
contrast (a checkerboard's cells are squares themselves), colour clouds make blobs at the shapes' own
scale, and lighting, blur and grain act on the shapes as on everything else. The first renderer capped
texture contrast and painted flat shapes over noise; its models learnt "an object is the region inside the
strongest edges" and lost half their mAP on an independent renderer (issue 15).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageFilter

Pixels = NDArray[np.float32]  # H x W x 3, 0..255, not yet clipped

BACKGROUNDS = ("solid", "gradient", "radial", "grain", "stripes", "checker", "plaid", "clouds")
LOW_CONTRAST_TEXTURES = 0.3  # share of two-colour backgrounds whose colours are close


def background(rng: np.random.Generator, height: int, width: int) -> tuple[str, Pixels]:
    """A background of a kind drawn uniformly from BACKGROUNDS."""
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    angle = rng.uniform(0, math.pi)
    along = xs * math.cos(angle) + ys * math.sin(angle)
    across = -xs * math.sin(angle) + ys * math.cos(angle)
    c0, c1 = _colour_pair(rng)
    if kind == "solid":
        return kind, np.broadcast_to(c0, (height, width, 3)).astype(np.float32)
    if kind == "gradient":
        return kind, _stops(rng, _normalised(along), c0, c1)
    if kind == "radial":
        cy, cx = rng.uniform(-0.3, 1.3) * height, rng.uniform(-0.3, 1.3) * width
        radius = rng.uniform(0.3, 1.2) * math.hypot(height, width)
        return kind, _blend(c0, c1, np.clip(np.hypot(ys - cy, xs - cx) / radius, 0, 1))
    if kind == "grain":
        base = _stops(rng, _normalised(along), c0, c1) if rng.random() < 0.5 else _blend(c0, c0, along * 0)
        return kind, base + _noise(rng, height, width, rng.uniform(10, 40))
    if kind == "stripes":
        return kind, _blend(c0, c1, _wave(rng, along, rng.uniform(4, 64)))
    if kind == "checker":
        period = rng.uniform(6, 80)
        return kind, _blend(c0, c1, ((np.floor(along / period) + np.floor(across / period)) % 2))
    if kind == "plaid":
        c2 = rng.uniform(0, 255, 3).astype(np.float32)
        first = _wave(rng, along, rng.uniform(6, 64))
        crossing = across if rng.random() < 0.7 else (along * 0.5 + across).astype(np.float32)
        second = _wave(rng, crossing, rng.uniform(6, 64))
        image = _blend(c0, c1, first)
        return kind, image + (c2 - image) * (0.5 * second)[..., None]
    return kind, _clouds(rng, height, width, c0, c1)


def _colour_pair(rng: np.random.Generator) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    c0 = rng.uniform(0, 255, 3).astype(np.float32)
    if rng.random() < LOW_CONTRAST_TEXTURES:
        return c0, np.clip(c0 + rng.normal(0, 30, 3), 0, 255).astype(np.float32)
    return c0, rng.uniform(0, 255, 3).astype(np.float32)


def _normalised(values: NDArray[np.floating[Any]]) -> NDArray[np.float32]:
    low, high = float(values.min()), float(values.max())
    return ((values - low) / max(high - low, 1.0)).astype(np.float32)


def _blend(c0: NDArray[np.float32], c1: NDArray[np.float32], t: NDArray[np.floating[Any]]) -> Pixels:
    return (c0 + (c1 - c0) * np.asarray(t, np.float32)[..., None]).astype(np.float32)


def _stops(
    rng: np.random.Generator, t: NDArray[np.float32], c0: NDArray[np.float32], c1: NDArray[np.float32]
) -> Pixels:
    """A linear gradient, sometimes through a third colour and eased, as a photographed wall or sky is."""
    if rng.random() < 0.5:
        t = t * t * (3 - 2 * t)
    if rng.random() < 0.5:
        return _blend(c0, c1, t)
    middle, at = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0.3, 0.7)
    first, second = _blend(c0, middle, np.clip(t / at, 0, 1)), _blend(middle, c1, np.clip((t - at) / (1 - at), 0, 1))
    return np.where((t < at)[..., None], first, second)


def _wave(rng: np.random.Generator, along: NDArray[np.float32], period: float) -> NDArray[np.float32]:
    """Stripes along `along`: hard-edged with a random duty cycle, or a smooth sine."""
    phase = along * (2 * math.pi / period) + rng.uniform(0, 2 * math.pi)
    if rng.random() < 0.6:
        return (np.sin(phase) > rng.uniform(-0.6, 0.6)).astype(np.float32)
    return (0.5 + 0.5 * np.sin(phase)).astype(np.float32)


def _noise(rng: np.random.Generator, height: int, width: int, sigma: float) -> Pixels:
    """Per-pixel noise: the same for the three channels (luminance grain) or independent (colour grain)."""
    channels = 3 if rng.random() < 0.5 else 1
    noise = sigma * rng.standard_normal((height, width, channels), dtype=np.float32)
    return np.broadcast_to(noise, (height, width, 3)).astype(np.float32)


def _smooth_field(rng: np.random.Generator, height: int, width: int, cells: int) -> NDArray[np.float32]:
    """Random values on a cells x cells grid, bicubically interpolated over the image: blobs of about
    (side / cells) pixels."""
    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, "F").resize((width, height), Image.Resampling.BICUBIC), np.float32)


def _clouds(rng: np.random.Generator, height: int, width: int, c0: Pixels, c1: Pixels) -> Pixels:
    """Blurred colour noise over several octaves: blobs from a tenth to half the image across, per channel."""
    octaves = [int(c) for c in rng.choice([2, 3, 4, 6, 8, 12, 16, 24], size=int(rng.integers(1, 4)), replace=False)]
    channels = []
    for _ in range(3):
        field = sum(_smooth_field(rng, height, width, cells) / math.sqrt(cells) for cells in octaves)
        channels.append(_normalised(np.asarray(field)))
    t = np.stack(channels, axis=-1)
    if rng.random() < 0.5:  # one field for all channels: clouds between two colours, not rainbow noise
        t = np.repeat(t[..., :1], 3, axis=-1)
    return (c0 + (c1 - c0) * t).astype(np.float32)


def camera(rng: np.random.Generator, image: Pixels) -> tuple[NDArray[np.uint8], dict[str, float]]:
    """What a camera adds to everything in the scene: uneven lighting, defocus blur and sensor grain."""
    height, width = image.shape[:2]
    effects: dict[str, float] = {}
    if rng.random() < 0.3:
        gain = rng.uniform(0.5, 1.3) + rng.uniform(-0.4, 0.4) * _normalised(_smooth_field(rng, height, width, 2))
        image = image * gain[..., None]
        effects["lighting"] = round(float(gain.max() - gain.min()), 3)
    picture = np.clip(image + 0.5, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        sigma = float(rng.uniform(0.4, 1.6))
        blurred = Image.fromarray(picture).filter(ImageFilter.GaussianBlur(sigma))
        picture = np.asarray(blurred).copy()
        effects["blur"] = round(sigma, 3)
    if rng.random() < 0.4:
        sigma = float(rng.uniform(2, 14))
        picture = np.clip(picture + _noise(rng, height, width, sigma) + 0.5, 0, 255).astype(np.uint8)
        effects["grain"] = round(sigma, 3)
    return picture, effects
