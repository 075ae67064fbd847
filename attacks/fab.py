"""Targeted FAB: Croce & Hein, "Minimally distorted adversarial examples with a fast adaptive
boundary attack", ICML 2020 — the minimal-perturbation member of AutoAttack's standard version.

For each target class t (the top ``k`` other classes of the clean prediction, each run on the
samples no earlier class fooled) FAB linearises ``z_y − z_t`` at its iterate, projects both the
iterate and the clean image onto that hyperplane inside the box of valid images (the smallest
Linf, L2 or L1 step that reaches it), and steps to a convex combination of the two projections
(extrapolated by η = 1.05, the weight of the clean image's at most α_max = 0.1). Whenever the
iterate is adversarial it records it if it is the closest so far, then moves back towards the
clean image by β = 0.9. Like DeepFool it reports per-sample norms (``eps = None``), from which
robust accuracy at any eps is read; with ``stop_at`` (what the ``standard`` cascade passes) a
sample leaves once it has an adversarial within that budget. As in AutoAttack a sample counts as
fooled when it leaves its label.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.core.attack_registry import register_attack
from bench.core.calls import ModelCalls
from bench.core.errors import BadInput
from bench.core.losses import other_classes_by_score
from bench.core.norms import Norm, norm_of
from bench.core.result import AttackResult
from bench.core.target import Target, check_differentiable


@dataclass(frozen=True)
class FABTParams:
    """``steps``: iterations per target class (AutoAttack: 100). ``target_classes``: top other
    classes tried (AutoAttack: 9; at most the target's classes − 1). ``alpha_max``, ``eta``,
    ``beta``: the paper's 0.1, 1.05 and 0.9."""

    steps: int = 100
    target_classes: int = 9
    alpha_max: float = 0.1
    eta: float = 1.05
    beta: float = 0.9

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise BadInput(f"steps must be >= 1, got {self.steps}")
        if self.target_classes < 1:
            raise BadInput(f"target_classes must be >= 1, got {self.target_classes}")
        if not 0 <= self.alpha_max <= 1:
            raise BadInput(f"alpha_max must lie in [0, 1], got {self.alpha_max}")
        if self.eta < 1:
            raise BadInput(f"eta must be >= 1, got {self.eta}")
        if not 0 < self.beta <= 1:
            raise BadInput(f"beta must lie in (0, 1], got {self.beta}")


def project_linf(t: torch.Tensor, w: torch.Tensor, b: torch.Tensor, lo: float, hi: float
                 ) -> torch.Tensor:
    """Per row, the smallest-Linf step ``d`` with ``w·(t + d) = b`` and ``t + d`` in
    ``[lo, hi]``; where no such step exists, the box corner that gets closest. ``[M, D]``.

    Each coordinate moves by ``min(δ, room_i)`` in the direction that changes ``w·t`` the right
    way; ``g(δ) = Σ |w_i| min(δ, room_i)`` is piecewise linear, solved exactly after sorting.
    """
    need = b - (w * t).sum(1)
    direction = torch.sign(need)[:, None] * torch.sign(w)
    room = torch.where(direction > 0, hi - t, t - lo).clamp_min(0)
    room = torch.where(direction == 0, torch.zeros_like(room), room)
    weight = w.abs()
    order = room.argsort(1)
    r, a = room.gather(1, order), weight.gather(1, order)
    cum_ar, cum_a = (a * r).cumsum(1), a.cumsum(1)
    total_a = cum_a[:, -1:]
    reach = cum_ar + r * (total_a - cum_a)  # g at each sorted breakpoint, increasing
    goal = need.abs()[:, None]
    k = torch.searchsorted(reach.contiguous(), goal.contiguous()).clamp(max=r.shape[1] - 1)
    before_ar = torch.where(k > 0, cum_ar.gather(1, (k - 1).clamp_min(0)), 0.0)
    before_a = torch.where(k > 0, cum_a.gather(1, (k - 1).clamp_min(0)), 0.0)
    delta = (goal - before_ar) / (total_a - before_a).clamp_min(1e-12)
    feasible = reach[:, -1:] >= goal
    delta = torch.where(feasible, delta, r[:, -1:])
    return direction * torch.minimum(delta, room)


def project_l1(t: torch.Tensor, w: torch.Tensor, b: torch.Tensor, lo: float, hi: float
               ) -> torch.Tensor:
    """Per row, the smallest-L1 step ``d`` with ``w·(t + d) = b`` and ``t + d`` in ``[lo, hi]``:
    a fractional knapsack — coordinates by ``|w_i|`` descending, each moved up to its room in
    the direction that helps, the last one partly; where no such step exists, the box corner
    that gets closest. ``[M, D]``."""
    need = b - (w * t).sum(1)
    direction = torch.sign(need)[:, None] * torch.sign(w)
    room = torch.where(direction > 0, hi - t, t - lo).clamp_min(0)
    room = torch.where(direction == 0, torch.zeros_like(room), room)
    weight = w.abs()
    order = weight.argsort(dim=1, descending=True)
    a, r = weight.gather(1, order), room.gather(1, order)
    reach = (a * r).cumsum(1)
    goal = need.abs()[:, None]
    before = reach - a * r  # what the coordinates ahead of each one reach in full
    share = ((goal - before) / a.clamp_min(1e-20)).clamp(min=0)
    moved = torch.minimum(share, r)
    moved = torch.where(before >= goal, torch.zeros_like(moved), moved)
    out = torch.zeros_like(t).scatter(1, order, moved)
    return out * direction


def project_l2(t: torch.Tensor, w: torch.Tensor, b: torch.Tensor, lo: float, hi: float,
               iterations: int = 40) -> torch.Tensor:
    """Per row, the smallest-L2 step ``d`` with ``w·(t + d) = b`` and ``t + d`` in ``[lo, hi]``
    (KKT: ``d = clip(λ·w, lo − t, hi − t)`` for one λ per row, found by bisection); where no
    such step exists, the box point that gets closest. ``[M, D]``."""
    need = b - (w * t).sum(1)
    w = w * torch.sign(need)[:, None]  # now w·d must grow by |need|
    goal = need.abs()
    low, high = lo - t, hi - t
    nonzero = w.abs() > 1e-20
    ends = torch.where(w > 0, high / w.clamp_min(1e-20), low / w.clamp_max(-1e-20))
    lam_hi = torch.where(nonzero, ends, torch.zeros_like(ends)).amax(1).clamp_min(0)
    lam_lo = torch.zeros_like(lam_hi)

    def step(lam: torch.Tensor) -> torch.Tensor:
        return torch.clamp(lam[:, None] * w, low, high)

    for _ in range(iterations):
        mid = (lam_lo + lam_hi) / 2
        short = (w * step(mid)).sum(1) < goal
        lam_lo, lam_hi = torch.where(short, mid, lam_lo), torch.where(short, lam_hi, mid)
    return step(lam_hi)


def _margin_and_grad(calls: ModelCalls, x: torch.Tensor, y: torch.Tensor, aim: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``z_y − z_t`` at ``x``, its input gradient and whether ``x`` is misclassified (one
    forward and one backward pass per image)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = calls.target(x)
        check_differentiable(logits, calls.target.name)
        diff = (logits.gather(1, y[:, None]) - logits.gather(1, aim[:, None]))[:, 0].float()
        (grad,) = torch.autograd.grad(diff.sum(), x)
    calls.n_forward += x.shape[0]
    calls.n_backward += x.shape[0]
    calls.count_gradients(grad)
    return diff.detach(), torch.nan_to_num(grad.detach(), 0.0, 0.0, 0.0), \
        logits.detach().argmax(1) != y


def _fab_step(x1: torch.Tensor, x0: torch.Tensor, diff: torch.Tensor, grad: torch.Tensor, *,
              norm: Norm, params: FABTParams, bounds: tuple[float, float]) -> torch.Tensor:
    """The next iterate: both projections onto the linearised boundary, combined."""
    lo, hi = bounds
    view = (-1,) + (1,) * (x1.ndim - 1)
    project = {Norm.LINF: project_linf, Norm.L2: project_l2, Norm.L1: project_l1}[norm]
    n = x1.shape[0]
    w = grad.flatten(1).float()
    b = -diff + (w * x1.flatten(1).float()).sum(1)
    d = project(torch.cat([x1.flatten(1).float(), x0.flatten(1).float()]),
                torch.cat([w, w]), torch.cat([b, b]), lo, hi)
    size = (d.abs().amax(1) if norm is Norm.LINF else d.abs().sum(1) if norm is Norm.L1
            else d.norm(dim=1)).clamp_min(1e-8)
    a1, a2 = size[:n], size[n:]
    alpha = (a1 / (a1 + a2)).clamp(0, params.alpha_max).view(view).to(x1.dtype)
    d1, d2 = d[:n].view_as(x1).to(x1.dtype), d[n:].view_as(x1).to(x1.dtype)
    return ((x1 + params.eta * d1) * (1 - alpha) + (x0 + params.eta * d2) * alpha).clamp(lo, hi)


def fab_targeted_run(calls: ModelCalls, x: torch.Tensor, y: torch.Tensor, aim: torch.Tensor,
                     *, norm: Norm, params: FABTParams, best: torch.Tensor,
                     best_norm: torch.Tensor, stop_at: float | None) -> None:
    """One FAB run towards ``aim``; updates ``best`` / ``best_norm`` (inf: none found) in
    place wherever it finds a closer adversarial. A step costs a forward and a backward pass
    for the linearisation and a forward pass for the paper's check of the new iterate."""
    view = (-1,) + (1,) * (x.ndim - 1)
    active = torch.arange(x.shape[0], device=x.device)
    x1 = x.clone()
    for _ in range(params.steps):
        if stop_at is not None:
            keep = best_norm[active] > stop_at
            active, x1 = active[keep], x1[keep]
        if active.numel() == 0:
            break
        x0, y_a = x[active], y[active]
        diff, grad, _ = _margin_and_grad(calls, x1, y_a, aim[active])
        x1 = _fab_step(x1, x0, diff, grad, norm=norm, params=params, bounds=calls.target.bounds)
        adv = calls.logits(x1).argmax(1) != y_a
        if bool(adv.any()):
            dist = norm_of(x1 - x0, norm)
            closer = adv & (dist < best_norm[active])
            best[active[closer]], best_norm[active[closer]] = x1[closer], dist[closer]
            x1 = torch.where(adv.view(view), x0 + (x1 - x0) * params.beta, x1)


def fab_t_core(calls: ModelCalls, x: torch.Tensor, y: torch.Tensor, *, norm: Norm,
               params: FABTParams, stop_at: float | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Targeted FAB over the top other classes; returns (x_adv, norm of x_adv − x, inf where
    no adversarial was found). Samples misclassified from the start keep ``x`` (norm 0)."""
    best = x.clone()
    best_norm = torch.full((x.shape[0],), float("inf"), device=x.device)
    if x.shape[0] == 0:
        return best, best_norm
    logits = calls.logits(x)
    best_norm[logits.argmax(1) != y] = 0.0
    others = other_classes_by_score(logits, y)
    for k in range(min(params.target_classes, calls.target.num_classes - 1)):
        todo = torch.nonzero(best_norm > (stop_at or 0.0)).flatten()
        if todo.numel() == 0:
            break
        sub_best, sub_norm = best[todo], best_norm[todo]
        fab_targeted_run(calls, x[todo], y[todo], others[todo, k], norm=norm, params=params,
                         best=sub_best, best_norm=sub_norm, stop_at=stop_at)
        best[todo], best_norm[todo] = sub_best, sub_norm
    return best, best_norm


def _fab_cost(params: FABTParams, n: int, num_classes: int, n_fit: int) -> tuple[int, int]:
    runs = min(params.target_classes, num_classes - 1)
    return n * (1 + 2 * runs * params.steps), n * runs * params.steps


@register_attack("fab_t", params=FABTParams, norms=(Norm.LINF, Norm.L2, Norm.L1), minimal=True,
                 cost=_fab_cost)
def fab_t(
    target: Target, x: torch.Tensor, y: torch.Tensor, *, eps: float | None, norm: Norm,
    generator: torch.Generator, params: FABTParams, y_target: torch.Tensor | None = None,
) -> AttackResult:
    """Targeted FAB, minimal Linf / L2 / L1 perturbation (Croce & Hein 2020)."""
    calls = ModelCalls(target)
    best, best_norm = fab_t_core(calls, x, y, norm=norm, params=params, stop_at=eps)
    return AttackResult.build(x, best, torch.isfinite(best_norm), calls)


__all__ = ["FABTParams", "fab_t", "fab_t_core", "project_l1", "project_l2", "project_linf"]
