"""EAD, the elastic-net attack: Chen, Sharma, Zhang, Yi & Hsieh, "EAD: Elastic-Net Attacks to
Deep Neural Networks via Adversarial Examples", AAAI 2018 — a minimal L1 attack.

For each sample's constant c (binary search, as Carlini & Wagner's), FISTA minimises
c · max(z_y − max_{j≠y} z_j, −κ) + ‖x' − x‖₂² + β‖x' − x‖₁ over the box: a gradient step on
the smooth part from the momentum point, then the projected shrinkage-thresholding operator
(coordinates within β of x snap back to it, the others move β towards it, then into the box),
with the step size decaying as √(1 − k/K). Each step's thresholded point is checked (a second
forward pass, as in the authors' and foolbox's code); the smallest adversarial in L1 (the
paper's L1 decision rule) is kept. Reports per-sample L1
norms (``eps = None``); given an eps, a sample leaves once it has an adversarial within it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from attacks.cw import binary_search
from bench.core.attack_registry import register_attack
from bench.core.calls import ModelCalls
from bench.core.errors import BadInput
from bench.core.losses import margin_loss
from bench.core.norms import Norm, l1_norm
from bench.core.result import AttackResult
from bench.core.target import Target


@dataclass(frozen=True)
class EADParams:
    """``search_steps``: binary-search steps over c (9). ``steps``: FISTA steps per search step
    (the paper's 1000). ``lr``: the initial step size (0.01). ``beta``: the L1 weight β
    (0.001 in the paper's L1 experiments). ``initial_const``: the first c (0.001).
    ``confidence``: the margin κ (0)."""

    search_steps: int = 9
    steps: int = 1000
    lr: float = 0.01
    beta: float = 1e-3
    initial_const: float = 1e-3
    confidence: float = 0.0

    def __post_init__(self) -> None:
        for name in ("search_steps", "steps"):
            if getattr(self, name) < 1:
                raise BadInput(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.initial_const <= 0 or self.beta < 0:
            raise BadInput("lr and initial_const must be > 0 and beta >= 0")
        if self.confidence < 0:
            raise BadInput(f"confidence must be >= 0, got {self.confidence}")


def shrink(z: torch.Tensor, x: torch.Tensor, beta: float, bounds: tuple[float, float]
           ) -> torch.Tensor:
    """The projected shrinkage-thresholding operator (EAD, eq. 5)."""
    lo, hi = bounds
    gap = z - x
    moved = torch.where(gap > beta, (z - beta).clamp(max=hi), (z + beta).clamp(min=lo))
    return torch.where(gap.abs() <= beta, x, moved)


def _search_step(calls: ModelCalls, x: torch.Tensor, y: torch.Tensor, const: torch.Tensor,
                 params: EADParams, best: torch.Tensor, best_norm: torch.Tensor
                 ) -> torch.Tensor:
    """One FISTA run at each sample's constant; updates ``best``/``best_norm`` in place and
    returns which samples it found an adversarial for."""
    bounds = calls.target.bounds
    view = (-1,) + (1,) * (x.ndim - 1)
    current, slack = x.clone(), x.clone()
    found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for k in range(params.steps):
        margin, _, grad = calls.loss_and_grad(slack, y, margin_loss)
        hinge = (margin < params.confidence).view(view).to(grad.dtype)  # f above -κ
        smooth = -const.view(view).to(grad.dtype) * grad * hinge + 2 * (slack - x)
        lr = params.lr * math.sqrt(1 - k / params.steps)
        previous, current = current, shrink(slack - lr * smooth, x, params.beta, bounds)
        slack = current + k / (k + 3) * (current - previous)
        fooled = calls.logits(current).argmax(1) != y
        size = l1_norm(current - x)
        closer = fooled & (size < best_norm)
        best[closer], best_norm[closer] = current[closer], size[closer]
        found |= fooled
    return found


def ead_core(calls: ModelCalls, x: torch.Tensor, y: torch.Tensor, *, params: EADParams,
             stop_at: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Untargeted EAD; returns (x_adv, its L1 distance to x, inf where none was found).
    Samples misclassified from the start keep ``x`` (distance 0)."""
    def step(todo: torch.Tensor, const: torch.Tensor, best: torch.Tensor,
             best_norm: torch.Tensor) -> torch.Tensor:
        return _search_step(calls, x[todo], y[todo], const, params, best, best_norm)

    return binary_search(calls, x, y, step, norm=Norm.L1, search_steps=params.search_steps,
                         initial_const=params.initial_const, stop_at=stop_at)


def _ead_cost(params: EADParams, n: int, num_classes: int, n_fit: int) -> tuple[int, int]:
    calls = n * params.search_steps * params.steps
    return n + 2 * calls, calls


@register_attack("ead", params=EADParams, norms=(Norm.L1,), minimal=True, cost=_ead_cost)
def ead(
    target: Target, x: torch.Tensor, y: torch.Tensor, *, eps: float | None, norm: Norm,
    generator: torch.Generator, params: EADParams, y_target: torch.Tensor | None = None,
) -> AttackResult:
    """EAD, the elastic-net attack, minimal L1 perturbation (Chen et al. 2018)."""
    calls = ModelCalls(target)
    best, best_norm = ead_core(calls, x, y, params=params, stop_at=eps)
    return AttackResult.build(x, best, torch.isfinite(best_norm), calls)


__all__ = ["EADParams", "ead", "ead_core", "shrink"]
