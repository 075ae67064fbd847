"""Decoupled Direction and Norm (DDN): Rony, Hafemann, Oliveira, Ben Ayed, Sabourin & Granger,
"Decoupling Direction and Norm for Efficient Gradient-Based L2 Adversarial Attacks and
Defenses", CVPR 2019 — a minimal L2 attack.

Each step moves along the normalised cross-entropy gradient (step size annealed from 1 to 0.01
by a cosine; the direction is computed so that a saturated softmax cannot underflow it,
:func:`bench.core.losses.cross_entropy_direction_loss`) and then rescales the perturbation to a norm ε kept per sample: ε shrinks by
1 − γ while the iterate is adversarial and grows by 1 + γ while it is not (Algorithm 1). The
smallest adversarial seen is kept. A zero gradient is replaced by a random direction drawn from
the attack's generator, as the authors do. Reports per-sample norms (``eps = None``); given an
eps, a sample leaves once it has an adversarial within it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attacks.fmn import RadiusRows, cosine_anneal
from bench.core.attack_registry import register_attack
from bench.core.calls import ModelCalls
from bench.core.errors import BadInput
from bench.core.losses import cross_entropy_direction_loss
from bench.core.norms import Norm, eps_limit, l2_norm
from bench.core.result import AttackResult
from bench.core.target import Target


@dataclass(frozen=True)
class DDNParams:
    """``steps``: iterations (AttackBench: 1000). ``gamma``: the norm's factor (0.05).
    ``init_norm``: the first ε (1.0). ``levels``: quantise each iterate to that many pixel
    levels (255 for 8-bit images, as the paper's attack does), None to leave it real."""

    steps: int = 1000
    gamma: float = 0.05
    init_norm: float = 1.0
    levels: int | None = None

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise BadInput(f"steps must be >= 1, got {self.steps}")
        if not 0 < self.gamma < 1:
            raise BadInput(f"gamma must lie in (0, 1), got {self.gamma}")
        if self.init_norm <= 0:
            raise BadInput(f"init_norm must be > 0, got {self.init_norm}")
        if self.levels is not None and self.levels < 2:
            raise BadInput(f"levels must be >= 2, got {self.levels}")


def _direction(grad: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The unit-L2 gradient; a random unit direction where the gradient is zero."""
    size = l2_norm(grad)
    flat = size < 1e-12
    if bool(flat.any()):
        noise = torch.randn(grad[flat].shape, generator=generator, device=generator.device)
        grad = grad.clone()
        grad[flat] = noise.to(grad)
        size = l2_norm(grad)
    return grad / size.clamp_min(1e-12).view(-1, *([1] * (grad.ndim - 1))).to(grad.dtype)


def ddn_core(calls: ModelCalls, x: torch.Tensor, y: torch.Tensor, *, params: DDNParams,
             generator: torch.Generator, stop_at: float | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Untargeted DDN; returns (x_adv, its L2 distance to x, inf where no adversarial was
    found). Samples misclassified from the start keep ``x`` (distance 0)."""
    lo, hi = calls.target.bounds
    n, view = x.shape[0], (-1,) + (1,) * (x.ndim - 1)
    best = x.clone()
    best_norm = torch.full((n,), float("inf"), device=x.device)
    worst = l2_norm(torch.maximum(x - lo, hi - x))
    rows = RadiusRows(torch.arange(n, device=x.device), torch.zeros_like(x),
                 torch.full((n,), params.init_norm, device=x.device))
    leave_at = 0.0 if stop_at is None else eps_limit(Norm.L2, stop_at, hi - lo)
    for step in range(params.steps):
        if len(rows) == 0:
            break
        idx, x0 = rows.index, x[rows.index]
        _, logits, grad = calls.loss_and_grad(x0 + rows.delta, y[idx],
                                              cross_entropy_direction_loss)
        fooled = logits.argmax(1) != y[idx]
        size = l2_norm(rows.delta)
        closer = fooled & (size < best_norm[idx])
        best[idx[closer]] = (x0 + rows.delta)[closer]
        best_norm[idx[closer]] = size[closer]
        alpha = cosine_anneal(1.0, 0.01, step, params.steps)
        delta = rows.delta + alpha * _direction(grad, generator)
        factor = torch.where(fooled, 1 - params.gamma, 1 + params.gamma)
        rows.radius = torch.minimum(rows.radius * factor, worst[idx])
        delta = delta * (rows.radius / l2_norm(delta).clamp_min(1e-12)).view(view).to(x.dtype)
        moved = (x0 + delta).clamp(lo, hi)
        if params.levels is not None:
            span = hi - lo
            moved = ((moved - lo) / span * (params.levels - 1)).round() / (params.levels - 1) \
                * span + lo
        rows.delta = moved - x0
        rows.keep(best_norm[idx] > leave_at)
    return best, best_norm


def _ddn_cost(params: DDNParams, n: int, num_classes: int, n_fit: int) -> tuple[int, int]:
    return n * params.steps, n * params.steps


@register_attack("ddn", params=DDNParams, norms=(Norm.L2,), minimal=True, cost=_ddn_cost)
def ddn(
    target: Target, x: torch.Tensor, y: torch.Tensor, *, eps: float | None, norm: Norm,
    generator: torch.Generator, params: DDNParams, y_target: torch.Tensor | None = None,
) -> AttackResult:
    """Decoupled Direction and Norm, minimal L2 perturbation (Rony et al. 2019)."""
    calls = ModelCalls(target)
    best, best_norm = ddn_core(calls, x, y, params=params, generator=generator, stop_at=eps)
    return AttackResult.build(x, best, torch.isfinite(best_norm), calls)


__all__ = ["DDNParams", "ddn", "ddn_core"]
