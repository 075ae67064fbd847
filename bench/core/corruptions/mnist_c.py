"""Common corruptions of grayscale digits: the 15 of MNIST-C (Mu & Gilmer, "MNIST-C: A
Robustness Benchmark for Computer Vision", ICML 2019 Workshop on Uncertainty and Robustness),
each at the one severity the benchmark fixes, computed from the clean test digits.

Every corruption is a function of one image in ``[0, 1]`` (``H × W``) and a NumPy generator
(:func:`bench.core.corruptions.corrupt` draws it per image). The
geometry (shear, scale, rotate, translate), the Gaussian filters, salt-and-pepper noise and
Canny edges are scikit-image's, as in the benchmark's own code; ImageMagick's motion blur (which
the benchmark calls through Wand) is its kernel written out: ``2·radius + 1`` taps along a random
angle in [-45°, 45°] weighted ``exp(-i² / 2σ²)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bench.core.corruptions.common import Image, motion, plasma_fractal

CorruptionFn = Callable[[Image, np.random.Generator], Image]


@dataclass(frozen=True)
class Corruption:
    """A corruption at MNIST-C's severity: ``fn(image, rng)``, that severity (of the 1–5 scale
    the benchmark's code defines; 0 for the corruptions with no scale), what it does."""

    name: str
    fn: CorruptionFn
    severity: int
    summary: str


def _about_centre(image: Image, **params: float | tuple[float, float]) -> Image:
    """``image`` warped by the affine map ``params`` (scikit-image's ``AffineTransform``
    arguments) as an inverse map, about the image centre (bilinear, zero outside)."""
    from skimage.transform import AffineTransform, warp

    h, w = image.shape
    matrix = AffineTransform(**params).params
    linear = matrix[:2, :2]
    centre = np.array([(w - 1) / 2, (h - 1) / 2])
    shift = centre - linear @ centre + matrix[:2, 2]
    return np.asarray(warp(image, inverse_map=AffineTransform(
        matrix=np.vstack([np.hstack([linear, shift[:, None]]), [0, 0, 1]]))))


def _sign(rng: np.random.Generator) -> float:
    return float(rng.choice([-1.0, 1.0]))


def shot_noise(image: Image, rng: np.random.Generator) -> Image:
    """Poisson photon noise at 3 photons per unit of intensity (severity 5)."""
    rate = 3.0
    return np.asarray(rng.poisson(image * rate) / rate)


def impulse_noise(image: Image, rng: np.random.Generator) -> Image:
    """Salt and pepper on 17% of the pixels (severity 4)."""
    from skimage.util import random_noise

    return np.asarray(random_noise(image, mode="s&p", amount=0.17, rng=rng))


def glass_blur(image: Image, rng: np.random.Generator) -> Image:
    """Gaussian blur (σ 0.7), two passes of random swaps of each pixel with a neighbour at most
    one pixel up or left, blurred again (severity 1)."""
    from skimage.filters import gaussian

    sigma, delta, passes = 0.7, 1, 2
    out = np.floor(gaussian(image, sigma=sigma) * 255).astype(np.uint8)
    h, w = out.shape
    for _ in range(passes):
        for row in range(h - delta, delta, -1):
            for col in range(w - delta, delta, -1):
                if rng.random() < 0.5:
                    dx, dy = rng.integers(-delta, delta, size=2)
                    r2, c2 = row + dy, col + dx
                    out[row, col], out[r2, c2] = out[r2, c2], out[row, col]
    return np.asarray(gaussian(out / 255.0, sigma=sigma))


def motion_blur(image: Image, rng: np.random.Generator) -> Image:
    """ImageMagick's motion blur (:func:`motion`), radius 10, σ 3, at a random angle in
    [-45°, 45°] (severity 1)."""
    return motion(image, 10, 3.0, rng.uniform(-45, 45))


def shear(image: Image, rng: np.random.Generator) -> Image:
    """Shear by ±0.4 (radians, random direction) about the centre (severity 2)."""
    return _about_centre(image, shear=0.4 * _sign(rng))


def scale(image: Image, rng: np.random.Generator) -> Image:
    """Shrunk to 70% about the centre (severity 3)."""
    return _about_centre(image, scale=(1 / 0.7, 1 / 0.7))


def rotate(image: Image, rng: np.random.Generator) -> Image:
    """Rotated by ±0.4 rad (about 23°, random direction) about the centre (severity 2)."""
    return _about_centre(image, rotation=0.4 * _sign(rng))


def brightness(image: Image, rng: np.random.Generator) -> Image:
    """+0.5 on HSV's value channel (severity 5); on a gray image the saturation is 0, so this is
    every pixel + 0.5, clipped."""
    return image + 0.5


def translate(image: Image, rng: np.random.Generator) -> Image:
    """Moved 3 pixels in each direction, each direction's sign random (severity 3)."""
    return _about_centre(image, translation=(3 * _sign(rng), 3 * _sign(rng)))


def stripe(image: Image, rng: np.random.Generator) -> Image:
    """The left and right quarters of the image inverted."""
    out = image.copy()
    quarter = image.shape[1] // 4
    out[:, :quarter] = 1 - out[:, :quarter]
    out[:, image.shape[1] - quarter:] = 1 - out[:, image.shape[1] - quarter:]
    return out


def fog(image: Image, rng: np.random.Generator) -> Image:
    """3 × a plasma fractal (decay 1.4) added, the result rescaled to the image's peak
    (severity 5)."""
    strength, decay = 3.0, 1.4
    h, w = image.shape
    size = 1 << max(8, math.ceil(math.log2(max(h, w))))
    peak = image.max()
    out = image + strength * plasma_fractal(size, decay, rng)[:h, :w]
    return np.asarray(out * peak / (peak + strength))


def spatter(image: Image, rng: np.random.Generator) -> Image:
    """Blobs of mud (gray 63/255) where a smoothed Gaussian field is high (severity 4)."""
    from skimage.filters import gaussian

    loc, spread, sigma, threshold, mask_sigma = 0.65, 0.3, 1.0, 0.65, 1.5
    liquid = gaussian(rng.normal(loc, spread, image.shape), sigma=sigma)
    liquid[liquid < threshold] = 0
    mask = gaussian((liquid > threshold).astype(np.float32), sigma=mask_sigma)
    mask[mask < 0.8] = 0
    return np.asarray(image * (1 - mask) + 63 / 255 * mask)


def _line(c0: float, r0: float, c1: float, r1: float, shape: tuple[int, int]) -> Image:
    """MNIST-C's anti-aliased line from column ``c0`` (row ``r0``) to ``c1`` (row ``r1``):
    1 + log(1 − d / 2.3) at vertical distance ``d`` from it, between its end columns."""
    h, w = shape
    if c1 == c0:
        return np.zeros(shape)
    cols, rows = np.meshgrid(np.arange(w, dtype=float), np.arange(h, dtype=float), sparse=True)
    slope = (r1 - r0) / (c1 - c0)
    dist = np.clip(np.abs(rows - (slope * (cols - c0) + r0)), 0, 2.3 - 1e-10)
    out = np.clip(np.log(1 - dist / 2.3) + 1, 0, 1)
    out[:, :int(math.floor(c0))] = 0
    out[:, int(math.ceil(c1)):] = 0
    return np.asarray(out)


def dotted_line(image: Image, rng: np.random.Generator) -> Image:
    """A line across the image between random rows, every other pair of columns left out."""
    h, w = image.shape
    r0, r1 = rng.integers(0, h - 1, size=2)
    line = _line(0, r0, w - 1, r1, image.shape)
    for start in range(0, w, 4):
        line[:, start:start + 2] = 0
    return image + line


def zigzag(image: Image, rng: np.random.Generator) -> Image:
    """A zigzag (segments 2 long, 2 wide) from column 2 to 25 at a random row and slope."""
    h, w = image.shape
    length = width = 2.0
    c0, c1 = 2, w - 3
    r0 = int(rng.integers(0, h - 1))
    r1 = r0 + int(rng.integers(-5, 5))
    theta = math.atan((r1 - r0) / (c1 - c0))
    d = (c1 - c0) / math.cos(theta)
    points = [(0.0, 0.0)]
    r_i = 0.0
    for i in range(int((d - length) // (2 * length)) + 1):
        r_i = (-1) ** i * width
        points.append(((2 * i + 1) * length, r_i))
    last = 2 * length * (d // (2 * length))
    if d != last:
        points.append((d, r_i / (2 * (d - last))))
    rotation = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    cs, rs = rotation @ np.array(points).T
    cs, rs = cs + c0, rs + r0
    out = image.copy()
    for i in range(1, len(cs)):
        out = np.clip(out + _line(cs[i - 1], rs[i - 1], cs[i], rs[i], image.shape), 0, 1)
    return out


def canny_edges(image: Image, rng: np.random.Generator) -> Image:
    """The image replaced by its Canny edges (scikit-image's, σ 1)."""
    from skimage.feature import canny

    return canny(image).astype(np.float64)


MNIST_C: dict[str, Corruption] = {c.name: c for c in (
    Corruption("shot_noise", shot_noise, 5, "Poisson noise"),
    Corruption("impulse_noise", impulse_noise, 4, "salt and pepper"),
    Corruption("glass_blur", glass_blur, 1, "blur, local pixel swaps, blur"),
    Corruption("motion_blur", motion_blur, 1, "blur along a random direction"),
    Corruption("shear", shear, 2, "affine shear"),
    Corruption("scale", scale, 3, "shrunk about the centre"),
    Corruption("rotate", rotate, 2, "rotation about the centre"),
    Corruption("brightness", brightness, 5, "brighter"),
    Corruption("translate", translate, 3, "moved diagonally"),
    Corruption("stripe", stripe, 0, "outer quarters inverted"),
    Corruption("fog", fog, 5, "plasma-fractal haze"),
    Corruption("spatter", spatter, 4, "mud blobs"),
    Corruption("dotted_line", dotted_line, 0, "a dotted line across"),
    Corruption("zigzag", zigzag, 0, "a zigzag across"),
    Corruption("canny_edges", canny_edges, 0, "Canny edge map"),
)}
"""MNIST-C's 15 corruptions, in the benchmark's order, at its severities."""
