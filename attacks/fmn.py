"""Fast Minimum-Norm attack (FMN): Pintor, Roli, Brendel & Biggio, "Fast Minimum-norm Adversarial
Attacks through Adaptive Norm Constraints", NeurIPS 2021 — in L0, L1, L2 and Linf.

FMN keeps a per-sample radius ε and takes normalised gradient steps on the logit margin, each
projected onto the ε ball and the box of valid images (Algorithm 1). While a sample is not yet
adversarial ε grows towards its iterate's norm plus the linearised distance to the boundary
(|margin| / ‖∇margin‖_dual; for L0 by a factor 1 + γ); once it is adversarial ε shrinks by
1 − γ, never above the smallest adversarial norm found. Step size α and γ decay by cosine
annealing. The smallest adversarial of every step is kept; like DeepFool and FAB-T it reports
per-sample norms (``eps = None``), from which robust accuracy at any eps follows. Given an eps,
a sample leaves once it has an adversarial within it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bench.core.attack_registry import register_attack
from bench.core.calls import ModelCalls
from bench.core.errors import BadInput
from bench.core.inflight import InFlight
from bench.core.losses import margin_loss
from bench.core.norms import Norm, dual_norm, eps_limit, l2_norm, norm_of, project
from bench.core.result import AttackResult
from bench.core.target import Target

DEFAULT_ALPHA_INIT = {Norm.LINF: 10.0}
"""The paper's and AttackBench's initial step size per norm: 10 in Linf, 1 elsewhere."""


@dataclass(frozen=True)
class FMNParams:
    """``steps``: iterations (AttackBench: 1000, i.e. 2,000 calls per sample). ``alpha_init``:
    the initial step size (None: 10 in Linf, 1 otherwise), annealed to ``alpha_init / 100``.
    ``gamma_init`` / ``gamma_final``: the radius factor γ, annealed (the paper's 0.05 and
    0.001)."""

    steps: int = 1000
    alpha_init: float | None = None
    gamma_init: float = 0.05
    gamma_final: float = 0.001

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise BadInput(f"steps must be >= 1, got {self.steps}")
        if self.alpha_init is not None and self.alpha_init <= 0:
            raise BadInput(f"alpha_init must be > 0, got {self.alpha_init}")
        if not 0 < self.gamma_final <= self.gamma_init < 1:
            raise BadInput(f"need 0 < gamma_final <= gamma_init < 1, got {self.gamma_final} "
                           f"and {self.gamma_init}")


def cosine_anneal(start: float, end: float, step: int, steps: int) -> float:
    """``start`` at step 0 falling to ``end`` along half a cosine (Loshchilov & Hutter 2017)."""
    return end + (start - end) * (1 + math.cos(math.pi * step / steps)) / 2


@dataclass
class RadiusRows(InFlight):
    """The samples a minimum-norm attack still works on: their index, perturbation and radius
    (FMN's and DDN's)."""

    index: torch.Tensor
    delta: torch.Tensor
    radius: torch.Tensor


def _next_radius(rows: RadiusRows, norm: Norm, *, fooled: torch.Tensor, found: torch.Tensor,
                 best: torch.Tensor, size: torch.Tensor, margin: torch.Tensor,
                 grad: torch.Tensor, gamma: float) -> torch.Tensor:
    """Algorithm 1's radius update: shrink where adversarial, grow elsewhere (towards the
    linearised boundary until a first adversarial is found)."""
    eps = rows.radius
    if norm is Norm.L0:
        shrunk = torch.minimum(torch.minimum(eps - 1, (eps * (1 - gamma)).floor()), best)
        grown = torch.maximum(eps + 1, (eps * (1 + gamma)).floor())
        return torch.where(fooled, shrunk, grown).clamp_min(0)
    to_boundary = margin.abs() / dual_norm(grad, norm).clamp_min(1e-12)
    linearised = size + to_boundary
    grown = eps * (1 + gamma) if bool(found.all()) else torch.where(
        found, eps * (1 + gamma),
        torch.where(torch.isfinite(eps), torch.maximum(linearised, eps * (1 + gamma)), linearised))
    return torch.where(fooled, torch.minimum(eps * (1 - gamma), best), grown)


def fmn_core(calls: ModelCalls, x: torch.Tensor, y: torch.Tensor, *, norm: Norm,
             params: FMNParams, stop_at: float | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Untargeted FMN; returns (x_adv, its ``norm`` distance to x, inf where no adversarial was
    found). Samples misclassified from the start keep ``x`` (distance 0)."""
    lo, hi = calls.target.bounds
    n, view = x.shape[0], (-1,) + (1,) * (x.ndim - 1)
    best = x.clone()
    best_norm = torch.full((n,), float("inf"), device=x.device)
    worst = norm_of(torch.maximum(x - lo, hi - x), norm)
    alpha_init = params.alpha_init or DEFAULT_ALPHA_INIT.get(norm, 1.0)
    start = torch.ones(n, device=x.device) if norm is Norm.L0 else \
        torch.full((n,), float("inf"), device=x.device)
    rows = RadiusRows(torch.arange(n, device=x.device), torch.zeros_like(x), start)
    leave_at = 0.0 if stop_at is None else eps_limit(norm, stop_at, hi - lo)
    for step in range(params.steps):
        if len(rows) == 0:
            break
        alpha = cosine_anneal(alpha_init, alpha_init / 100, step, params.steps)
        gamma = cosine_anneal(params.gamma_init, params.gamma_final, step, params.steps)
        idx, x0 = rows.index, x[rows.index]
        margin, logits, grad = calls.loss_and_grad(x0 + rows.delta, y[idx], margin_loss)
        fooled = logits.argmax(1) != y[idx]
        size = norm_of(rows.delta, norm)
        closer = fooled & (size < best_norm[idx])
        best[idx[closer]] = (x0 + rows.delta)[closer]
        best_norm[idx[closer]] = size[closer]
        found = torch.isfinite(best_norm[idx])
        radius = _next_radius(rows, norm, fooled=fooled, found=found, best=best_norm[idx],
                              size=size, margin=margin, grad=grad, gamma=gamma)
        rows.radius = torch.minimum(radius, worst[idx])
        step_dir = grad / l2_norm(grad).clamp_min(1e-12).view(view).to(grad.dtype)
        delta = project(rows.delta + alpha * step_dir, norm, rows.radius)
        rows.delta = (x0 + delta).clamp(lo, hi) - x0
        rows.keep(best_norm[idx] > leave_at)
    return best, best_norm


def _fmn_cost(params: FMNParams, n: int, num_classes: int, n_fit: int) -> tuple[int, int]:
    return n * params.steps, n * params.steps


@register_attack("fmn", params=FMNParams, norms=(Norm.LINF, Norm.L2, Norm.L1, Norm.L0),
                 minimal=True, cost=_fmn_cost)
def fmn(
    target: Target, x: torch.Tensor, y: torch.Tensor, *, eps: float | None, norm: Norm,
    generator: torch.Generator, params: FMNParams, y_target: torch.Tensor | None = None,
) -> AttackResult:
    """Fast Minimum-Norm, minimal L0 / L1 / L2 / Linf perturbation (Pintor et al. 2021)."""
    calls = ModelCalls(target)
    best, best_norm = fmn_core(calls, x, y, norm=norm, params=params, stop_at=eps)
    return AttackResult.build(x, best, torch.isfinite(best_norm), calls)


__all__ = ["FMNParams", "RadiusRows", "cosine_anneal", "fmn", "fmn_core"]
