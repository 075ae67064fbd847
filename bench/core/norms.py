"""Everything norm-specific, in one place: per-sample norms, projection onto the eps ball,
steepest-ascent directions and random starts (Foolbox 3's three overrides, as functions).

Shapes: ``delta`` and ``grad`` are batches ``[N, ...]``; per-sample results are ``[N]``.
"""

from __future__ import annotations

import math
from enum import Enum

import torch


class Norm(str, Enum):
    """The threat-model norms advbench knows. ``l0`` counts changed pixel positions."""

    LINF = "linf"
    L2 = "l2"
    L0 = "l0"

    @classmethod
    def parse(cls, value: str | Norm) -> Norm:
        from bench.core.errors import BadInput

        try:
            return cls(str(value.value if isinstance(value, Norm) else value).lower())
        except ValueError:
            raise BadInput(
                f"unknown norm {value!r}; use one of {', '.join(n.value for n in cls)}"
            ) from None


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], math.prod(t.shape[1:]))


def l2_norm(delta: torch.Tensor) -> torch.Tensor:
    return _flat(delta).float().norm(p=2, dim=1)


def linf_norm(delta: torch.Tensor) -> torch.Tensor:
    flat = _flat(delta)
    if flat.shape[1] == 0:
        return torch.zeros(flat.shape[0], device=delta.device)
    return flat.float().abs().amax(dim=1)


def l0_norm(delta: torch.Tensor) -> torch.Tensor:
    """Changed pixel positions: for ``[N, C, H, W]`` a position counts once whatever its channels."""
    changed = delta != 0
    if delta.ndim == 4:
        changed = changed.any(dim=1)
    return _flat(changed).sum(dim=1).float()


def norm_of(delta: torch.Tensor, norm: Norm) -> torch.Tensor:
    return {Norm.LINF: linf_norm, Norm.L2: l2_norm, Norm.L0: l0_norm}[norm](delta)


EPS_RTOL, EPS_ATOL = 1e-5, 1e-6
"""Float slack of "inside the eps ball": relative to eps, and absolute in units of the pixel
range (an iterate projected onto the ball in fp32 may land a rounding error outside it)."""


def eps_limit(norm: Norm | str, eps: float, span: float = 1.0) -> float:
    """The largest ``norm`` a perturbation may have and still count as inside the ``eps`` ball,
    for pixels spanning ``span`` (hi - lo): eps itself for ``l0`` (a whole pixel count), eps
    with :data:`EPS_RTOL` / :data:`EPS_ATOL` float slack otherwise. The one definition the
    runner's verification, the cascade, the minimal attacks' budgets and the boards share."""
    if Norm.parse(norm) is Norm.L0:
        return float(eps)
    return float(eps) * (1 + EPS_RTOL) + EPS_ATOL * span


def within_eps(delta: torch.Tensor, norm: Norm, eps: float, span: float = 1.0) -> torch.Tensor:
    """``[N]`` bool: each sample of ``delta`` lies inside the ``eps`` ball (:func:`eps_limit`)."""
    return norm_of(delta, norm) <= eps_limit(norm, eps, span)


def project(delta: torch.Tensor, norm: Norm, eps: float) -> torch.Tensor:
    """Project each sample of ``delta`` onto the ``norm`` ball of radius ``eps``."""
    if norm is Norm.LINF:
        return delta.clamp(-eps, eps)
    if norm is Norm.L2:
        scale = (eps / l2_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
        return delta * scale.view(-1, *([1] * (delta.ndim - 1))).to(delta.dtype)
    raise ValueError(f"projection onto the {norm.value} ball is not defined here")


def steepest_direction(grad: torch.Tensor, norm: Norm) -> torch.Tensor:
    """The unit-norm direction of steepest ascent for ``grad`` under ``norm``."""
    if norm is Norm.LINF:
        return grad.sign()
    if norm is Norm.L2:
        return grad / l2_norm(grad).clamp_min(1e-12).view(-1, *([1] * (grad.ndim - 1))).to(grad.dtype)
    raise ValueError(f"no steepest direction for the {norm.value} norm")


def _rand(shape: torch.Size, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    out = torch.rand(shape, generator=generator, device=generator.device)
    return out.to(device=like.device, dtype=like.dtype)


def _randn(shape: torch.Size, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    out = torch.randn(shape, generator=generator, device=generator.device)
    return out.to(device=like.device, dtype=like.dtype)


def random_start(x: torch.Tensor, norm: Norm, eps: float, generator: torch.Generator) -> torch.Tensor:
    """A perturbation drawn uniformly from the ``norm`` ball of radius ``eps`` (Madry et al. 2018)."""
    if norm is Norm.LINF:
        return (2 * _rand(x.shape, generator, x) - 1) * eps
    if norm is Norm.L2:
        direction = _randn(x.shape, generator, x)
        direction = direction / l2_norm(direction).clamp_min(1e-12).view(-1, *([1] * (x.ndim - 1)))
        dim = math.prod(x.shape[1:])
        radius = _rand(torch.Size([x.shape[0]]), generator, x) ** (1.0 / dim) * eps
        return direction * radius.view(-1, *([1] * (x.ndim - 1)))
    raise ValueError(f"no random start for the {norm.value} norm")
