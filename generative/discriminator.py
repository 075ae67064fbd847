"""The discriminator as an attack target, and the data it is evaluated on.

A discriminator returns one logit ``d`` per image (high = real). As a :class:`~bench.core.target.Target`
of kind ``discriminator`` it is exposed as the two logits ``[0, d]`` over advbench's [0, 1] pixel
space (the GAN's [-1, 1] mapping, mean = std = 0.5, lives inside the target), so class 1 = real,
class 0 = fake and every registered attack runs on it unchanged.

Its evaluation set is per *direction*: ``real->fake`` attacks held-out real images (label 1),
``fake->real`` attacks samples of the GAN's generator (label 0). Both halves have ``n_eval``
images, drawn reproducibly from the sweep's seed, so the set is balanced.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import torch
from torch import nn

from bench.core.errors import BadInput, ModelOutputError
from bench.core.target import Target


class Direction(enum.StrEnum):
    """Which way a discriminator is attacked: real images pushed to "fake", or generator
    samples pushed to "real"."""

    REAL_TO_FAKE = "real->fake"
    FAKE_TO_REAL = "fake->real"


DIRECTIONS: tuple[Direction, ...] = tuple(Direction)
REAL, FAKE = 1, 0
_EVAL_NOISE_SEED = 7_919  # fakes for evaluation: noise seeded by (this, sweep seed)
_FIT_NOISE_SEED = 104_729  # fakes a fitted attack (UAP) trains on: another stream
_CALIBRATION_NOISE_SEED = 1_299_709  # fakes a critic's threshold is calibrated on: a third


def discriminator_target(model: nn.Module, image_shape: Sequence[int], *,
                         name: str = "discriminator") -> Target:
    """Wrap a one-logit discriminator working in [-1, 1] as a two-class Target over [0, 1].

    Probes the model with a batch of two images, so one with more than one output fails here,
    with a clear message, rather than inside an attack.
    """
    shape = tuple(int(s) for s in image_shape)
    channels = shape[0]
    target = Target(model, num_classes=2, input_shape=shape, bounds=(0.0, 1.0),
                    mean=[0.5] * channels, std=[0.5] * channels, kind="discriminator", name=name)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with torch.no_grad(), target.evaluating():
        try:
            target(torch.full((2, *shape), 0.5, device=device))
        except ModelOutputError as exc:
            raise ModelOutputError(f"{exc}; expose the real/fake logit only") from None
        except RuntimeError as exc:
            raise BadInput(f"discriminator {name!r} cannot take [N, {', '.join(map(str, shape))}] "
                           f"images: {exc}") from None
    return target


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """Generator output in [-1, 1] → advbench's [0, 1] pixel space."""
    return ((images + 1) / 2).clamp_(0.0, 1.0)


def check_generator(generator: nn.Module, z_dim: int, target: Target) -> None:
    """Raise :class:`BadInput` unless ``generator`` makes images ``target`` can judge: the same
    shape, and values in [-1, 1] (a tanh output)."""
    device = target.device
    was = generator.training
    generator.eval()
    try:
        with torch.no_grad():
            out = generator(torch.randn(2, z_dim, device=device,
                                        generator=torch.Generator(device).manual_seed(0)))
    except RuntimeError as exc:
        raise BadInput(f"the generator cannot take [N, {z_dim}] noise: {exc}") from None
    finally:
        generator.train(was)
    if tuple(out.shape[1:]) != target.input_shape:
        raise BadInput(
            f"the generator makes images of shape {tuple(out.shape[1:])}, but discriminator "
            f"{target.name!r} takes {target.input_shape}; match the generator's output to it")
    lo, hi = float(out.min()), float(out.max())
    if not (-1.0 - 1e-6 <= lo and hi <= 1.0 + 1e-6):
        raise BadInput(
            f"the generator's output lies in [{lo:.3g}, {hi:.3g}], but the discriminator takes "
            f"images in [-1, 1]; end the generator with a tanh")


@torch.no_grad()
def sample(generator: nn.Module, z_dim: int, n: int, seed: int, device: torch.device,
           batch_size: int = 500) -> torch.Tensor:
    """``n`` generator samples in [0, 1], from noise seeded by ``seed`` (drawn on the CPU, so the
    same seed gives the same noise on every device); the generator runs in eval mode."""
    z = torch.randn(n, z_dim, generator=torch.Generator().manual_seed(seed))
    was = generator.training
    generator.eval()
    try:
        out = [to_pixels(generator(chunk.to(device)).float()) for chunk in z.split(batch_size)]
    finally:
        generator.train(was)
    return torch.cat(out) if out else torch.empty(0, device=device)


def eval_noise_seed(seed: int) -> int:
    return _EVAL_NOISE_SEED * 1_000 + seed


def fit_noise_seed(seed: int) -> int:
    return _FIT_NOISE_SEED * 1_000 + seed


def calibration_noise_seed(seed: int) -> int:
    """The noise of the generated images a critic's real/fake threshold is calibrated on."""
    return _CALIBRATION_NOISE_SEED * 1_000 + seed


__all__ = ["DIRECTIONS", "Direction", "REAL", "FAKE", "discriminator_target", "check_generator",
           "sample", "to_pixels", "eval_noise_seed", "fit_noise_seed", "calibration_noise_seed"]
