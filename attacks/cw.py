"""Carlini & Wagner's L2 attack: "Towards Evaluating the Robustness of Neural Networks", IEEE
S&P 2017 — a minimal L2 attack.

In the change of variables x' = lo + (hi − lo)(tanh(w) + 1)/2 (always inside the box), Adam
minimises ‖x' − x‖² + c · max(z_y − max_{j≠y} z_j, −κ) for each sample's constant c, found by
a binary search: c shrinks where an adversarial was found and grows (tenfold until a first
success) where not. A search step ends early when the batch's summed objective stopped falling
(less than 0.01 % over a tenth of the steps), as in the authors' code. The smallest adversarial
of any step is kept. Reports per-sample norms (``eps = None``); given an eps, a sample leaves
once it has an adversarial within it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from bench.core.attack_registry import register_attack
from bench.core.calls import ModelCalls
from bench.core.errors import BadInput
from bench.core.norms import Norm, eps_limit
from bench.core.result import AttackResult
from bench.core.target import Target


@dataclass(frozen=True)
class CWParams:
    """``search_steps``: binary-search steps over c (the paper's 9). ``steps``: Adam steps per
    search step (1000 in the paper). ``lr``: Adam's step (0.01). ``initial_const``: the first c
    (0.001). ``confidence``: the margin κ (0). ``abort_early``: end a sample's search step
    when the batch's objective stalls."""

    search_steps: int = 9
    steps: int = 1000
    lr: float = 0.01
    initial_const: float = 1e-3
    confidence: float = 0.0
    abort_early: bool = True

    def __post_init__(self) -> None:
        for name in ("search_steps", "steps"):
            if getattr(self, name) < 1:
                raise BadInput(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.initial_const <= 0:
            raise BadInput("lr and initial_const must be > 0")
        if self.confidence < 0:
            raise BadInput(f"confidence must be >= 0, got {self.confidence}")


def _to_box(w: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * (torch.tanh(w) + 1) / 2


def _from_box(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    unit = ((x - lo) / (hi - lo) * 2 - 1).clamp(-1 + 1e-6, 1 - 1e-6)
    return torch.atanh(unit)


def _margin(logits: torch.Tensor, y: torch.Tensor, confidence: float) -> torch.Tensor:
    z = logits.float()
    true = z.gather(1, y[:, None])[:, 0]
    other = z.scatter(1, y[:, None], float("-inf")).amax(1)
    return (true - other).clamp_min(-confidence)


def _search_step(calls: ModelCalls, x: torch.Tensor, y: torch.Tensor, const: torch.Tensor,
                 params: CWParams, best: torch.Tensor, best_norm: torch.Tensor
                 ) -> torch.Tensor:
    """One Adam run at each sample's constant; updates ``best``/``best_norm`` in place and
    returns which samples it found an adversarial for."""
    lo, hi = calls.target.bounds
    w = _from_box(x, lo, hi).detach().requires_grad_(True)
    optimizer = torch.optim.Adam([w], lr=params.lr)
    active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    found = torch.zeros_like(active)
    previous = torch.full((1,), float("inf"), device=x.device)
    check_every = max(params.steps // 10, 1)
    for step in range(params.steps):
        rows = torch.nonzero(active).flatten()
        if rows.numel() == 0:
            break
        with torch.enable_grad():
            x_adv = _to_box(w, lo, hi)
            logits = calls.target(x_adv[rows])
            distance = ((x_adv[rows] - x[rows]) ** 2).flatten(1).sum(1)
            objective = distance + const[rows] * _margin(logits, y[rows], params.confidence)
            optimizer.zero_grad()
            objective.sum().backward()
        calls.n_forward += rows.numel()
        calls.n_backward += rows.numel()
        optimizer.step()
        with torch.no_grad():
            fooled = logits.argmax(1) != y[rows]
            size = distance.sqrt()
            closer = fooled & (size < best_norm[rows])
            best[rows[closer]] = x_adv[rows[closer]].detach()
            best_norm[rows[closer]] = size[closer]
            found[rows[fooled]] = True
            if params.abort_early and (step + 1) % check_every == 0:
                total = float(objective.sum())
                if total > float(previous[0]) * 0.9999:
                    break
                previous[0] = total
    return found


SearchStep = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(samples, their constants, their best points, their best norms) -> found``: one
optimisation at fixed constants that updates the best points and norms in place."""


def binary_search(calls: ModelCalls, x: torch.Tensor, y: torch.Tensor, step: SearchStep, *,
                  norm: Norm, search_steps: int, initial_const: float,
                  stop_at: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Carlini & Wagner's binary search over each sample's constant c around ``step``: c
    halves towards the last failure where an adversarial was found, and grows tenfold until a
    first success. Returns (x_adv, its ``norm`` distance, inf where none was found); samples
    misclassified from the start keep ``x`` (distance 0), and with ``stop_at`` a sample leaves
    once it has an adversarial within it."""
    n = x.shape[0]
    best = x.clone()
    best_norm = torch.full((n,), float("inf"), device=x.device)
    if n == 0:
        return best, best_norm
    best_norm[calls.logits(x).argmax(1) != y] = 0.0
    const = torch.full((n,), initial_const, device=x.device)
    lower = torch.zeros(n, device=x.device)
    upper = torch.full((n,), float("inf"), device=x.device)
    lo, hi = calls.target.bounds
    leave_at = 0.0 if stop_at is None else eps_limit(norm, stop_at, hi - lo)
    for _ in range(search_steps):
        todo = torch.nonzero(best_norm > leave_at).flatten()
        if todo.numel() == 0:
            break
        sub_best, sub_norm = best[todo], best_norm[todo]
        found = step(todo, const[todo], sub_best, sub_norm)
        best[todo], best_norm[todo] = sub_best, sub_norm
        c = const[todo]
        upper[todo] = torch.where(found, torch.minimum(upper[todo], c), upper[todo])
        lower[todo] = torch.where(found, lower[todo], torch.maximum(lower[todo], c))
        bounded = torch.isfinite(upper[todo])
        const[todo] = torch.where(bounded, (lower[todo] + upper[todo]) / 2, c * 10)
    return best, best_norm


def cw_core(calls: ModelCalls, x: torch.Tensor, y: torch.Tensor, *, params: CWParams,
            stop_at: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Untargeted CW-L2; returns (x_adv, its L2 distance to x, inf where none was found).
    Samples misclassified from the start keep ``x`` (distance 0)."""
    def step(todo: torch.Tensor, const: torch.Tensor, best: torch.Tensor,
             best_norm: torch.Tensor) -> torch.Tensor:
        return _search_step(calls, x[todo], y[todo], const, params, best, best_norm)

    return binary_search(calls, x, y, step, norm=Norm.L2, search_steps=params.search_steps,
                         initial_const=params.initial_const, stop_at=stop_at)


def _cw_cost(params: CWParams, n: int, num_classes: int, n_fit: int) -> tuple[int, int]:
    calls = n * params.search_steps * params.steps
    return n + calls, calls


@register_attack("cw", params=CWParams, norms=(Norm.L2,), minimal=True, cost=_cw_cost)
def cw(
    target: Target, x: torch.Tensor, y: torch.Tensor, *, eps: float | None, norm: Norm,
    generator: torch.Generator, params: CWParams, y_target: torch.Tensor | None = None,
) -> AttackResult:
    """Carlini & Wagner L2 with a binary search over c, minimal L2 (Carlini & Wagner 2017)."""
    calls = ModelCalls(target)
    best, best_norm = cw_core(calls, x, y, params=params, stop_at=eps)
    return AttackResult.build(x, best, torch.isfinite(best_norm), calls)


__all__ = ["CWParams", "binary_search", "cw", "cw_core"]
