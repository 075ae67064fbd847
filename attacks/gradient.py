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

import math
from dataclasses import dataclass, field

import torch

from bench.core.attack_registry import register_attack
from bench.core.calls import AdaptiveParams, ModelCalls
from bench.core.errors import BadInput
from bench.core.indicators import still_improving, tail_start
from bench.core.inflight import InFlight
from bench.core.losses import LossFn, loss_by_name
from bench.core.norms import Norm, project, random_start, steepest_direction
from bench.core.result import AttackResult, deferred_success
from bench.core.target import Target


def _check_loss(loss: str) -> None:
    loss_by_name(loss)


@dataclass(frozen=True)
class FGSMParams(AdaptiveParams):
    """``targeted``: aim at the least-likely class (Kurakin et al.) instead of away from ``y``.
    ``loss``: ``"ce"`` (cross-entropy, the paper's) or ``"margin"`` (Carlini–Wagner margin).
    ``eot_iter`` / ``bpda``: :class:`bench.core.calls.AdaptiveParams`."""

    targeted: bool = False
    loss: str = "ce"

    def __post_init__(self) -> None:
        _check_loss(self.loss)


@dataclass(frozen=True)
class IterativeParams(AdaptiveParams):
    """Parameters of BIM and PGD.

    ``steps``: gradient steps per restart. ``step_size``: absolute step (Linf: per pixel; L2: per
    image); ``None`` picks the attack's default rule relative to eps. ``random_start``: start from
    a uniform point in the eps ball. ``restarts``: independent runs; a sample keeps its first
    successful adversarial, else the one with the highest loss. ``targeted``: least-likely class.
    ``early_stop``: a sample leaves the loop at the first iterate that fools the model (it stops
    costing steps, and keeps that iterate); ``false`` spends the full budget on every sample.
    ``eot_iter`` / ``bpda``: :class:`bench.core.calls.AdaptiveParams` (PGD with ``eot_iter`` > 1
    is EOT-PGD, torchattacks' ``EOTPGD``).
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
    target: Target, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: Norm,
    generator: torch.Generator, steps: int, step_size: float, random_init: bool, restarts: int,
    targeted: bool, loss: str, y_target: torch.Tensor | None, early_stop: bool = False,
    batch_size: int | None = None,
) -> AttackResult:
    """The shared projected-gradient loop behind FGSM, BIM and PGD.

    Untargeted: ascend ``loss(logits, y)``. Targeted: descend ``loss(logits, y_target)``, where
    ``y_target`` defaults to the least-likely class of the clean input. Each restart runs only on
    the samples no earlier restart fooled.

    The loop works on at most ``batch_size`` samples at a time (default: all of ``x``), each with
    its own step count, and refills free rows from the queue of waiting samples. With
    ``early_stop``, the logits each gradient step computes anyway decide which samples are fooled
    already; those keep that iterate and leave, so they stop costing forward and backward passes
    and the batch stays full. Random starts are drawn for the whole of ``x`` up front, so the
    result does not depend on ``batch_size``.
    """
    calls = ModelCalls(target)
    loss_fn = loss_by_name(loss)
    n = x.shape[0]
    rows = max(1, batch_size or n)
    if targeted and y_target is None:
        y_target = _least_likely(calls, x, y, rows)
    labels = y_target if targeted and y_target is not None else y
    loop = _Loop(calls, x, labels, eps=eps, norm=norm, steps=steps, step_size=step_size,
                 targeted=targeted, loss_fn=loss_fn, early_stop=early_stop, rows=rows)
    best = x.clone()
    success = torch.zeros(n, dtype=torch.bool, device=x.device)
    unknown = torch.zeros(n, dtype=torch.bool, device=x.device)  # success not checked yet
    best_score = torch.full((n,), float("-inf"), device=x.device)
    waiting = torch.arange(n, device=x.device)
    crossed = torch.zeros(n, dtype=torch.bool, device=x.device)
    improving = torch.zeros(n, dtype=torch.bool, device=x.device)
    for _ in range(restarts):
        delta = random_start(x[waiting], norm, eps, generator) if random_init \
            else torch.zeros_like(x[waiting])
        fooled, fooled_x, ended, ended_x = loop.run(waiting, delta)
        crossed[fooled] = True
        crossed[ended] |= loop.crossed
        improving[ended] = loop.improving
        best[fooled], success[fooled] = fooled_x, True
        if restarts == 1:  # nothing to choose between: the final check is the reader's
            best[ended], unknown[ended] = ended_x, True
        elif ended.numel():
            success[ended] = _keep_better(calls, ended, ended_x, labels[ended], best,
                                          best_score, targeted=targeted, loss_fn=loss_fn,
                                          rows=rows)
        waiting = torch.nonzero(~success).flatten()
        if waiting.numel() == 0:
            break
    result = deferred_success(target, best, labels, targeted=targeted, known=success,
                              unknown=unknown) if bool(unknown.any()) else success
    return AttackResult.build(x, best, result, calls, y_target=y_target if targeted else None,
                              artifacts={"crossed": crossed, "improving": improving & ~crossed})


def _least_likely(calls: ModelCalls, x: torch.Tensor, y: torch.Tensor, rows: int
                  ) -> torch.Tensor:
    """The least-likely class of each clean input (the default target, Kurakin et al. 2017)."""
    if not x.shape[0]:
        return y.clone()
    return torch.cat([calls.logits(c).argmin(dim=1) for c in x.split(rows)])


def _keep_better(calls: ModelCalls, ended: torch.Tensor, ended_x: torch.Tensor,
                 labels: torch.Tensor, best: torch.Tensor, best_score: torch.Tensor, *,
                 targeted: bool, loss_fn: LossFn, rows: int) -> torch.Tensor:
    """Judge a restart's final iterates ``ended_x`` (of samples ``ended``): keep each in ``best``
    where it fools the model or beats the best loss so far; return which ones fool it."""
    logits = torch.cat([calls.logits(c) for c in ended_x.split(rows)]).float()
    hit = logits.argmax(1) == labels if targeted else logits.argmax(1) != labels
    score = (-1.0 if targeted else 1.0) * loss_fn(logits, labels)
    better = hit | (score > best_score[ended])
    best[ended[better]] = ended_x[better]
    best_score[ended] = torch.where(better, score, best_score[ended])
    return hit


class _Loop:
    """One restart of projected gradient steps over a queue of samples, ``rows`` at a time."""

    def __init__(self, calls: ModelCalls, x: torch.Tensor, labels: torch.Tensor, *, eps: float,
                 norm: Norm, steps: int, step_size: float, targeted: bool, loss_fn: LossFn,
                 early_stop: bool, rows: int) -> None:
        self.calls, self.x, self.labels = calls, x, labels
        self.eps, self.norm, self.steps, self.step_size = eps, norm, steps, step_size
        self.targeted, self.loss_fn = targeted, loss_fn
        self.early_stop, self.rows = early_stop, rows
        self.direction = -1.0 if targeted else 1.0

    def run(self, queue: torch.Tensor, delta: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Attack the samples ``queue`` from ``x[queue] + delta``. Returns the samples an
        iterate fooled on the way (early stop) with that iterate, and the others with their
        final iterate."""
        lo, hi = self.calls.target.bounds
        starts = (self.x[queue] + delta).clamp(lo, hi)
        rows = self._fresh(queue, starts, 0, 0)
        out = _Ended()
        tail = tail_start(self.steps)
        taken, wave = 0, 0  # wave: steps left to the rows in flight, without early stop
        while True:
            free = min(self.rows - len(rows), queue.numel() - taken)
            if free > 0:  # refill from the queue so the batch stays full
                rows.append(self._fresh(queue, starts, taken, free))
                taken += free
            if len(rows) == 0:
                break
            hit, grad = self._evaluate(rows, tail)
            if self.early_stop:
                out.fooled.append(rows.idx[hit])
                out.fooled_x.append(rows.x_adv[hit])
            self._move(rows, grad, lo, hi)
            rows.done += 1
            if not self.early_stop:
                # Every row started together (rows are refilled only once all have ended), so
                # the step count is known on the host: no device sync per step.
                wave = (wave or self.steps) - 1
                if wave == 0:
                    out.end(rows, torch.ones(len(rows), dtype=torch.bool, device=hit.device))
                    rows.keep(torch.zeros(len(rows), dtype=torch.bool, device=hit.device))
                continue
            last = ~hit & (rows.done >= self.steps)  # early stop: each row has its own count
            out.end(rows, last)
            keep = ~hit & ~last
            if not bool(keep.all()):
                rows.keep(keep)
        # per ended row: its loss still rose at the end; an iterate of it fooled the model
        self.improving = torch.cat(out.improving) if out.improving else queue[:0].bool()
        self.crossed = torch.cat(out.crossed) if out.crossed else queue[:0].bool()
        return (torch.cat(out.fooled) if out.fooled else queue[:0],
                torch.cat(out.fooled_x) if out.fooled_x else starts[:0],
                torch.cat(out.ended) if out.ended else queue[:0],
                torch.cat(out.ended_x) if out.ended_x else starts[:0])

    def _fresh(self, queue: torch.Tensor, starts: torch.Tensor, taken: int, free: int
               ) -> _Flight:
        """The queue's samples ``taken .. taken + free`` at their starting points."""
        new = queue[taken:taken + free]
        return _Flight(new, starts[taken:taken + free], self.x[new], self.labels[new],
                       new.new_zeros(free),
                       torch.full((free, 3), -math.inf, device=starts.device),
                       new.new_zeros(free, dtype=torch.bool))

    def _evaluate(self, rows: _Flight, tail: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and gradient at every row's iterate: which rows it fools, and the gradient;
        the loss trace and the crossed flags follow."""
        loss, logits, grad = self.calls.loss_and_grad(rows.x_adv, rows.lab, self.loss_fn)
        rows.trace = _traced(rows.trace, self.direction * loss, rows.done, tail)
        pred = logits.argmax(1)
        hit = pred == rows.lab if self.targeted else pred != rows.lab
        rows.crossed = rows.crossed | hit
        return hit, grad

    def _move(self, rows: _Flight, grad: torch.Tensor, lo: float, hi: float) -> None:
        """One step of the steepest ascent (descent when targeted), projected."""
        x_adv = rows.x_adv + self.direction * self.step_size * steepest_direction(grad,
                                                                                 self.norm)
        rows.x_adv = (rows.x0 + project(x_adv - rows.x0, self.norm, self.eps)).clamp(lo, hi)


@dataclass
class _Flight(InFlight):
    """The rows in flight, kept in step: sample index, iterate, clean input, label (or target
    class), steps done, loss trace (first, best, at-tail) and whether an iterate fooled."""

    idx: torch.Tensor
    x_adv: torch.Tensor
    x0: torch.Tensor
    lab: torch.Tensor
    done: torch.Tensor
    trace: torch.Tensor
    crossed: torch.Tensor



@dataclass
class _Ended:
    """What a restart returns, gathered as rows leave the flight: the samples fooled on the
    way and their fooling iterates; the samples that ran out of steps, their final iterates,
    whether their loss still rose at the end and whether an iterate of theirs fooled."""

    fooled: list[torch.Tensor] = field(default_factory=list)
    fooled_x: list[torch.Tensor] = field(default_factory=list)
    ended: list[torch.Tensor] = field(default_factory=list)
    ended_x: list[torch.Tensor] = field(default_factory=list)
    improving: list[torch.Tensor] = field(default_factory=list)
    crossed: list[torch.Tensor] = field(default_factory=list)

    def end(self, rows: _Flight, which: torch.Tensor) -> None:
        self.ended.append(rows.idx[which])
        self.ended_x.append(rows.x_adv[which])
        self.improving.append(still_improving(*rows.trace[which].unbind(1)))
        self.crossed.append(rows.crossed[which])


def _traced(trace: torch.Tensor, score: torch.Tensor, done: torch.Tensor, tail: int
            ) -> torch.Tensor:
    """``trace`` (per row: first score, best score, best score before the tail began) after an
    iterate scoring ``score`` at step ``done``."""
    first = torch.where(done == 0, score, trace[:, 0])
    at_tail = torch.where(done == tail, trace[:, 1], trace[:, 2])  # the best before the tail
    best = torch.maximum(trace[:, 1], score)
    return torch.stack([first, best, at_tail], 1)


def _fgsm_cost(params: FGSMParams, n: int, num_classes: int, n_fit: int) -> tuple[int, int]:
    return n * (1 + params.targeted), n  # the gradient pass (and the least-likely class)


def _iterative_cost(params: IterativeParams, n: int, num_classes: int, n_fit: int
                    ) -> tuple[int, int]:
    steps = params.steps * params.restarts  # early stop only lowers this
    checks = params.restarts if params.restarts > 1 else 0  # choosing between restarts
    return n * (steps + checks + params.targeted), n * steps


@register_attack("fgsm", params=FGSMParams, norms=(Norm.LINF, Norm.L2), cost=_fgsm_cost,
                 streams=True)
def fgsm(
    target: Target, x: torch.Tensor, y: torch.Tensor, *, eps: float | None, norm: Norm,
    generator: torch.Generator, params: FGSMParams, y_target: torch.Tensor | None = None,
    batch_size: int | None = None,
) -> AttackResult:
    """Fast gradient (sign) method, one step of size eps (Goodfellow et al. 2015)."""
    assert eps is not None
    return gradient_attack(
        target, x, y, eps=eps, norm=norm, generator=generator, steps=1, step_size=eps,
        random_init=False, restarts=1, targeted=params.targeted, loss=params.loss,
        y_target=y_target, batch_size=batch_size,
    )


def _iterative(target: Target, x: torch.Tensor, y: torch.Tensor, eps: float, norm: Norm,
               generator: torch.Generator, params: IterativeParams,
               y_target: torch.Tensor | None, default_step: float, batch_size: int | None
               ) -> AttackResult:
    step = params.step_size if params.step_size is not None else default_step
    return gradient_attack(
        target, x, y, eps=eps, norm=norm, generator=generator, steps=params.steps,
        step_size=step, random_init=params.random_start, restarts=params.restarts,
        targeted=params.targeted, loss=params.loss, y_target=y_target,
        early_stop=params.early_stop, batch_size=batch_size,
    )


@register_attack("bim", params=BIMParams, norms=(Norm.LINF, Norm.L2), cost=_iterative_cost,
                 streams=True)
def bim(
    target: Target, x: torch.Tensor, y: torch.Tensor, *, eps: float | None, norm: Norm,
    generator: torch.Generator, params: BIMParams, y_target: torch.Tensor | None = None,
    batch_size: int | None = None,
) -> AttackResult:
    """Basic iterative method / iterative FGSM (Kurakin et al. 2017)."""
    assert eps is not None
    return _iterative(target, x, y, eps, norm, generator, params, y_target,
                      default_step=1.25 * eps / params.steps, batch_size=batch_size)


@register_attack("pgd", params=IterativeParams, norms=(Norm.LINF, Norm.L2),
                 cost=_iterative_cost, streams=True)
def pgd(
    target: Target, x: torch.Tensor, y: torch.Tensor, *, eps: float | None, norm: Norm,
    generator: torch.Generator, params: IterativeParams, y_target: torch.Tensor | None = None,
    batch_size: int | None = None,
) -> AttackResult:
    """Projected gradient descent with random start and restarts (Madry et al. 2018)."""
    assert eps is not None
    return _iterative(target, x, y, eps, norm, generator, params, y_target,
                      default_step=2.5 * eps / params.steps, batch_size=batch_size)
