"""Grouping a batch of mixed-size images by shape, so that padding them to a common size wastes little.

A network runs a batch as one tensor, every image padded to the largest height and the largest width
(rounded up to the backbone's stride). A portrait image next to a landscape one nearly doubles the
pixels computed; those padded pixels are pure waste. `group_by_shape` splits a batch into forward
passes whose padded pixels stay within a tolerance of the images' own, and `PaddingStats` counts both.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

Shape = tuple[int, int]  # (height, width) as the network sees the image, before padding


def padded_pixels(shapes: Sequence[Shape], divisor: int) -> int:
    def up(value: int) -> int:
        return -(-value // divisor) * divisor

    return up(max(h for h, _ in shapes)) * up(max(w for _, w in shapes)) * len(shapes)


def padding_waste(shapes: Sequence[Shape], divisor: int) -> float:
    """The share of a padded batch's pixels that belong to no image."""
    own = sum(h * w for h, w in shapes)
    return 1 - own / padded_pixels(shapes, divisor)


def group_by_shape(shapes: Sequence[Shape], divisor: int, max_waste: float) -> list[list[int]]:
    """Indices of `shapes` in groups (each one forward pass) whose padding waste is at most `max_waste`,
    except where rounding a single image up to `divisor` alone exceeds it. Greedy over images sorted by
    aspect ratio then size: similar shapes are neighbours, and a group grows while it stays cheap."""
    order = sorted(range(len(shapes)), key=lambda i: (shapes[i][0] / shapes[i][1], shapes[i]))
    groups: list[list[int]] = []
    for index in order:
        if groups:
            candidate = [shapes[i] for i in groups[-1]] + [shapes[index]]
            one_by_one = sum(padded_pixels([shape], divisor) for shape in candidate)
            # A group stays within the tolerance, or computes no more than its images would one by one.
            if padding_waste(candidate, divisor) <= max_waste or padded_pixels(candidate, divisor) <= one_by_one:
                groups[-1].append(index)
                continue
        groups.append([index])
    return groups


@dataclass
class PaddingStats:
    """Pixels of images and of padded batches run so far (read by the service's metrics)."""

    image_pixels: int = 0
    padded_pixels: int = 0
    forwards: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, shapes: Sequence[Shape], divisor: int) -> None:
        with self._lock:
            self.image_pixels += sum(h * w for h, w in shapes)
            self.padded_pixels += padded_pixels(shapes, divisor)
            self.forwards += 1

    @property
    def waste(self) -> float:
        return 0.0 if not self.padded_pixels else 1 - self.image_pixels / self.padded_pixels
