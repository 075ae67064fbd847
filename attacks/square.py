"""Square Attack: Andriushchenko, Croce, Flammarion, Hein, "Square Attack: a query-efficient
black-box adversarial attack via random search", ECCV 2020.

Score-based black-box random search: each query changes one random square window of the
current perturbation (Linf: to ±2·eps per channel, then projected; L2: a pair of windows whose
mass is moved, with the paper's centred "eta" pattern; L1: the same move with AutoAttack's L1
pattern and the projection onto the L1 ball inside the image box of Croce & Hein, ICML 2021, as
in AutoAttack's L1 version) and keeps the change where the margin loss falls. The window side follows the paper's schedule of p (the share of pixels changed),
halved at queries 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000, rescaled to the query
budget. It never reads a gradient, which makes it the check for gradient masking: it works on
a model whose gradients are useless. A sample stops costing queries once it is fooled; its
query count is returned (``artifacts["queries"]``; 0 for a sample misclassified before the
search, which is returned unchanged).

One search can run in parts: ``stop_query`` pauses it after that many of its ``queries`` (the
schedule stays the whole budget's), and a later run with ``start_query`` and ``x_init`` (the
points the first part reached, ``artifacts["search"]``) picks it up there with the same
generator: the parts take exactly the steps of one uninterrupted run, and the continued part
spends one query more per sample, evaluating its starting points again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bench.core.attack_registry import register_attack
from bench.core.calls import ModelCalls
from bench.core.errors import BadInput
from bench.core.losses import margin_loss
from bench.core.norms import Norm, l1_norm, l2_norm, project, project_l1_box
from bench.core.result import AttackResult
from bench.core.target import Target

SCHEDULE = ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64),
            (6000, 128), (8000, 256))
"""(query, divisor): after ``query`` (on a 10,000-query scale) p is p_init / (2·divisor)."""


@dataclass(frozen=True)
class SquareParams:
    """``queries``: model queries per sample (the paper and AutoAttack: 5000). ``p_init``: the
    initial share of pixels a window covers (0.8; AutoAttack's Linf value; 0.1 is common for L2
    on large images). ``restarts``: independent runs on the samples still robust.
    ``start_query``: the queries an earlier part of this search spent reaching ``x_init``;
    ``stop_query``: pause after this many of the ``queries`` (default: all of them)."""

    queries: int = 5000
    p_init: float = 0.8
    restarts: int = 1
    start_query: int = 0
    stop_query: int | None = None

    @property
    def last_query(self) -> int:
        """The query after which this part of the search stops."""
        return self.queries if self.stop_query is None else self.stop_query

    def __post_init__(self) -> None:
        if self.queries < 1:
            raise BadInput(f"queries must be >= 1, got {self.queries}")
        if not 0 <= self.start_query < self.last_query <= self.queries:
            raise BadInput(f"square needs 0 <= start_query < stop_query <= queries; got "
                           f"start_query {self.start_query}, stop_query {self.stop_query}, "
                           f"queries {self.queries}")
        if self.restarts > 1 and (self.start_query or self.stop_query is not None):
            raise BadInput("a square search run in parts (start_query, stop_query) has one "
                           "restart")
        if not 0 < self.p_init <= 1:
            raise BadInput(f"p_init must lie in (0, 1], got {self.p_init}")
        if self.restarts < 1:
            raise BadInput(f"restarts must be >= 1, got {self.restarts}")


def p_at(query: int, queries: int, p_init: float) -> float:
    """The window share at ``query`` (the schedule rescaled to a ``queries`` budget)."""
    it = int(query / queries * 10000)
    p = p_init
    for after, divisor in SCHEDULE:
        if it > after:
            p = p_init / (2 * divisor)
    return p


def _signs(shape: tuple[int, ...], generator: torch.Generator, like: torch.Tensor
           ) -> torch.Tensor:
    out = torch.randint(0, 2, shape, generator=generator, device=generator.device) * 2 - 1
    return out.to(device=like.device, dtype=like.dtype)


def _randint(high: int, generator: torch.Generator) -> int:
    return int(torch.randint(0, max(high, 1), (1,), generator=generator,
                             device=generator.device))


def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``z_y - max_{j≠y} z_j``: ≤ 0 once the sample is misclassified (the loss Square lowers)."""
    return -margin_loss(logits, y)


def _unit_pattern(delta: torch.Tensor, norm: Norm) -> torch.Tensor:
    return delta / (delta.norm() if norm is Norm.L2 else delta.abs().sum())


def _rectangles(rows: int, cols: int, device: torch.device, norm: Norm = Norm.L2
                ) -> torch.Tensor:
    """The paper's nested-rectangle pattern of a ``rows × cols`` half window, unit norm: ring
    k weighs 1/(k+1)² in L2, 1/(k+1)⁴ in L1 (AutoAttack's L1 Square)."""
    delta = torch.zeros(rows, cols, device=device)
    r0, c0 = rows // 2, cols // 2
    power = 2 if norm is Norm.L2 else 4
    for k in range(max(r0 + 1, c0 + 1)):
        delta[max(r0 - k, 0):min(r0 + k + 1, rows), max(c0 - k, 0):min(c0 + k + 1, cols)] \
            += 1.0 / (k + 1) ** power
    return _unit_pattern(delta, norm)


def eta(s: int, generator: torch.Generator, device: torch.device, norm: Norm = Norm.L2
        ) -> torch.Tensor:
    """The window pattern in L2 or L1: +rectangles on one half, −rectangles on the other,
    unit norm, transposed with probability 1/2."""
    delta = torch.cat([_rectangles(s // 2, s, device, norm),
                       -_rectangles(s - s // 2, s, device, norm)])
    delta = _unit_pattern(delta, norm)
    flip = bool(torch.rand(1, generator=generator, device=generator.device) > 0.5)
    return delta.T if flip else delta


class _Search:
    """One restart of the random search over a batch of images."""

    def __init__(self, calls: ModelCalls, x: torch.Tensor, y: torch.Tensor, *, eps: float,
                 norm: Norm, params: SquareParams, generator: torch.Generator,
                 start: torch.Tensor | None = None) -> None:
        self.calls, self.x, self.y, self.eps, self.norm = calls, x, y, eps, norm
        self.params, self.generator, self.start = params, generator, start
        self.lo, self.hi = calls.target.bounds
        self.c, self.h, self.w = x.shape[1:]

    def run(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (best images, fooled, queries spent per sample, best margin loss).

        Query 1 of the budget evaluates the starting point; query k ≥ 2 takes the search step
        of schedule index k − 2. A part continued after ``start_query`` evaluates its starting
        points once more and then takes steps ``start_query + 1`` on, so the parts together
        take the steps of one uninterrupted run."""
        x, y, params = self.x, self.y, self.params
        best = self._init() if self.start is None else self._project(self.start)
        margin = _margin(self.calls.logits(best), y)
        queries = torch.ones(x.shape[0], device=x.device)
        for k in range(max(params.start_query + 1, 2), params.last_query + 1):
            active = torch.nonzero(margin >= 0).flatten()
            if active.numel() == 0:
                break
            s = self._side(k - 2)
            step = {Norm.LINF: self._linf_step, Norm.L2: self._l2_step,
                    Norm.L1: self._l1_step}[self.norm]
            candidate = step(x[active], best[active], s)
            new = _margin(self.calls.logits(candidate), y[active])
            better = new < margin[active]
            best[active] = torch.where(better.view(-1, 1, 1, 1), candidate, best[active])
            margin[active] = torch.where(better, new, margin[active])
            queries[active] += 1
        return best, margin < 0, queries, -margin

    def _side(self, q: int) -> int:
        p = p_at(q, self.params.queries, self.params.p_init)
        side = int(round(math.sqrt(p * self.h * self.w)))
        if self.norm is not Norm.LINF:
            side = max(side, 3)
            side += 1 - side % 2  # odd, as the paper's eta pattern wants
        return max(1, min(side, self.h, self.w))

    def _project(self, points: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """``points`` moved into the eps ball around the inputs ``x`` (all of them by
        default) and the bounds; in L1 the closest such point (the ball inside the box,
        just under eps as AutoAttack's L1 Square keeps it)."""
        x = self.x if x is None else x
        if self.norm is Norm.L1:
            return x + project_l1_box(points - x, x, self.eps * (1 - 1e-6), (self.lo, self.hi))
        return (x + project(points - x, self.norm, self.eps)).clamp(self.lo, self.hi)

    def _init(self) -> torch.Tensor:
        x, g = self.x, self.generator
        if self.norm is Norm.LINF:  # vertical stripes of ±eps
            stripes = _signs((x.shape[0], self.c, 1, self.w), g, x)
            return (x + self.eps * stripes).clamp(self.lo, self.hi)
        s = max(self.h // 5, 1)  # a grid of eta windows with random signs
        start = (self.h - s * 5) // 2 if self.h >= 5 else 0
        delta = torch.zeros_like(x)
        for i in range(self.h // s):
            for j in range(self.w // s):
                r, c = start + i * s, start + j * s
                if r + s > self.h or c + s > self.w:
                    continue
                pattern = eta(s, g, x.device, self.norm).to(x.dtype) if s > 1 \
                    else torch.ones(1, 1, device=x.device, dtype=x.dtype)
                delta[:, :, r:r + s, c:c + s] += pattern * _signs((x.shape[0], self.c, 1, 1), g, x)
        if self.norm is Norm.L1:
            return self._project(x + delta)
        return (x + self._unit(delta) * self.eps).clamp(self.lo, self.hi)

    def _unit(self, delta: torch.Tensor) -> torch.Tensor:
        return delta / (l2_norm(delta) + 1e-12).view(-1, 1, 1, 1).to(delta.dtype)

    def _linf_step(self, x: torch.Tensor, best: torch.Tensor, s: int) -> torch.Tensor:
        """One window (shared position, per-sample signs per channel) set to ±2·eps."""
        g = self.generator
        r, c = _randint(self.h - s, g), _randint(self.w - s, g)
        change = torch.zeros_like(x)
        change[:, :, r:r + s, c:c + s] = 2 * self.eps * _signs((x.shape[0], self.c, 1, 1), g, x)
        new = torch.min(torch.max(best + change, x - self.eps), x + self.eps)
        return new.clamp(self.lo, self.hi)

    def _windows(self, x: torch.Tensor, s: int
                 ) -> tuple[tuple[int, int], tuple[int, int], torch.Tensor]:
        """Two random ``s × s`` windows (the paper's Algorithm 3): the one the new pattern goes
        into, the one whose mass it takes, and the mask of both."""
        g = self.generator
        into = (_randint(self.h - s, g), _randint(self.w - s, g))
        taken = (_randint(self.h - s, g), _randint(self.w - s, g))
        mask = torch.zeros_like(x)
        for r, c in (into, taken):
            mask[:, :, r:r + s, c:c + s] = 1
        return into, taken, mask

    @staticmethod
    def _moved(delta: torch.Tensor, new: torch.Tensor, into: tuple[int, int],
               taken: tuple[int, int], s: int) -> torch.Tensor:
        """``delta`` with the ``taken`` window emptied and ``new`` in the ``into`` window."""
        delta = delta.clone()
        delta[:, :, taken[0]:taken[0] + s, taken[1]:taken[1] + s] = 0
        delta[:, :, into[0]:into[0] + s, into[1]:into[1] + s] = new
        return delta

    def _l2_step(self, x: torch.Tensor, best: torch.Tensor, s: int) -> torch.Tensor:
        """Move the perturbation's mass of two windows into one new eta pattern (the paper's
        Algorithm 3), keeping the total norm at eps."""
        delta = best - x
        into, taken, mask = self._windows(x, s)
        view = (-1, 1, 1, 1)
        norm_image = l2_norm(delta).view(view)
        norm_windows = l2_norm(delta * mask).view(view)
        window = delta[:, :, into[0]:into[0] + s, into[1]:into[1] + s]
        old = window / (1e-12 + window.flatten(2).norm(dim=2)[..., None, None])
        new = eta(s, self.generator, x.device).to(x.dtype) \
            * _signs((x.shape[0], self.c, 1, 1), self.generator, x) + old
        room = (torch.clamp(self.eps ** 2 - norm_image ** 2, min=0) / self.c
                + norm_windows ** 2).sqrt()
        new = new / (1e-12 + new.flatten(2).norm(dim=2)[..., None, None]) * room
        delta = self._moved(delta, new, into, taken, s)
        return (x + self._unit(delta) * self.eps).clamp(self.lo, self.hi)

    def _l1_step(self, x: torch.Tensor, best: torch.Tensor, s: int) -> torch.Tensor:
        """AutoAttack's L1 step: the mass of two windows (per channel), plus the budget left
        unspent, goes into one new L1 eta pattern; the result is projected onto the L1 ball
        inside the box."""
        delta = best - x
        into, taken, mask = self._windows(x, s)
        norm_image = l1_norm(delta).view(-1, 1, 1, 1).to(x.dtype)
        norm_windows = (delta * mask).abs().sum(dim=(2, 3), keepdim=True)  # per channel
        window = delta[:, :, into[0]:into[0] + s, into[1]:into[1] + s]
        old = window / (1e-12 + window.abs().sum(dim=(2, 3), keepdim=True))
        new = eta(s, self.generator, x.device, Norm.L1).to(x.dtype) \
            * _signs((x.shape[0], self.c, 1, 1), self.generator, x) + old
        room = (torch.clamp(self.eps - norm_image, min=0) / self.c + norm_windows) * self.c
        new = new / (1e-12 + new.abs().sum(dim=(2, 3), keepdim=True)) * room
        return self._project(x + self._moved(delta, new, into, taken, s), x)


def _square_cost(params: SquareParams, n: int, num_classes: int, n_fit: int
                 ) -> tuple[int, int]:
    part = params.last_query - params.start_query + (1 if params.start_query else 0)
    return n * (part * params.restarts + 1), 0  # + the clean check


@register_attack("square", params=SquareParams, norms=(Norm.LINF, Norm.L2, Norm.L1),
                 black_box=True, cost=_square_cost, starts=True)
def square(
    target: Target, x: torch.Tensor, y: torch.Tensor, *, eps: float | None, norm: Norm,
    generator: torch.Generator, params: SquareParams, y_target: torch.Tensor | None = None,
    x_init: torch.Tensor | None = None,
) -> AttackResult:
    """Square Attack, score-based black-box random search (Andriushchenko et al. 2020)."""
    assert eps is not None
    if x.ndim != 4:
        raise BadInput(f"square attacks images [N, C, H, W]; got inputs of shape "
                       f"{tuple(x.shape)}")
    calls = ModelCalls(target)
    best, success = x.clone(), torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    queries = torch.zeros(x.shape[0], device=x.device)
    reached = torch.full((x.shape[0],), -math.inf, device=x.device)
    search = x.clone() if x_init is None else x_init.clone()
    if x.shape[0]:
        # misclassified clean inputs are returned as they are, as AutoAttack only attacks the
        # correctly classified ones: the search starts from a perturbed point and could lose
        # them. This check is a model call (n_forward), not one of a sample's search queries.
        success = calls.logits(x).argmax(1) != y
    if eps == 0 or x.shape[0] == 0:
        return AttackResult.build(x, best, success, calls, artifacts={
            "queries": queries, "margin": reached, "search": search})
    for restart in range(params.restarts):
        todo = torch.nonzero(~success).flatten()
        if todo.numel() == 0:
            break
        start = x_init[todo] if x_init is not None and restart == 0 else None
        adv, fooled, spent, margin = _Search(calls, x[todo], y[todo], eps=eps, norm=norm,
                                             params=params, generator=generator,
                                             start=start).run()
        best[todo] = torch.where(fooled.view(-1, 1, 1, 1), adv, best[todo])
        search[todo] = adv
        success[todo] = fooled
        queries[todo] += spent
        reached[todo] = torch.maximum(reached[todo], margin)
    return AttackResult.build(x, best, success, calls, artifacts={
        "queries": queries, "margin": reached, "search": search})


__all__ = ["SquareParams", "eta", "p_at", "square"]
