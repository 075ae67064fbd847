"""Auto-PGD: Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", ICML 2020.

- ``apgd``: untargeted APGD with the cross-entropy (``ce``) or the difference-of-logits-ratio
  (``dlr``) loss.
- ``apgd_t``: APGD with the targeted DLR loss, run once per target class (the top ``k`` other
  classes of the clean prediction, each on the samples no earlier class fooled). As in
  AutoAttack it is an *untargeted* evaluation: a sample counts as fooled when it leaves its
  label, whichever class it lands in.

Both take steps of size ``2·eps`` at first, with momentum 0.75, and at the paper's checkpoints
(p₀ = 0, p₁ = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)) halve the step size of a
sample and restart it from its best point when its loss rose in at most ρ = 0.75 of the steps
since the last checkpoint, or when neither its step size nor its best loss changed since then.

The loop streams like PGD's: ``batch_size`` rows in flight, each with its own step count and
checkpoints; a row that fools the model leaves at once with that iterate (early stop) and a
waiting sample takes its place. The logits every step computes anyway decide it, so early stop
costs nothing and changes no outcome, only the model calls spent on samples already fooled.

In L1 (Croce & Hein, "Mind the box: l1-APGD for sparse adversarial attacks on image
classifiers", ICML 2021) a step moves only the coordinates of the largest gradient entries (a
share of them that adapts to the sparsity of the best point), by equal amounts summing to the
step size, and projects onto the intersection of the L1 ball and the box; every 4 % of the
steps the step size is reset or divided by 1.5 as the sparsity changes. ``large_reps`` runs
AutoAttack's L1 schedule: 30 % of the steps at 3·eps, 30 % at 2·eps, the rest at eps, each
continuing from the previous phase's highest-loss point; only the last phase's adversarials
count.

DLR needs three classes (targeted DLR four); on targets with fewer (a discriminator's two
logits) the Carlini–Wagner margin takes its place, and the result says so
(:attr:`AttackResult.effective_params`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bench.core.attack_registry import register_attack
from bench.core.calls import AdaptiveParams, ModelCalls
from bench.core.errors import BadInput
from bench.core.indicators import still_improving, tail_start
from bench.core.inflight import InFlight
from bench.core.losses import cross_entropy_loss, margin_loss, other_classes_by_score
from bench.core.norms import Norm, l2_norm, project_l1_box
from bench.core.result import AttackResult
from bench.core.target import Target

APGD_LOSSES = ("ce", "dlr")
TARGET_ORDERS = ("logits", "malt")
JACOBIAN_ELEMENTS = 2**26
"""At most this many gradient entries are held at once when ranking targets (256 MiB in fp32)."""


def dlr_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample DLR (Croce & Hein 2020, eq. 6): ``-(z_y - max_{i≠y} z_i) / (z_π1 - z_π3)``."""
    z = logits.float()
    ranked = z.sort(dim=1, descending=True).values
    true = z.gather(1, labels[:, None])[:, 0]
    top_is_true = z.argmax(1) == labels
    best_other = torch.where(top_is_true, ranked[:, 1], ranked[:, 0])
    return -(true - best_other) / (ranked[:, 0] - ranked[:, 2] + 1e-12)


def targeted_dlr_loss(logits: torch.Tensor, labels: torch.Tensor, target: torch.Tensor
                      ) -> torch.Tensor:
    """Per-sample targeted DLR (eq. 7): ``-(z_y - z_t) / (z_π1 - (z_π3 + z_π4) / 2)``."""
    z = logits.float()
    ranked = z.sort(dim=1, descending=True).values
    true = z.gather(1, labels[:, None])[:, 0]
    aim = z.gather(1, target[:, None])[:, 0]
    return -(true - aim) / (ranked[:, 0] - 0.5 * (ranked[:, 2] + ranked[:, 3]) + 1e-12)


def targeted_margin_loss(logits: torch.Tensor, labels: torch.Tensor, target: torch.Tensor
                         ) -> torch.Tensor:
    """``z_t - z_y``: the targeted loss where targeted DLR has too few classes."""
    z = logits.float()
    return z.gather(1, target[:, None])[:, 0] - z.gather(1, labels[:, None])[:, 0]


def targeted_ce_loss(logits: torch.Tensor, labels: torch.Tensor, target: torch.Tensor
                     ) -> torch.Tensor:
    """``-CE(z, t)``: ascending it moves towards the target class."""
    return -torch.nn.functional.cross_entropy(logits.float(), target, reduction="none")


def _check_common(steps: int, restarts: int, rho: float) -> None:
    if steps < 1:
        raise BadInput(f"steps must be >= 1, got {steps}")
    if restarts < 1:
        raise BadInput(f"restarts must be >= 1, got {restarts}")
    if not 0 < rho < 1:
        raise BadInput(f"rho must lie in (0, 1), got {rho}")


@dataclass(frozen=True)
class APGDParams(AdaptiveParams):
    """``steps``: iterations per restart (AutoAttack: 100). ``restarts``: independent runs, each
    on the samples no earlier run fooled. ``loss``: ``"ce"`` or ``"dlr"``. ``rho``: the
    oscillation threshold of the step-size rule. ``early_stop``: a fooled sample leaves at once.
    ``large_reps``: L1 only, AutoAttack's 3·eps, 2·eps, eps schedule (its L1 ``standard``).
    ``eot_iter`` / ``bpda``: :class:`bench.core.calls.AdaptiveParams` (AutoAttack's ``rand``
    version runs 20 EOT draws)."""

    steps: int = 100
    restarts: int = 1
    loss: str = "ce"
    rho: float = 0.75
    early_stop: bool = True
    large_reps: bool = False

    def __post_init__(self) -> None:
        _check_common(self.steps, self.restarts, self.rho)
        if self.loss not in APGD_LOSSES:
            raise BadInput(f"unknown APGD loss {self.loss!r}; use one of {', '.join(APGD_LOSSES)}")


@dataclass(frozen=True)
class APGDTParams(AdaptiveParams):
    """``target_classes``: how many of the other classes are tried as targets (AutoAttack: 9;
    at most the target's classes − 1). ``target_order``: which come first, ``"logits"`` (the
    highest clean logits, AutoAttack's) or ``"malt"`` (the nearest linearised boundary,
    :func:`malt_order`). ``restarts``: runs per target class. ``loss``: ``"dlr"`` (targeted
    DLR, the paper's) or ``"ce"`` (targeted cross-entropy). ``large_reps``: as
    :class:`APGDParams`'. ``eot_iter`` / ``bpda``:
    :class:`bench.core.calls.AdaptiveParams`."""

    steps: int = 100
    target_classes: int = 9
    restarts: int = 1
    loss: str = "dlr"
    rho: float = 0.75
    early_stop: bool = True
    target_order: str = "logits"
    large_reps: bool = False

    def __post_init__(self) -> None:
        _check_common(self.steps, self.restarts, self.rho)
        if self.target_classes < 1:
            raise BadInput(f"target_classes must be >= 1, got {self.target_classes}")
        if self.loss not in APGD_LOSSES:
            raise BadInput(f"unknown APGD-T loss {self.loss!r}; use one of "
                           f"{', '.join(APGD_LOSSES)}")
        if self.target_order not in TARGET_ORDERS:
            raise BadInput(f"unknown target_order {self.target_order!r}; use one of "
                           f"{', '.join(TARGET_ORDERS)}")


def checkpoints(steps: int) -> dict[int, int]:
    """``{step count: window length}`` at which the step-size rule is checked: the paper's
    p-schedule in AutoAttack's integer form (first window ⌊0.22·N⌋, shrinking by ⌊0.03·N⌋ to at
    least ⌊0.06·N⌋, each at least 1)."""
    window = max(int(0.22 * steps), 1)
    shrink, shortest = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    out: dict[int, int] = {}
    at = window
    while at <= steps:
        out[at] = window
        window = max(window - shrink, shortest)
        at += window
    return out


PairLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""A loss of ``(logits, labels)`` where ``labels`` is ``[N, 2]``: (true class, target class)."""


def _pair_loss(name: str, targeted: bool, num_classes: int) -> tuple[PairLoss, str]:
    """The loss to ascend and the name it runs under (DLR falls back to the margin loss)."""
    if targeted:
        if name == "ce":
            return lambda z, yt: targeted_ce_loss(z, yt[:, 0], yt[:, 1]), "ce"
        if num_classes < 4:
            return lambda z, yt: targeted_margin_loss(z, yt[:, 0], yt[:, 1]), "margin"
        return lambda z, yt: targeted_dlr_loss(z, yt[:, 0], yt[:, 1]), "dlr"
    if name == "ce":
        return lambda z, yt: cross_entropy_loss(z, yt[:, 0]), "ce"
    if num_classes < 3:
        return lambda z, yt: margin_loss(z, yt[:, 0]), "margin"
    return lambda z, yt: dlr_loss(z, yt[:, 0]), "dlr"


def apgd_start(x: torch.Tensor, norm: Norm, eps: float, generator: torch.Generator,
               bounds: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """AutoAttack's starting perturbation: a random direction scaled to the sphere of radius
    eps (Linf: uniform noise whose largest entry is eps; L2: a Gaussian direction of norm eps;
    L1: Gaussian noise projected onto the L1 ball and the box)."""
    view = (-1,) + (1,) * (x.ndim - 1)
    if norm is Norm.L1:
        t = torch.randn(x.shape, generator=generator, device=generator.device).to(x)
        return project_l1_box(t, x, eps, bounds)
    if norm is Norm.LINF:
        t = 2 * torch.rand(x.shape, generator=generator, device=generator.device) - 1
        t = t / t.flatten(1).abs().amax(1).clamp_min(1e-12).view(view)
    else:
        t = torch.randn(x.shape, generator=generator, device=generator.device)
        t = t / (l2_norm(t) + 1e-12).view(view)
    return (eps * t).to(device=x.device, dtype=x.dtype)


def malt_order(calls: ModelCalls, x: torch.Tensor, y: torch.Tensor, norm: Norm, rows: int
               ) -> torch.Tensor:
    """Every class but ``y``, nearest first, ``[N, C-1]``: ranked by the distance to the
    linearised boundary ``|z_t - z_y| / ||∇(z_t - z_y)||_*`` at the clean input (the dual norm:
    l1 for Linf, l2 for L2, linf for L1), MALT's targeting (Melamed et al., "MALT Powers Up Adversarial
    Attacks", NeurIPS 2024) in place of AutoAttack's logit order. One forward and C − 1
    backward passes per image."""
    c = calls.target.num_classes
    others = torch.arange(c, device=y.device).expand(y.shape[0], c)
    others = others[others != y[:, None]].view(y.shape[0], c - 1)
    classes = torch.cat([y[:, None], others], 1)
    per = max(1, min(rows, JACOBIAN_ELEMENTS // max(1, (c - 1) * x[0].numel())))
    order = []
    for xs, cs in zip(x.split(per), classes.split(per), strict=True):
        logits, grads = calls.difference_gradients(xs, cs)
        gap = (logits.gather(1, cs[:, 1:]) - logits.gather(1, cs[:, :1])).float().abs()
        flat = grads.flatten(2).float()
        dual = flat.abs().sum(2) if norm is Norm.LINF else \
            flat.abs().amax(2) if norm is Norm.L1 else flat.norm(dim=2)
        order.append(cs[:, 1:].gather(1, (gap / (dual.T + 1e-12)).argsort(dim=1)))
    return torch.cat(order) if order else others


def _project(z: torch.Tensor, x0: torch.Tensor, norm: Norm, eps: float,
             bounds: tuple[float, float]) -> torch.Tensor:
    """``z`` moved into the eps ball around ``x0`` and the bounds (AutoAttack's order)."""
    lo, hi = bounds
    if norm is Norm.LINF:
        return torch.min(torch.max(z, x0 - eps), x0 + eps).clamp(lo, hi)
    if norm is Norm.L1:
        return (x0 + project_l1_box(z - x0, x0, eps, bounds)).clamp(lo, hi)
    d = z - x0
    length = l2_norm(d).view((-1,) + (1,) * (z.ndim - 1)).to(z.dtype)
    return (x0 + d / (length + 1e-12) * torch.clamp(length, max=eps)).clamp(lo, hi)


@dataclass
class _Rows(InFlight):
    """The rows in flight, one entry per row of every field, kept in step (:meth:`keep`,
    :meth:`append`): which sample (``idx``) at which queue position (``pos``), its label and
    target class (``labels``), its clean input, iterate, previous iterate, best and fooling
    points, gradients, step size and steps done, and the loss bookkeeping of APGD's
    step-size rule and of the ``incomplete`` indicator; in L1, the sparsity of the steps."""

    idx: torch.Tensor
    pos: torch.Tensor
    labels: torch.Tensor
    x0: torch.Tensor
    x: torch.Tensor
    x_prev: torch.Tensor
    x_best: torch.Tensor
    x_found: torch.Tensor
    grad: torch.Tensor
    grad_best: torch.Tensor
    step: torch.Tensor
    done: torch.Tensor
    loss_best: torch.Tensor
    last_loss: torch.Tensor
    rises: torch.Tensor
    loss_first: torch.Tensor
    loss_tail: torch.Tensor
    margin_best: torch.Tensor
    best_at_check: torch.Tensor
    reduced: torch.Tensor
    found: torch.Tensor
    sparsity: torch.Tensor  # L1: the share of coordinates a step moves
    changed: torch.Tensor  # L1: the coordinates the best point changed at the last check


class _APGDLoop:
    """One APGD run (one restart, one target class) over a queue of samples, streamed."""

    def __init__(self, calls: ModelCalls, x: torch.Tensor, y: torch.Tensor, *, eps: float,
                 norm: Norm, steps: int, rho: float, loss: PairLoss, early_stop: bool,
                 rows: int, continued: bool = False, keep_best: bool = False) -> None:
        """``continued``: the start points are given (L1's ``large_reps``), and in L1 the
        first sparsity is the start point's. ``keep_best``: return every sample's highest-loss
        point, fooled or not (a phase that only prepares the next one)."""
        self.calls, self.x, self.y = calls, x, y
        self.eps, self.norm, self.steps, self.rho = eps, norm, steps, rho
        self.loss, self.early_stop, self.rows = loss, early_stop, rows
        self.continued, self.keep_best = continued, keep_best
        self.checks = checkpoints(steps)
        self.sparse_every = max(int(0.04 * steps), 1)
        self.tail = tail_start(steps + 1)  # evaluations 0..steps

    def run(self, queue: torch.Tensor, aims: torch.Tensor, starts: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Attack ``queue`` (target classes ``aims``, start points ``starts``). Returns, for
        every queued sample, whether it was fooled, the fooling iterate (else the highest-loss
        point), whether its loss was still improving at the end
        (:func:`bench.core.indicators.still_improving`; never for a fooled sample) and the
        highest margin loss it reached."""
        n = queue.numel()
        out_x = starts.clone()
        out_hit = torch.zeros(n, dtype=torch.bool, device=queue.device)
        out_improving = torch.zeros(n, dtype=torch.bool, device=queue.device)
        out_margin = torch.full((n,), -math.inf, device=queue.device)
        rows: _Rows | None = None
        taken = 0
        while True:
            free = min(self.rows - (len(rows) if rows else 0), n - taken)
            if free > 0:
                fresh = self._fresh(queue, aims, starts, taken, free)
                if rows is None:
                    rows = fresh
                else:
                    rows.append(fresh)
                taken += free
            if rows is None or len(rows) == 0:
                break
            finished = self._step(rows)
            if finished.any():
                r = rows
                pos = r.pos[finished]
                hit = r.found[finished]
                out_hit[pos] = hit
                out_x[pos] = r.x_best[finished] if self.keep_best else torch.where(
                    hit.view((-1,) + (1,) * (starts.ndim - 1)), r.x_found[finished],
                    r.x_best[finished])
                out_improving[pos] = ~hit & still_improving(
                    r.loss_first[finished], r.loss_best[finished],
                    r.loss_tail[finished])
                out_margin[pos] = r.margin_best[finished]
                rows.keep(~finished)
        return out_hit, out_x, out_improving, out_margin

    def _fresh(self, queue: torch.Tensor, aims: torch.Tensor, starts: torch.Tensor,
               taken: int, free: int) -> _Rows:
        part = slice(taken, taken + free)
        idx = queue[part]
        x0 = self.x[idx]
        z = starts[part]
        scalar = torch.zeros(free, device=x0.device)
        features = float(x0[0].numel()) if free else 1.0
        changed = (z != x0).flatten(1).sum(1).float() if self.continued else \
            torch.full((free,), features, device=x0.device)
        return _Rows(
            idx=idx, pos=torch.arange(taken, taken + free, device=queue.device),
            labels=torch.stack([self.y[idx], aims[part]], 1), x0=x0, x=z, x_prev=z,
            x_best=z, x_found=z, grad=torch.zeros_like(z), grad_best=torch.zeros_like(z),
            step=torch.full((free,), (1 if self.norm is Norm.L1 else 2) * self.eps,
                            device=x0.device),
            done=torch.zeros(free, dtype=torch.long, device=x0.device),
            loss_best=scalar - math.inf, last_loss=scalar, rises=scalar.clone(),
            loss_first=scalar.clone(), loss_tail=scalar - math.inf,
            margin_best=scalar - math.inf,
            best_at_check=scalar.clone(), reduced=torch.ones(free, dtype=torch.bool,
                                                              device=x0.device),
            found=torch.zeros(free, dtype=torch.bool, device=x0.device),
            sparsity=changed / features / 1.5 if self.continued else scalar + 0.2,
            changed=changed,
        )

    def _step(self, rows: _Rows) -> torch.Tensor:
        """Evaluate every row at its iterate, apply the step-size rule, take the next step.
        Returns the rows that are finished (fooled with early stop, or out of steps)."""
        r = rows
        loss, logits, grad = self.calls.loss_and_grad(r.x, r.labels, self.loss)
        hit = logits.argmax(1) != r.labels[:, 0]
        r.margin_best = torch.maximum(r.margin_best, margin_loss(logits, r.labels[:, 0]))
        view = (-1,) + (1,) * (r.x.ndim - 1)
        new_hit = hit & ~r.found
        r.x_found = torch.where(new_hit.view(view), r.x, r.x_found)
        r.found = r.found | hit
        first = r.done == 0
        r.rises = r.rises + (~first & (loss > r.last_loss)).float()
        # AutoAttack compares the first step's loss with 0, not with the starting point's
        r.last_loss = torch.where(first, torch.zeros_like(loss), loss)
        r.loss_tail = torch.where(r.done == self.tail, r.loss_best, r.loss_tail)
        better = loss > r.loss_best
        r.x_best = torch.where(better.view(view), r.x, r.x_best)
        r.grad_best = torch.where(better.view(view), grad, r.grad_best)
        r.loss_best = torch.where(better, loss, r.loss_best)
        r.best_at_check = torch.where(first, loss, r.best_at_check)
        r.loss_first = torch.where(first, loss, r.loss_first)
        r.grad = grad
        self._checkpoint(r, view)
        finished = r.done >= self.steps
        if self.early_stop:
            finished = finished | r.found
        moving = ~finished
        if moving.any():
            self._move(r, moving, view)
        return finished

    def _checkpoint(self, r: _Rows, view: tuple[int, ...]) -> None:
        """Halve the step and go back to the best point where the paper's conditions hold."""
        if self.norm is Norm.L1:
            self._checkpoint_l1(r, view)
            return
        window = torch.zeros_like(r.rises)
        for at, length in self.checks.items():
            window = torch.where(r.done == at, float(length), window)
        due = window > 0
        if not bool(due.any()):
            return
        oscillating = r.rises <= window * self.rho
        stalled = ~r.reduced & (r.best_at_check >= r.loss_best)
        halve = due & (oscillating | stalled)
        r.reduced = torch.where(due, halve, r.reduced)
        r.best_at_check = torch.where(due, r.loss_best, r.best_at_check)
        r.rises = torch.where(due, 0.0, r.rises)
        r.step = torch.where(halve, r.step / 2, r.step)
        r.x = torch.where(halve.view(view), r.x_best, r.x)
        r.grad = torch.where(halve.view(view), r.grad_best, r.grad)

    def _checkpoint_l1(self, r: _Rows, view: tuple[int, ...]) -> None:
        """L1-APGD's rule every 4 % of the steps: the step's sparsity follows the best point's
        (its changed coordinates / 1.5); where that sparsity fell by 5 % or more the step size
        is reset to eps and the row restarts from its best point, elsewhere it is divided by
        1.5, within [eps / 10, eps]."""
        due = (r.done > 0) & (r.done % self.sparse_every == 0)
        if not bool(due.any()):
            return
        changed = (r.x_best != r.x0).flatten(1).sum(1).float()
        features = float(r.x0[0].numel())
        sparser = due & (changed / r.changed.clamp_min(1) < 0.95)
        r.sparsity = torch.where(due, changed / features / 1.5, r.sparsity)
        step = torch.where(sparser, self.eps, r.step / 1.5).clamp(self.eps / 10, self.eps)
        r.step = torch.where(due, step, r.step)
        r.changed = torch.where(due, changed, r.changed)
        r.x = torch.where(sparser.view(view), r.x_best, r.x)
        r.grad = torch.where(sparser.view(view), r.grad_best, r.grad)

    def _sparse_step(self, r: _Rows, view: tuple[int, ...]) -> torch.Tensor:
        """L1: move the coordinates of the largest gradient entries (a ``sparsity`` share of
        them) by equal amounts that sum to the step size, then project."""
        flat = r.grad.flatten(1).abs()
        features = flat.shape[1]
        ranked = flat.sort(dim=1).values
        kth = ((1 - r.sparsity) * features).clamp(0, features - 1).long()
        threshold = ranked.gather(1, kth[:, None]).view(view).to(r.grad.dtype)
        direction = (r.grad * (r.grad.abs() >= threshold)).sign()
        size = direction.flatten(1).abs().sum(1).view(view) + 1e-10
        z = r.x + r.step.view(view).to(r.x.dtype) * direction / size
        return _project(z, r.x0, self.norm, self.eps, self.calls.target.bounds)

    def _move(self, r: _Rows, moving: torch.Tensor,
              view: tuple[int, ...]) -> None:
        """One APGD step with momentum (momentum 1 on a row's first step, else 0.75)."""
        x, x0, bounds = r.x, r.x0, self.calls.target.bounds
        if self.norm is Norm.L1:  # no momentum in L1-APGD
            z = self._sparse_step(r, view)
            r.x_prev = torch.where(moving.view(view), x, r.x_prev)
            r.x = torch.where(moving.view(view), z, x)
            r.done = r.done + moving.long()
            return
        a = torch.where(r.done == 0, 1.0, 0.75).view(view).to(x.dtype)
        step = r.step.view(view).to(x.dtype)
        grad = r.grad
        if self.norm is Norm.LINF:
            z = _project(x + step * grad.sign(), x0, self.norm, self.eps, bounds)
        else:
            unit = grad / (l2_norm(grad) + 1e-12).view(view).to(grad.dtype)
            z = _project(x + step * unit, x0, self.norm, self.eps, bounds)
        z = _project(x + (z - x) * a + (x - r.x_prev) * (1 - a), x0, self.norm, self.eps,
                     bounds)
        r.x_prev = torch.where(moving.view(view), x, r.x_prev)
        r.x = torch.where(moving.view(view), z, x)
        r.done = r.done + moving.long()


def phases(eps: float, steps: int, large_reps: bool) -> list[tuple[float, int]]:
    """``(eps, steps)`` of each phase of a run: one at eps, or L1's ``large_reps`` schedule
    (3·eps for ⌈0.3·steps⌉, 2·eps for as many, eps for the rest; AutoAttack's)."""
    if not large_reps:
        return [(eps, steps)]
    first = math.ceil(0.3 * steps)
    return [(3 * eps, first), (2 * eps, first), (eps, max(steps - 2 * first, 1))]


@dataclass(frozen=True)
class _Schedule:
    """What one APGD run does: its norm and phases, the loss, the step-size rule's ρ, early
    stop and rows in flight."""

    norm: Norm
    phases: list[tuple[float, int]]
    rho: float
    loss: PairLoss
    early_stop: bool
    rows: int


def _one_run(calls: ModelCalls, x: torch.Tensor, y: torch.Tensor, queue: torch.Tensor,
             aims: torch.Tensor, plan: _Schedule, generator: torch.Generator
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One restart (or target class) on ``queue``: a random start, then each phase from the
    previous phase's highest-loss point; only the last phase's adversarials count."""
    bounds = calls.target.bounds
    x0 = x[queue]
    first_eps = plan.phases[0][0]
    z = (x0 + apgd_start(x0, plan.norm, first_eps, generator, bounds)).clamp(*bounds)
    continued = len(plan.phases) > 1
    for number, (eps, steps) in enumerate(plan.phases):
        last = number == len(plan.phases) - 1
        z = _project(z, x0, plan.norm, eps, bounds)
        loop = _APGDLoop(calls, x, y, eps=eps, norm=plan.norm, steps=steps, rho=plan.rho,
                         loss=plan.loss, early_stop=plan.early_stop and last, rows=plan.rows,
                         continued=continued, keep_best=not last)
        hit, z, still, margin = loop.run(queue, aims, z)
    return hit, z, still, margin


def _run_apgd(target: Target, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: Norm,
              generator: torch.Generator, steps: int, rho: float, loss: str, targeted: bool,
              runs: int, restarts: int, early_stop: bool, batch_size: int | None,
              target_order: str = "logits", large_reps: bool = False) -> AttackResult:
    """The shared driver: ``runs`` target classes (1 when untargeted) × ``restarts``, each on
    the samples no earlier run fooled; a sample keeps its fooling iterate, else its
    highest-loss point of the last run. Artifacts, per sample: ``crossed`` (an iterate fooled
    the model; it is the one returned), ``improving`` (left robust while its loss was still
    rising, :func:`bench.core.indicators.still_improving`, in any run) and ``margin`` (the
    highest margin loss ``max_{j≠y} z_j − z_y`` any of its iterates reached)."""
    calls = ModelCalls(target)
    pair_loss, used = _pair_loss(loss, targeted, target.num_classes)
    n = x.shape[0]
    rows = max(1, batch_size or n)
    plan = _Schedule(norm, phases(eps, steps, large_reps and norm is Norm.L1), rho, pair_loss,
                     early_stop, rows)
    ranked = None
    if targeted and n:
        ranked = malt_order(calls, x, y, norm, rows) if target_order == "malt" else \
            other_classes_by_score(torch.cat([calls.logits(c) for c in x.split(rows)]), y)
    best = x.clone()
    success = torch.zeros(n, dtype=torch.bool, device=x.device)
    improving = torch.zeros(n, dtype=torch.bool, device=x.device)
    reached = torch.full((n,), -math.inf, device=x.device)
    for run in range(runs):
        for _ in range(restarts):
            queue = torch.nonzero(~success).flatten()
            if queue.numel() == 0:
                break
            aims = y[queue] if ranked is None else ranked[queue, run]
            hit, adv, still, margin = _one_run(calls, x, y, queue, aims, plan, generator)
            best[queue] = adv
            success[queue] = hit
            improving[queue] |= still
            reached[queue] = torch.maximum(reached[queue], margin)
    return AttackResult.build(x, best, success, calls,
                              artifacts={"crossed": success.clone(),
                                         "improving": improving & ~success,
                                         "margin": reached},
                              effective_params={"loss": used} if used != loss else None)


def _evaluations(steps: int, large_reps: bool) -> int:
    """Model evaluations per sample of one run: each phase's steps plus its start point."""
    return sum(s + 1 for _, s in phases(1.0, steps, large_reps))


def _apgd_cost(params: APGDParams, n: int, num_classes: int, n_fit: int) -> tuple[int, int]:
    calls = n * _evaluations(params.steps, params.large_reps) * params.restarts
    return calls, calls


def _apgd_t_cost(params: APGDTParams, n: int, num_classes: int, n_fit: int
                 ) -> tuple[int, int]:
    runs = min(params.target_classes, num_classes - 1) * params.restarts
    order = n * (num_classes - 1) if params.target_order == "malt" else 0
    per_run = _evaluations(params.steps, params.large_reps)
    return n * (runs * per_run + 1), n * runs * per_run + order


@register_attack("apgd", params=APGDParams, norms=(Norm.LINF, Norm.L2, Norm.L1), cost=_apgd_cost,
                 streams=True)
def apgd(
    target: Target, x: torch.Tensor, y: torch.Tensor, *, eps: float | None, norm: Norm,
    generator: torch.Generator, params: APGDParams, y_target: torch.Tensor | None = None,
    batch_size: int | None = None,
) -> AttackResult:
    """Auto-PGD, CE or DLR loss, step-size schedule, momentum; sparse in L1 (Croce & Hein)."""
    assert eps is not None
    return _run_apgd(target, x, y, eps=eps, norm=norm, generator=generator, steps=params.steps,
                     rho=params.rho, loss=params.loss, targeted=False, runs=1,
                     restarts=params.restarts, early_stop=params.early_stop,
                     batch_size=batch_size, large_reps=params.large_reps)


@register_attack("apgd_t", params=APGDTParams, norms=(Norm.LINF, Norm.L2, Norm.L1),
                 cost=_apgd_t_cost,
                 streams=True)
def apgd_t(
    target: Target, x: torch.Tensor, y: torch.Tensor, *, eps: float | None, norm: Norm,
    generator: torch.Generator, params: APGDTParams, y_target: torch.Tensor | None = None,
    batch_size: int | None = None,
) -> AttackResult:
    """APGD with the targeted DLR loss over the top-k other classes (Croce & Hein 2020)."""
    assert eps is not None
    runs = min(params.target_classes, target.num_classes - 1)
    return _run_apgd(target, x, y, eps=eps, norm=norm, generator=generator, steps=params.steps,
                     rho=params.rho, loss=params.loss, targeted=True, runs=runs,
                     restarts=params.restarts, early_stop=params.early_stop,
                     batch_size=batch_size, target_order=params.target_order,
                     large_reps=params.large_reps)


__all__ = ["APGDParams", "APGDTParams", "apgd", "apgd_t", "checkpoints", "dlr_loss",
           "targeted_dlr_loss"]
