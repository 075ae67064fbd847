"""The runner's last word on an attack (DESIGN.md, "The runner re-checks"): every ``x_adv``
must lie within the bounds and the eps ball (a violation raises :class:`AttackContractError`),
and success is recomputed with a fresh fp32 forward pass of the evaluated target."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.config import Cell
from bench.core.attack import within_budget
from bench.core.errors import AttackContractError
from bench.core.norms import Norm, eps_limit, norm_of
from bench.evaluation import EvalData
from bench.records import AttackRun, PreparedTarget


def verify_adversarials(cell: Cell, x: torch.Tensor, x_adv: torch.Tensor,
                        bounds: tuple[float, float]) -> None:
    """Raise :class:`AttackContractError` unless ``x_adv`` is inside the bounds and eps ball."""
    name = cell.attack_name
    if x_adv.shape != x.shape or x_adv.dtype != x.dtype or x_adv.device != x.device:
        raise AttackContractError(
            f"{name}: x_adv is {tuple(x_adv.shape)} {x_adv.dtype} on {x_adv.device}, "
            f"expected {tuple(x.shape)} {x.dtype} on {x.device}"
        )
    if not bool(torch.isfinite(x_adv).all()):
        raise AttackContractError(f"{name}: x_adv holds NaN or infinite values")
    lo, hi = bounds
    tol = 1e-6 * (hi - lo)
    if float(x_adv.min()) < lo - tol or float(x_adv.max()) > hi + tol:
        raise AttackContractError(
            f"{name}: x_adv leaves the bounds [{lo:g}, {hi:g}] "
            f"(min {float(x_adv.min()):g}, max {float(x_adv.max()):g})"
        )
    eps = cell.threat_model.eps
    if eps is None:
        return
    norm = cell.threat_model.norm
    dist = norm_of(x_adv - x, norm)
    worst = float(dist.max()) if dist.numel() else 0.0
    if worst > eps_limit(norm, eps, hi - lo):
        raise AttackContractError(
            f"{name}: a perturbation has {norm.value} norm {worst:.6g} > eps {eps:g}"
        )


@dataclass
class Outcome:
    """A cell's verified per-sample outcome on the evaluated target."""

    adv_pred: torch.Tensor
    success: torch.Tensor
    adv_correct: torch.Tensor
    l2: torch.Tensor
    linf: torch.Tensor
    l0: torch.Tensor


def verify(cell: Cell, prepared: PreparedTarget, data: EvalData, run: AttackRun,
           batch_size: int) -> Outcome:
    """Check the run's adversarials against the bounds and the eps ball, then judge them with a
    fresh fp32 forward of the evaluated (defended) target: the attack's claim is not trusted."""
    evaluated = prepared.defended
    x_adv = within_budget(data.x, run.x_adv, cell.threat_model, evaluated.bounds)[0] \
        if cell.attack.spec.minimal else run.x_adv
    verify_adversarials(cell, data.x, x_adv, evaluated.bounds)
    adv_pred = evaluated.predict_logits(x_adv, batch_size).argmax(1)
    if cell.attack.targeted:
        if run.y_target is None:
            raise AttackContractError(f"{cell.attack_name}: a targeted run returned no y_target")
        success = adv_pred == run.y_target
    else:
        success = adv_pred != data.y
    delta = x_adv - data.x
    l2, linf, l0 = (norm_of(delta, nm) for nm in (Norm.L2, Norm.LINF, Norm.L0))
    return Outcome(adv_pred, success, prepared.clean_correct & (adv_pred == data.y), l2, linf, l0)
