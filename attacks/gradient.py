"""Gradient-sign family: FGSM, BIM (iterative FGSM) and PGD, for Linf and L2, in one loop.

- FGSM: Goodfellow, Shlens, Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015.
  Targeted at the least-likely class: Kurakin, Goodfellow, Bengio, "Adversarial Examples in the
  Physical World", ICLR workshop 2017 (their "iterative least-likely class method" is BIM with
  ``targeted = true``).
- BIM: Kurakin et al. 2017 — FGSM steps of size alpha, clipped to the eps ball, no random start.
- PGD: Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning Models Resistant to
  Adversarial Attacks", ICLR 2018 — uniform random start in the ball, projected steps, restarts.

All three are :func:`gradient_attack` with different defaults (FGSM is one step of size eps).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attacks.base import AttackResult, ModelCalls, loss_by_name, register_attack
from attacks.norms import Norm, project, random_start, steepest_direction
from bench.errors import BadInput
from bench.target import Target


def _check_loss(loss: str) -> None:
    loss_by_name(loss)


@dataclass(frozen=True)
class FGSMParams:
    """``targeted``: aim at the least-likely class (Kurakin et al.) instead of away from ``y``.
    ``loss``: ``"ce"`` (cross-entropy, the paper's) or ``"margin"`` (Carlini–Wagner margin)."""

    targeted: bool = False
    loss: str = "ce"

    def __post_init__(self) -> None:
        _check_loss(self.loss)


@dataclass(frozen=True)
class IterativeParams:
    """Parameters of BIM and PGD.

    ``steps``: gradient steps per restart. ``step_size``: absolute step (Linf: per pixel; L2: per
    image); ``None`` picks the attack's default rule relative to eps. ``random_start``: start from
    a uniform point in the eps ball. ``restarts``: independent runs; a sample keeps its first
    successful adversarial, else the one with the highest loss. ``targeted``: least-likely class.
    ``early_stop``: a sample leaves the loop at the first iterate that fools the model (it stops
    costing steps, and keeps that iterate); ``false`` spends the full budget on every sample.
    """

    steps: int = 40
    step_size: float | None = None
    random_start: bool = True
    restarts: int = 1
    targeted: bool = False
    loss: str = "ce"
    early_stop: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise BadInput(f"steps must be >= 1, got {self.steps}")
        if self.restarts < 1:
            raise BadInput(f"restarts must be >= 1, got {self.restarts}")
        if self.step_size is not None and not self.step_size > 0:
            raise BadInput(f"step_size must be > 0, got {self.step_size}")
        _check_loss(self.loss)


@dataclass(frozen=True)
class BIMParams(IterativeParams):
    """BIM defaults: 10 steps of 1.25·eps/10 (the paper's alpha·steps ≈ 1.25·eps), no random start."""

    steps: int = 10
    random_start: bool = False


def gradient_attack(
    target: Target,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: Norm,
    generator: torch.Generator,
    steps: int,
    step_size: float,
    random_init: bool,
    restarts: int,
    targeted: bool,
    loss: str,
    y_target: torch.Tensor | None,
    early_stop: bool = False,
) -> AttackResult:
    """The shared projected-gradient loop behind FGSM, BIM and PGD.

    Untargeted: ascend ``loss(logits, y)``. Targeted: descend ``loss(logits, y_target)``, where
    ``y_target`` defaults to the least-likely class of the clean input. Each restart runs only on
    the samples no earlier restart fooled. With ``early_stop``, the logits each gradient step
    computes anyway decide which samples are fooled already; those keep that iterate and leave
    the batch, so they stop costing forward and backward passes.
    """
    calls = ModelCalls(target)
    loss_fn = loss_by_name(loss)
    lo, hi = target.bounds
    if targeted and y_target is None:
        y_target = calls.logits(x).argmin(dim=1)
    labels = y_target if targeted else y
    assert labels is not None
    direction = -1.0 if targeted else 1.0

    best = x.clone()
    success = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    best_score = torch.full((x.shape[0],), float("-inf"), device=x.device)
    active = torch.arange(x.shape[0], device=x.device)
    for _ in range(restarts):
        run = active  # the samples of this restart still being attacked
        x0, lab = x[run], labels[run]
        delta = random_start(x0, norm, eps, generator) if random_init else torch.zeros_like(x0)
        x_adv = (x0 + delta).clamp(lo, hi)
        for _ in range(steps):
            _, logits, grad = calls.loss_and_grad(x_adv, lab, loss_fn)
            if early_stop:
                pred = logits.argmax(1)
                done = pred == lab if targeted else pred != lab
                if bool(done.any()):
                    best[run[done]] = x_adv[done]
                    success[run[done]] = True
                    keep = ~done
                    run, x0, lab, x_adv, grad = run[keep], x0[keep], lab[keep], x_adv[keep], \
                        grad[keep]
                    if run.numel() == 0:
                        break
            x_adv = x_adv + direction * step_size * steepest_direction(grad, norm)
            x_adv = (x0 + project(x_adv - x0, norm, eps)).clamp(lo, hi)
        if run.numel():
            logits = calls.logits(x_adv).float()
            fooled = logits.argmax(1) == lab if targeted else logits.argmax(1) != lab
            score = direction * loss_fn(logits, lab)
            better = fooled | (score > best_score[run])
            best[run[better]] = x_adv[better]
            best_score[run] = torch.where(better, score, best_score[run])
            success[run] = fooled
        active = torch.nonzero(~success).flatten()
        if active.numel() == 0:
            break
    return AttackResult.build(x, best, success, calls, y_target=y_target if targeted else None)


def _fgsm_cost(params: FGSMParams, n: int, num_classes: int, n_fit: int) -> tuple[int, int]:
    return 2 * n, n  # the gradient pass and the success check


def _iterative_cost(params: IterativeParams, n: int, num_classes: int, n_fit: int
                    ) -> tuple[int, int]:
    steps = params.steps * params.restarts  # early stop only lowers this
    return n * (steps + params.restarts), n * steps


@register_attack("fgsm", params=FGSMParams, norms=(Norm.LINF, Norm.L2), cost=_fgsm_cost)
def fgsm(
    target: Target, x: torch.Tensor, y: torch.Tensor, *, eps: float | None, norm: Norm,
    generator: torch.Generator, params: FGSMParams, y_target: torch.Tensor | None = None,
) -> AttackResult:
    """Fast gradient (sign) method, one step of size eps (Goodfellow et al. 2015)."""
    assert eps is not None
    return gradient_attack(
        target, x, y, eps=eps, norm=norm, generator=generator, steps=1, step_size=eps,
        random_init=False, restarts=1, targeted=params.targeted, loss=params.loss,
        y_target=y_target,
    )


def _iterative(target: Target, x: torch.Tensor, y: torch.Tensor, eps: float, norm: Norm,
               generator: torch.Generator, params: IterativeParams,
               y_target: torch.Tensor | None, default_step: float) -> AttackResult:
    step = params.step_size if params.step_size is not None else default_step
    return gradient_attack(
        target, x, y, eps=eps, norm=norm, generator=generator, steps=params.steps,
        step_size=step, random_init=params.random_start, restarts=params.restarts,
        targeted=params.targeted, loss=params.loss, y_target=y_target,
        early_stop=params.early_stop,
    )


@register_attack("bim", params=BIMParams, norms=(Norm.LINF, Norm.L2), cost=_iterative_cost)
def bim(
    target: Target, x: torch.Tensor, y: torch.Tensor, *, eps: float | None, norm: Norm,
    generator: torch.Generator, params: BIMParams, y_target: torch.Tensor | None = None,
) -> AttackResult:
    """Basic iterative method / iterative FGSM (Kurakin et al. 2017)."""
    assert eps is not None
    return _iterative(target, x, y, eps, norm, generator, params, y_target,
                      default_step=1.25 * eps / params.steps)


@register_attack("pgd", params=IterativeParams, norms=(Norm.LINF, Norm.L2),
                 cost=_iterative_cost)
def pgd(
    target: Target, x: torch.Tensor, y: torch.Tensor, *, eps: float | None, norm: Norm,
    generator: torch.Generator, params: IterativeParams, y_target: torch.Tensor | None = None,
) -> AttackResult:
    """Projected gradient descent with random start and restarts (Madry et al. 2018)."""
    assert eps is not None
    return _iterative(target, x, y, eps, norm, generator, params, y_target,
                      default_step=2.5 * eps / params.steps)
