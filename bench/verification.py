"""The runner's last word on an attack: every ``x_adv``
must lie within the bounds and the eps ball (a violation raises :class:`AttackContractError`),
and success is recomputed with a fresh fp32 forward pass of the evaluated target."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.config import Cell
from bench.core.errors import AttackContractError
from bench.core.norms import Norm, eps_limit, norm_of
from bench.core.result import within_budget
from bench.core.target import Target
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
class Judgement:
    """A target's predictions of some inputs: each draw's (``[draws, N]``; one row for a
    deterministic target, −1 where it abstained)."""

    preds: torch.Tensor

    @property
    def first(self) -> torch.Tensor:
        return self.preds[0]

    def every(self, labels: torch.Tensor) -> torch.Tensor:
        """``[N]``: every draw predicted ``labels``."""
        return (self.preds == labels).all(0)

    def any(self, labels: torch.Tensor) -> torch.Tensor:
        """``[N]``: some draw predicted ``labels``."""
        return (self.preds == labels).any(0)

    @property
    def unstable(self) -> int:
        """Samples whose prediction differs between draws."""
        return int((self.preds != self.preds[:1]).any(0).sum())


def judge(target: Target, x: torch.Tensor, *, draws: int, seed: int, batch_size: int
          ) -> Judgement:
    """``target``'s decisions (:meth:`Target.decide`) on ``x``: one fresh fp32 pass of a
    deterministic target, ``draws`` passes of a randomised one, drawn from a generator seeded
    by ``seed``, so the same cell is judged on the same draws."""
    if not target.randomised:
        return Judgement(target.decide(x, batch_size)[None])
    generator = torch.Generator(device=x.device).manual_seed(seed)
    with target.drawing_from(generator):
        return Judgement(torch.stack([target.decide(x, batch_size) for _ in range(draws)]))


@dataclass
class Outcome:
    """A cell's verified per-sample outcome on the evaluated target. On a randomised target,
    ``adv_correct`` asks every draw and ``success`` any draw; ``adv_correct_one_draw`` and
    ``adv_pred`` are the first draw's; ``abstained`` where that draw abstained."""

    adv_pred: torch.Tensor
    success: torch.Tensor
    adv_correct: torch.Tensor
    l2: torch.Tensor
    linf: torch.Tensor
    l0: torch.Tensor
    adv_correct_one_draw: torch.Tensor | None = None
    abstained: torch.Tensor | None = None
    distance: torch.Tensor | None = None  # in the cell's norm


ADVERSARIAL_DRAWS_SEED = 1
"""Offset of the seed an adversarial's draws are judged with from the clean pass's."""
CERTIFY_DRAWS_SEED = 2
"""Offset of the seed a certificate's noise is drawn with from the clean pass's."""


def verify(cell: Cell, prepared: PreparedTarget, data: EvalData, run: AttackRun,
           batch_size: int) -> Outcome:
    """Check the run's adversarials against the bounds and the eps ball, then judge them with a
    fresh fp32 forward of the evaluated (defended) target: the attack's claim is not trusted.
    A randomised target is judged over ``prepared.draws`` draws: an adversarial fools it when
    any draw is fooled, and a sample stays robust only when every draw is right."""
    evaluated = prepared.defended
    x_adv = within_budget(data.x, run.x_adv, cell.threat_model, evaluated.bounds)[0] \
        if cell.attack.spec.minimal else run.x_adv
    verify_adversarials(cell, data.x, x_adv, evaluated.bounds)
    verdict = judge(evaluated, x_adv, draws=prepared.draws,
                    seed=cell.seed + ADVERSARIAL_DRAWS_SEED, batch_size=batch_size)
    adv_pred = verdict.first
    if cell.attack.targeted:
        if run.y_target is None:
            raise AttackContractError(f"{cell.attack_name}: a targeted run returned no y_target")
        success = verdict.any(run.y_target)
    else:
        success = ~verdict.every(data.y)
    delta = x_adv - data.x
    l2, linf, l0 = (norm_of(delta, nm) for nm in (Norm.L2, Norm.LINF, Norm.L0))
    randomised = prepared.correct_every_draw is not None
    return Outcome(
        adv_pred, success, prepared.clean_correct & verdict.every(data.y), l2, linf, l0,
        adv_correct_one_draw=prepared.clean_correct_one_draw & (adv_pred == data.y)
        if randomised else None,
        abstained=adv_pred == -1, distance=norm_of(delta, cell.threat_model.norm))
