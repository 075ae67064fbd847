"""What the corruption sets share: the image type, ImageMagick's motion blur written out, and
the plasma fractal behind fog."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

Image = np.ndarray
"""One image as a float64 array in [0, 1]: ``H × W`` (gray) or ``H × W × 3`` (colour)."""


def motion(image: Image, radius: int, sigma: float, angle: float) -> Image:
    """ImageMagick's motion blur: each pixel the mean of the ``2·radius + 1`` pixels behind it
    on the line at ``angle`` degrees, weighted ``exp(-i² / 2σ²)`` (an ``H × W`` or
    ``H × W × C`` image; the channels blur alike)."""
    theta = math.radians(angle)
    taps = np.arange(2 * radius + 1)
    weights = np.exp(-taps ** 2 / (2 * sigma ** 2))
    weights /= weights.sum()
    out = np.zeros_like(image)
    for i, weight in zip(taps, weights, strict=True):
        dy, dx = int(i * math.sin(theta)), int(i * math.cos(theta))
        shift = (-dy, -dx) + (0,) * (image.ndim - 2)
        out += weight * ndimage.shift(image, shift, order=0, mode="nearest")
    return out


def plasma_fractal(size: int, decay: float, rng: np.random.Generator) -> Image:
    """A ``size × size`` (a power of two) diamond-square height map in [0, 1]."""
    grid = np.zeros((size, size))
    step, wibble = size, 100.0

    def wibbled(total: Image) -> Image:
        return np.asarray(total / 4 + wibble * rng.uniform(-wibble, wibble, total.shape))

    while step >= 2:
        half = step // 2
        corners = grid[0:size:step, 0:size:step]
        square = corners + np.roll(corners, -1, axis=0)
        square += np.roll(square, -1, axis=1)
        grid[half:size:step, half:size:step] = wibbled(square)
        centres = grid[half:size:step, half:size:step]
        corners = grid[0:size:step, 0:size:step]
        left = centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1)
        grid[0:size:step, half:size:step] = wibbled(left)
        top = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0)
        grid[half:size:step, 0:size:step] = wibbled(top)
        step //= 2
        wibble /= decay
    grid -= grid.min()
    return np.asarray(grid / grid.max())
