"""Common corruptions of colour images: CIFAR-10-C (Hendrycks & Dietterich, "Benchmarking Neural
Network Robustness to Common Corruptions and Perturbations", ICLR 2019), each of its corruptions
at severities 1–5 with the parameters of the authors' ``make_cifar_c.py``.

Every function takes one ``H × W × 3`` image in ``[0, 1]``, a NumPy generator and the severity.
The authors' parameters are set for 32 × 32 images; the ones given in pixels (elastic
transform's displacement and smoothing, the fog map's size) scale with the image's side here, so
a larger image gets the same corruption relative to its size. The tools are scikit-image, SciPy
and Pillow where the authors call OpenCV or ImageMagick (``cv2.filter2D`` is a correlation with
reflected borders, ``warpAffine`` a bilinear warp, ImageMagick's motion blur the kernel
:func:`bench.core.corruptions.common.motion` writes out).

Frost, the fifteenth corruption, overlays photographs of frost that ship with the authors' code;
advbench does not have them, so it evaluates the other fourteen (and says so on its boards by
their count).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
from scipy import ndimage

from bench.core.corruptions.common import Image, motion, plasma_fractal

SEVERITIES = (1, 2, 3, 4, 5)
RgbFn = Callable[[Image, np.random.Generator, int], Image]
T = TypeVar("T")


def _level(values: Sequence[T], severity: int) -> T:
    """The parameter of ``severity`` (1–5) from the authors' list of five."""
    return values[severity - 1]


def gaussian_noise(x: Image, rng: np.random.Generator, severity: int) -> Image:
    """Additive Gaussian noise, σ 0.04 … 0.10."""
    return x + rng.normal(scale=_level([0.04, 0.06, 0.08, 0.09, 0.10], severity), size=x.shape)


def shot_noise(x: Image, rng: np.random.Generator, severity: int) -> Image:
    """Poisson photon noise at 500 … 50 photons per unit of intensity."""
    rate = _level([500, 250, 100, 75, 50], severity)
    return np.asarray(rng.poisson(x * rate) / rate)


def impulse_noise(x: Image, rng: np.random.Generator, severity: int) -> Image:
    """Salt and pepper (scikit-image's) on 1% … 7% of the values."""
    from skimage.util import random_noise

    amount = _level([0.01, 0.02, 0.03, 0.05, 0.07], severity)
    return np.asarray(random_noise(x, mode="s&p", amount=amount, rng=rng))


def _disk(radius: float, alias_blur: float) -> Image:
    """The authors' defocus kernel: a disk of ``radius`` on a 17 × 17 grid, normalised, then
    OpenCV's 3 × 3 Gaussian blur (σ ``alias_blur``) to anti-alias it."""
    span = np.arange(-8, 9)
    xx, yy = np.meshgrid(span, span)
    disk = (xx ** 2 + yy ** 2 <= radius ** 2).astype(np.float64)
    disk /= disk.sum()
    taps = np.exp(-np.arange(-1, 2) ** 2 / (2 * alias_blur ** 2))
    taps /= taps.sum()
    return np.asarray(ndimage.correlate(disk, np.outer(taps, taps), mode="mirror"))


def defocus_blur(x: Image, rng: np.random.Generator, severity: int) -> Image:
    """A disk blur of radius 0.3 … 1.5 pixels."""
    radius, alias = _level([(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)], severity)
    kernel = _disk(radius, alias)
    return np.stack([ndimage.correlate(x[..., c], kernel, mode="mirror") for c in range(3)], -1)


def glass_blur(x: Image, rng: np.random.Generator, severity: int) -> Image:
    """Gaussian blur, then each pixel (bottom-right to top-left) takes the value of a random
    neighbour at most ``δ`` away, then blurred again: σ, δ and passes (0.05, 1, 1) … (0.4, 1, 2).
    The authors' swap of two pixel vectors assigns through NumPy views, so the first pixel takes
    the neighbour's colour and the neighbour keeps its own: that is what CIFAR-10-C holds, and
    what this does."""
    from skimage.filters import gaussian

    sigma, delta, passes = _level([(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2),
                                   (0.4, 1, 2)], severity)
    out = np.floor(gaussian(x, sigma=sigma, channel_axis=-1) * 255).astype(np.uint8)
    h, w = out.shape[:2]
    for _ in range(passes):
        for row in range(h - delta, delta, -1):
            for col in range(w - delta, delta, -1):
                dx, dy = rng.integers(-delta, delta, size=2)
                out[row, col] = out[row + dy, col + dx]
    return np.asarray(gaussian(out / 255.0, sigma=sigma, channel_axis=-1))


def motion_blur(x: Image, rng: np.random.Generator, severity: int) -> Image:
    """ImageMagick's motion blur, radius and σ (6, 1) … (9, 2.5), at a random angle in
    [-45°, 45°]."""
    radius, sigma = _level([(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)], severity)
    return motion(x, radius, sigma, rng.uniform(-45, 45))


def _clipped_zoom(x: Image, factor: float) -> Image:
    """The centre of ``x`` zoomed by ``factor`` (bilinear), cropped back to ``x``'s size."""
    h, w = x.shape[:2]
    ch, cw = int(np.ceil(h / factor)), int(np.ceil(w / factor))
    top, left = (h - ch) // 2, (w - cw) // 2
    zoomed = ndimage.zoom(x[top:top + ch, left:left + cw], (factor, factor) + (1,) *
                          (x.ndim - 2), order=1)
    trim_top, trim_left = (zoomed.shape[0] - h) // 2, (zoomed.shape[1] - w) // 2
    return np.asarray(zoomed[trim_top:trim_top + h, trim_left:trim_left + w])


def zoom_blur(x: Image, rng: np.random.Generator, severity: int) -> Image:
    """The mean of the image and its centre zoomed by 1, 1.01, … up to 1.05 … 1.25."""
    top = _level([1.06, 1.11, 1.16, 1.21, 1.26], severity)
    factors = np.arange(1, top, 0.01)
    out = sum((_clipped_zoom(x, float(f)) for f in factors), np.zeros_like(x))
    return np.asarray((x + out) / (len(factors) + 1))


def snow(x: Image, rng: np.random.Generator, severity: int) -> Image:
    """Flakes: a Gaussian layer zoomed, thresholded and motion-blurred (angle in [-135°,
    -45°]), added with its half-turn copy to the image brightened towards its gray level."""
    loc, scale, zoom, cut, radius, sigma, keep = _level([
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)], severity)
    layer = _clipped_zoom(rng.normal(loc=loc, scale=scale, size=x.shape[:2]), zoom)
    layer[layer < cut] = 0
    layer = np.floor(np.clip(layer, 0, 1) * 255) / 255  # the authors pass it through a PNG
    layer = motion(layer, radius, sigma, rng.uniform(-135, -45))[..., None]
    gray = (x @ np.array([0.299, 0.587, 0.114]))[..., None]
    x = keep * x + (1 - keep) * np.maximum(x, gray * 1.5 + 0.5)
    return np.asarray(x + layer + np.rot90(layer, k=2))


def fog(x: Image, rng: np.random.Generator, severity: int) -> Image:
    """A plasma fractal (strength 0.2 … 1.5, decay 3 … 1.75) added, rescaled to the image's
    peak; the fractal's side is the image's rounded up to a power of two (32 for CIFAR)."""
    strength, decay = _level([(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)], severity)
    h, w = x.shape[:2]
    size = 1 << max(5, int(np.ceil(np.log2(max(h, w)))))
    peak = x.max()
    out = x + strength * plasma_fractal(size, decay, rng)[:h, :w, None]
    return np.asarray(out * peak / (peak + strength))


def brightness(x: Image, rng: np.random.Generator, severity: int) -> Image:
    """+0.05 … +0.3 on HSV's value channel."""
    from skimage.color import hsv2rgb, rgb2hsv

    hsv = rgb2hsv(x)
    hsv[..., 2] = np.clip(hsv[..., 2] + _level([0.05, 0.1, 0.15, 0.2, 0.3], severity), 0, 1)
    return np.asarray(hsv2rgb(hsv))


def contrast(x: Image, rng: np.random.Generator, severity: int) -> Image:
    """Each channel pulled towards its mean, keeping 75% … 15% of the deviation."""
    keep = _level([0.75, 0.5, 0.4, 0.3, 0.15], severity)
    means = x.mean(axis=(0, 1), keepdims=True)
    return np.asarray((x - means) * keep + means)


def elastic_transform(x: Image, rng: np.random.Generator, severity: int) -> Image:
    """A random affine map (three points moved by up to 8% … 3% of the side; reflected
    borders), then a smooth random displacement field (amplitude 0 … 10% of the side, smoothed
    by σ 20% … 3% of it), both bilinear."""
    from skimage.filters import gaussian
    from skimage.transform import AffineTransform, warp

    side = min(x.shape[:2])
    alpha, sigma, affine = (side * v for v in _level([
        (0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05),
        (0.1, 0.03, 0.03)], severity))
    h, w = x.shape[:2]
    centre, square = np.array([w // 2, h // 2], dtype=np.float64), side // 3
    src = np.array([centre + square, [centre[0] + square, centre[1] - square],
                    centre - square])
    dst = src + rng.uniform(-affine, affine, size=src.shape)
    # the affine map taking the three points to their moved places (OpenCV's
    # getAffineTransform): [x y 1] · M = [x' y']
    solved = np.linalg.solve(np.hstack([src, np.ones((3, 1))]), dst)
    forward = AffineTransform(matrix=np.vstack([solved.T, [0, 0, 1]]))
    x = np.asarray(warp(x, inverse_map=forward.inverse, order=1, mode="reflect"))
    dx, dy = (gaussian(rng.uniform(-1, 1, size=(h, w)), sigma=sigma, mode="reflect",
                       truncate=3) * alpha for _ in range(2))
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([ndimage.map_coordinates(x[..., c], [rows + dy, cols + dx], order=1,
                                             mode="reflect") for c in range(3)], -1)


def pixelate(x: Image, rng: np.random.Generator, severity: int) -> Image:
    """Shrunk to 95% … 65% of the side and enlarged back, both with Pillow's box filter."""
    from PIL import Image as PILImage

    factor = _level([0.95, 0.9, 0.85, 0.75, 0.65], severity)
    h, w = x.shape[:2]
    small = (int(w * factor), int(h * factor))

    def channel(c: Image) -> Image:
        image = PILImage.fromarray(c.astype(np.float32), mode="F")
        box = PILImage.Resampling.BOX
        return np.asarray(image.resize(small, box).resize((w, h), box), dtype=np.float64)

    return np.stack([channel(x[..., c]) for c in range(3)], -1)


def jpeg_compression(x: Image, rng: np.random.Generator, severity: int) -> Image:
    """Saved as JPEG (Pillow) at quality 80 … 40 and read back."""
    from PIL import Image as PILImage

    quality = _level([80, 65, 58, 50, 40], severity)
    buffer = io.BytesIO()
    PILImage.fromarray(np.round(x * 255).astype(np.uint8), mode="RGB").save(
        buffer, "JPEG", quality=quality)
    buffer.seek(0)
    return np.asarray(PILImage.open(buffer).convert("RGB"), dtype=np.float64) / 255


CIFAR10_C: dict[str, tuple[RgbFn, str]] = {
    "gaussian_noise": (gaussian_noise, "Gaussian noise"),
    "shot_noise": (shot_noise, "Poisson noise"),
    "impulse_noise": (impulse_noise, "salt and pepper"),
    "defocus_blur": (defocus_blur, "disk blur"),
    "glass_blur": (glass_blur, "blur, local pixel moves, blur"),
    "motion_blur": (motion_blur, "blur along a random direction"),
    "zoom_blur": (zoom_blur, "blur towards the centre"),
    "snow": (snow, "falling flakes"),
    "fog": (fog, "plasma-fractal haze"),
    "brightness": (brightness, "brighter"),
    "contrast": (contrast, "lower contrast"),
    "elastic_transform": (elastic_transform, "affine and elastic warp"),
    "pixelate": (pixelate, "box down- and up-sampling"),
    "jpeg_compression": (jpeg_compression, "JPEG artefacts"),
}
"""CIFAR-10-C's corruptions in the paper's order (frost left out, see the module's doc): the
function and what it does."""
