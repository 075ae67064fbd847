"""Input-transformation defenses: a fixed or random step in front of the undefended model.

- ``bit_depth``: Xu, Evans & Qi, "Feature Squeezing: Detecting Adversarial Examples in Deep
  Neural Networks", NDSS 2018 — each pixel rounded to ``bits`` bits (1 bit: binarisation).
- ``jpeg``: Guo, Rana, Cisse & van der Maaten, "Countering Adversarial Images using Input
  Transformations", ICLR 2018; Dziugaite, Ghahramani & Roy 2016 — JPEG compression at
  ``quality`` through torchvision's codec.
- ``random_resize_pad``: Xie, Wang, Zhang, Ren & Yuille, "Mitigating Adversarial Effects Through
  Randomization", ICLR 2018 — per sample, a random resize to a smaller side and a random
  zero-pad back to the input size.

None of them is trained. Rounding has a zero gradient almost everywhere and the codec's uint8
round trip cuts the autograd graph, so each declares the identity as its differentiable
stand-in (BPDA, Athalye, Carlini & Wagner, ICML 2018); the resize-and-pad is differentiable but
random, which EOT averages over (same paper).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.core.datasets import Split
from bench.core.errors import BadInput
from bench.core.target import Preprocessing, Target
from defenses.base import register_defense


def _unit(x: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    lo, hi = bounds
    return (x - lo) / (hi - lo)


def _pixels(u: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    lo, hi = bounds
    return lo + (hi - lo) * u


class BitDepth(Preprocessing):
    """Round each pixel (scaled to [0, 1]) to ``bits`` bits; the stand-in is the identity."""

    summary = "bit-depth reduction"
    stand_in = "the identity"

    def __init__(self, bits: int, bounds: tuple[float, float]) -> None:
        super().__init__()
        self.levels = 2 ** bits - 1
        self.bounds = bounds

    def transform(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        u = _unit(x, self.bounds)
        return _pixels(torch.round(u * self.levels) / self.levels, self.bounds)

    def substitute(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Jpeg(Preprocessing):
    """Encode each image as JPEG at ``quality`` and decode it (uint8, through torchvision);
    the stand-in is the identity."""

    summary = "JPEG compression"
    stand_in = "the identity"

    def __init__(self, quality: int, bounds: tuple[float, float]) -> None:
        super().__init__()
        self.quality = quality
        self.bounds = bounds

    def transform(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        from torchvision.io import decode_jpeg, encode_jpeg  # torchvision's import is slow

        images = (_unit(x.detach(), self.bounds).clamp(0, 1) * 255).round().to(torch.uint8).cpu()
        decoded = [decode_jpeg(encode_jpeg(image, quality=self.quality)) for image in images]
        out = torch.stack(decoded).to(device=x.device, dtype=x.dtype) / 255
        return _pixels(out, self.bounds)

    def substitute(self, x: torch.Tensor) -> torch.Tensor:
        return x


class RandomResizePad(Preprocessing):
    """Per sample, resize to a random side in ``[min_side, side]`` and pad with the lowest pixel
    value at a random offset back to ``side`` (one bilinear resampling, differentiable)."""

    randomised = True
    summary = "random resize and pad"

    def __init__(self, min_scale: float, input_shape: tuple[int, ...],
                 bounds: tuple[float, float]) -> None:
        super().__init__()
        self.height, self.width = input_shape[-2], input_shape[-1]
        self.min_height = max(1, round(min_scale * self.height))
        self.bounds = bounds

    def transform(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, h, w = x.shape[0], self.height, self.width
        device = generator.device
        side = torch.randint(self.min_height, h + 1, (n,), generator=generator, device=device)
        scale = side.to(x.dtype) / h  # the resized image's share of each side
        new_h, new_w = side.to(x.dtype), (scale * w).round()
        top = (torch.rand(n, generator=generator, device=device) * (h - new_h + 1)).floor()
        left = (torch.rand(n, generator=generator, device=device) * (w - new_w + 1)).floor()
        theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=device)
        theta[:, 0, 0], theta[:, 1, 1] = w / new_w, h / new_h
        theta[:, 0, 2] = (w - 2 * left) / new_w - 1
        theta[:, 1, 2] = (h - 2 * top) / new_h - 1
        theta = theta.to(x.device)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        lo = self.bounds[0]
        return lo + F.grid_sample(x - lo, grid, mode="bilinear", padding_mode="zeros",
                                  align_corners=False)


@dataclass(frozen=True)
class BitDepthParams:
    """``bits``: bits per pixel kept (Xu et al.: 1 for MNIST, 4–5 for colour images)."""

    bits: int = 3

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 8:
            raise BadInput(f"bits must lie in 1..8, got {self.bits}")


@dataclass(frozen=True)
class JpegParams:
    """``quality``: the JPEG quality, 1..100 (Guo et al.: 75)."""

    quality: int = 75

    def __post_init__(self) -> None:
        if not 1 <= self.quality <= 100:
            raise BadInput(f"quality must lie in 1..100, got {self.quality}")


@dataclass(frozen=True)
class RandomResizePadParams:
    """``min_scale``: the smallest resized side as a share of the input's (24/28 px on MNIST;
    Xie et al. resize 299-px images within about 10% and pad)."""

    min_scale: float = 24 / 28

    def __post_init__(self) -> None:
        if not 0 < self.min_scale <= 1:
            raise BadInput(f"min_scale must lie in (0, 1], got {self.min_scale}")


def _build_bit_depth(base: Target, params: BitDepthParams) -> Target:
    return base.with_preprocess(BitDepth(params.bits, base.bounds),
                                f"{base.name}+bit_depth{params.bits}")


def _check_jpeg(base: Target, params: JpegParams) -> None:
    if len(base.input_shape) != 3 or base.input_shape[0] not in (1, 3):
        raise BadInput(f"jpeg compresses grayscale or RGB images [1 or 3, H, W]; target "
                       f"{base.name!r} takes {list(base.input_shape)}")


def _build_jpeg(base: Target, params: JpegParams) -> Target:
    return base.with_preprocess(Jpeg(params.quality, base.bounds),
                                f"{base.name}+jpeg{params.quality}")


def _check_images(base: Target, params: RandomResizePadParams) -> None:
    if len(base.input_shape) != 3:
        raise BadInput(f"random_resize_pad resizes images [C, H, W]; target {base.name!r} "
                       f"takes {list(base.input_shape)}")


def _build_random_resize_pad(base: Target, params: RandomResizePadParams) -> Target:
    return base.with_preprocess(
        RandomResizePad(params.min_scale, base.input_shape, base.bounds),
        f"{base.name}+random_resize_pad")


@register_defense("bit_depth", params=BitDepthParams, build=_build_bit_depth, trainable=False)
def bit_depth(base: Target, train: Split, params: BitDepthParams, generator: torch.Generator,
              *, progress: bool = True) -> Target:
    """Bit-depth reduction (Xu et al., NDSS 2018); BPDA stand-in: the identity."""
    return _build_bit_depth(base, params)


@register_defense("jpeg", params=JpegParams, build=_build_jpeg, check=_check_jpeg,
                  trainable=False)
def jpeg(base: Target, train: Split, params: JpegParams, generator: torch.Generator, *,
         progress: bool = True) -> Target:
    """JPEG compression (Guo et al., ICLR 2018); BPDA stand-in: the identity."""
    return _build_jpeg(base, params)


@register_defense("random_resize_pad", params=RandomResizePadParams,
                  build=_build_random_resize_pad, check=_check_images, trainable=False)
def random_resize_pad(base: Target, train: Split, params: RandomResizePadParams,
                      generator: torch.Generator, *, progress: bool = True) -> Target:
    """Random resizing and padding (Xie et al., ICLR 2018): randomised; attacked with EOT."""
    return _build_random_resize_pad(base, params)
