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
    L1 = "l1"
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


def l1_norm(delta: torch.Tensor) -> torch.Tensor:
    return _flat(delta).float().abs().sum(dim=1)


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
    return {Norm.LINF: linf_norm, Norm.L2: l2_norm, Norm.L1: l1_norm, Norm.L0: l0_norm}[norm](delta)


DUAL_EXPONENT = {Norm.LINF: 1.0, Norm.L2: 2.0, Norm.L1: float("inf")}
"""The exponent q of each norm's dual (1/p + 1/q = 1): the distance of a point to a linear
boundary ``w·x = b`` in the p-norm is ``|w·x - b| / ||w||_q``."""


def dual_norm(grad: torch.Tensor, norm: Norm) -> torch.Tensor:
    """``[N]``: the dual norm of each sample of ``grad`` (L0 has none; it is refused)."""
    if norm not in DUAL_EXPONENT:
        raise ValueError(f"the {norm.value} norm has no dual norm")
    return _flat(grad).float().norm(p=DUAL_EXPONENT[norm], dim=1)


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


def _per_sample(eps: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``eps`` as an ``[N]`` float tensor on ``like``'s device."""
    out = torch.as_tensor(eps, dtype=torch.float32, device=like.device)
    return out.expand(like.shape[0]) if out.ndim == 0 else out.float()


def project(delta: torch.Tensor, norm: Norm, eps: float | torch.Tensor) -> torch.Tensor:
    """Project each sample of ``delta`` onto the ``norm`` ball of radius ``eps`` (a number, or
    one radius per sample): the closest point in L2 for Linf, L2 and L1 (Duchi et al., ICML
    2008, for L1); for L0, the ``eps`` pixel positions of largest change kept (the closest
    point in every Lp)."""
    if norm is Norm.LINF and not isinstance(eps, torch.Tensor):
        return delta.clamp(-eps, eps)
    radius = _per_sample(eps, delta)
    view = (-1, *([1] * (delta.ndim - 1)))
    if norm is Norm.LINF:
        bound = radius.view(view).to(delta.dtype)
        return torch.maximum(torch.minimum(delta, bound), -bound)
    if norm is Norm.L2:
        scale = (radius / l2_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
        return delta * scale.view(view).to(delta.dtype)
    if norm is Norm.L1:
        return _project_l1(delta, radius)
    return _project_l0(delta, radius)


def _project_l1(delta: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Euclidean projection onto the L1 ball by sorting (Duchi et al. 2008, Fig. 1): soft
    thresholding at the θ that makes the L1 norm equal the radius."""
    flat = _flat(delta).float()
    magnitude = flat.abs()
    ranked = magnitude.sort(dim=1, descending=True).values
    excess = ranked.cumsum(dim=1) - radius[:, None]
    index = torch.arange(1, flat.shape[1] + 1, device=flat.device, dtype=flat.dtype)
    support = (ranked - excess / index > 0) * index
    rho = support.amax(dim=1).clamp_min(1).long()
    theta = (excess.gather(1, rho[:, None] - 1) / rho[:, None]).clamp_min(0)
    shrunk = (magnitude - theta).clamp_min(0).copysign(flat)
    inside = (magnitude.sum(dim=1) <= radius)[:, None]
    return torch.where(inside, flat, shrunk).to(delta.dtype).view_as(delta)


def project_l1_box(delta: torch.Tensor, x: torch.Tensor, eps: float | torch.Tensor,
                   bounds: tuple[float, float], iterations: int = 48) -> torch.Tensor:
    """The closest point (in L2) to ``delta`` with ``||d||_1 <= eps`` and ``x + d`` inside
    ``bounds``: ``d_i = sign(δ_i) · clip(|δ_i| − θ, 0, room_i)`` with room_i the box's room in
    δ_i's direction and θ >= 0 the smallest soft threshold that meets the budget (Croce &
    Hein, "Mind the box: l1-APGD for sparse adversarial attacks on image classifiers", ICML
    2021, Lemma 2.1), found by bisection; θ is taken from the feasible end of the bracket, so
    the L1 norm never exceeds eps."""
    lo, hi = bounds
    flat, base = _flat(delta).float(), _flat(x).float()
    room = torch.where(flat > 0, hi - base, base - lo).clamp_min(0)
    magnitude = flat.abs()
    radius = _per_sample(eps, delta)[:, None]

    def spent(theta: torch.Tensor) -> torch.Tensor:
        return torch.minimum((magnitude - theta).clamp_min(0), room).sum(dim=1, keepdim=True)

    low = torch.zeros_like(radius)
    high = magnitude.amax(dim=1, keepdim=True)
    for _ in range(iterations):
        mid = (low + high) / 2
        over = spent(mid) > radius
        low, high = torch.where(over, mid, low), torch.where(over, high, mid)
    theta = torch.where(spent(torch.zeros_like(radius)) <= radius, 0.0, high)
    shrunk = torch.minimum((magnitude - theta).clamp_min(0), room).copysign(flat)
    return shrunk.to(delta.dtype).view_as(delta)


def _project_l0(delta: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Keep each sample's ``radius`` pixel positions of largest change (a position's largest
    channel), zero the rest; ties broken by position."""
    changed = delta.abs().amax(dim=1) if delta.ndim == 4 else delta.abs()
    scores = _flat(changed)
    rank = scores.argsort(dim=1, descending=True, stable=True).argsort(dim=1)
    keep = (rank < radius.floor()[:, None]).view(changed.shape)
    return delta * (keep.unsqueeze(1) if delta.ndim == 4 else keep).to(delta.dtype)


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
