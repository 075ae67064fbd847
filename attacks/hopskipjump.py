"""HopSkipJump: Chen, Jordan, Wainwright, "HopSkipJumpAttack: A Query-Efficient Decision-Based
Attack", IEEE S&P 2020 — a minimal L2 or Linf attack that reads only the predicted label.

From an adversarial start (uniform noise, then a binary search towards the clean image), each
iteration t (Algorithm 1 of the paper; the defaults are the authors' and foolbox's):

1. estimates the boundary's normal at the current boundary point from the labels of
   ``min(initial_evals·√t, max_evals)`` random probes at radius δ (Gaussian directions for L2,
   uniform for Linf), their ±1 labels less their mean as the baseline (Eq. 16);
2. steps along it (its sign for Linf) by ``dist / √t``, halved until the step is adversarial
   (the geometric progression of §4.2);
3. binary-searches back to the boundary between the clean image and that point (L2: along the
   line; Linf: by clipping to shrinking boxes) to precision θ = γ / (d√d) (L2) or γ / d² (Linf),
   δ being √d·θ·dist (L2) or d·θ·dist (Linf), and 0.1 of the pixel range at t = 1.

Every sample carries its own query count; ``max_queries`` caps it (a sample stops before an
iteration it cannot pay for in full), and each label read counts as one forward pass. The
closest adversarial seen is kept. Given an eps, a sample leaves once it is within it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from attacks.decision import LabelOracle, boundary_search, noise_start
from bench.core.attack_registry import register_attack
from bench.core.calls import ModelCalls
from bench.core.errors import BadInput
from bench.core.norms import Norm, eps_limit, l2_norm, linf_norm
from bench.core.result import AttackResult
from bench.core.target import Target


@dataclass(frozen=True)
class HopSkipJumpParams:
    """``steps``: iterations (64, foolbox's default); ``max_queries``: label queries per
    sample, start included (None: no cap); ``initial_evals`` / ``max_evals``: probes of the
    first and of any gradient estimate (100 / 10,000); ``gamma``: the binary search's precision
    factor (1.0); ``init_tries``: uniform-noise draws to find a start (100);
    ``probe_chunk``: probe images per model call, over the batch (speed and memory, not
    results: a few hundred keep a small CNN's activations in cache)."""

    steps: int = 64
    max_queries: int | None = None
    initial_evals: int = 100
    max_evals: int = 10_000
    gamma: float = 1.0
    init_tries: int = 100
    probe_chunk: int = 512

    def __post_init__(self) -> None:
        for name in ("steps", "initial_evals", "max_evals", "init_tries", "probe_chunk"):
            if getattr(self, name) < 1:
                raise BadInput(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_queries is not None and self.max_queries < 1:
            raise BadInput(f"max_queries must be >= 1, got {self.max_queries}")
        if not self.gamma > 0:
            raise BadInput(f"gamma must be > 0, got {self.gamma}")


def _distance(delta: torch.Tensor, norm: Norm) -> torch.Tensor:
    return l2_norm(delta) if norm is Norm.L2 else linf_norm(delta)


def _view(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view(-1, *([1] * (like.ndim - 1))).to(like.dtype)


class _HopSkipJump:
    """One batch of samples under attack (all tensors indexed by sample)."""

    def __init__(self, calls: ModelCalls, x: torch.Tensor, y: torch.Tensor, norm: Norm,
                 params: HopSkipJumpParams, generator: torch.Generator) -> None:
        self.x, self.norm, self.params, self.generator = x, norm, params, generator
        self.oracle = LabelOracle(calls, y)
        self.lo, self.hi = calls.target.bounds
        self.d = x[0].numel()
        gamma = params.gamma
        self.theta = gamma / (self.d * math.sqrt(self.d)) if norm is Norm.L2 \
            else gamma / (self.d * self.d)

    def _rand(self, shape: tuple[int, ...], uniform: bool) -> torch.Tensor:
        draw = torch.rand if uniform else torch.randn
        out = draw(shape, generator=self.generator, device=self.generator.device)
        return out.to(device=self.x.device, dtype=self.x.dtype)

    def start(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Uniform noise until adversarial; the rows that found one and their boundary
        points."""
        rows, noise = noise_start(self.oracle, self.x, rows, (self.lo, self.hi),
                                  self.params.init_tries, self.generator)
        return rows, self.boundary(rows, noise)

    def boundary(self, rows: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        return boundary_search(self.oracle, self.x[rows], x_adv, rows, self.norm, self.theta)

    def gradient(self, rows: torch.Tensor, point: torch.Tensor, delta: torch.Tensor,
                 evals: int) -> torch.Tensor:
        """The estimated boundary normal at ``point`` from ``evals`` probes at radius
        ``delta`` per sample (baseline-corrected mean of the probes' ±1 labels), unit L2."""
        n, shape = len(rows), point.shape[1:]
        sum_fu = torch.zeros_like(point)
        sum_u = torch.zeros_like(point)
        sum_f = torch.zeros(n, device=point.device, dtype=point.dtype)
        done = 0
        while done < evals:
            k = min(max(1, self.params.probe_chunk // n), evals - done)
            u = self._rand((n, k, *shape), self.norm is Norm.LINF)
            if self.norm is Norm.LINF:
                u = 2 * u - 1
            u = u / l2_norm(u.flatten(0, 1)).view(n, k, *([1] * len(shape))).clamp_min(1e-12)
            probes = (point.unsqueeze(1) + delta.view(n, 1, *([1] * len(shape))) * u).clamp(
                self.lo, self.hi)
            u = (probes - point.unsqueeze(1)) / delta.view(n, 1, *([1] * len(shape)))
            f = self.oracle.adversarial(probes.flatten(0, 1), rows, k).view(n, k).to(
                point.dtype) * 2 - 1
            sum_fu += torch.einsum("nk,nk...->n...", f, u)
            sum_u += u.sum(1)
            sum_f += f.sum(1)
            done += k
        mean_f = sum_f / evals
        grad = (sum_fu - _view(mean_f, point) * sum_u) / evals
        one_sided = mean_f.abs() == 1  # every probe on one side: no baseline to subtract
        grad = torch.where(_view(one_sided, point).bool(), _view(mean_f, point) * sum_u / evals,
                           grad)
        return grad / _view(l2_norm(grad).clamp_min(1e-12), grad)

    def step(self, rows: torch.Tensor, point: torch.Tensor, grad: torch.Tensor,
             dist: torch.Tensor, t: int) -> torch.Tensor:
        """From ``point`` along ``grad`` (its sign for Linf) by ``dist / √t``, halved until
        adversarial (at most 30 halvings; a row that never is stays at ``point``)."""
        update = grad if self.norm is Norm.L2 else grad.sign()
        size = dist / math.sqrt(t)
        out = point.clone()
        todo = torch.arange(len(rows), device=point.device)
        for _ in range(30):
            cand = (point[todo] + _view(size[todo], point) * update[todo]).clamp(self.lo, self.hi)
            hit = self.oracle.adversarial(cand, rows[todo])
            out[todo[hit]] = cand[hit]
            todo = todo[~hit]
            if todo.numel() == 0:
                break
            size[todo] = size[todo] / 2
        return out


def hopskipjump_core(calls: ModelCalls, x: torch.Tensor, y: torch.Tensor, *, norm: Norm,
                     params: HopSkipJumpParams, generator: torch.Generator,
                     stop_at: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Untargeted HopSkipJump; returns (x_adv, its distance to x, inf where nothing was
    found). Samples misclassified from the start keep ``x`` (distance 0)."""
    n = x.shape[0]
    best = x.clone()
    best_dist = torch.full((n,), math.inf, device=x.device)
    attack = _HopSkipJump(calls, x, y, norm, params, generator)
    every = torch.arange(n, device=x.device)
    wrong = attack.oracle.adversarial(x, every)
    best_dist[wrong] = 0.0
    rows, point = attack.start(every[~wrong])
    leave_at = 0.0 if stop_at is None else eps_limit(norm, stop_at, attack.hi - attack.lo)

    def keep(rows: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
        dist = _distance(point - x[rows], norm)
        closer = dist < best_dist[rows]
        best[rows[closer]], best_dist[rows[closer]] = point[closer], dist[closer]
        return dist

    dist = keep(rows, point)
    cap = params.max_queries
    for t in range(1, params.steps + 1):
        going = best_dist[rows] > leave_at
        rows, point, dist = rows[going], point[going], dist[going]
        if rows.numel() == 0:
            break
        evals = min(int(params.initial_evals * math.sqrt(t)), params.max_evals)
        if cap is not None:  # what the rest of the iteration costs at most: a step search and
            search = 30 + math.ceil(math.log2(1 / attack.theta)) + 30  # a binary search
            left = cap - int(attack.oracle.queries[rows].max())
            evals = min(evals, left - search)
            if evals < 1:
                break
        delta = torch.full_like(dist, 0.1 * (attack.hi - attack.lo)) if t == 1 else (
            math.sqrt(attack.d) * attack.theta * dist if norm is Norm.L2
            else attack.d * attack.theta * dist)
        grad = attack.gradient(rows, point, delta, evals)
        point = attack.boundary(rows, attack.step(rows, point, grad, dist, t))
        dist = keep(rows, point)
    return best, best_dist


def _cost(params: HopSkipJumpParams, n: int, num_classes: int, n_fit: int) -> tuple[int, int]:
    evals = sum(min(int(params.initial_evals * math.sqrt(t)), params.max_evals)
                for t in range(1, params.steps + 1))
    per_sample = params.init_tries + evals + params.steps * 90
    if params.max_queries is not None:
        per_sample = min(per_sample, params.max_queries)
    return n * per_sample, 0


@register_attack("hopskipjump", params=HopSkipJumpParams, norms=(Norm.L2, Norm.LINF),
                 minimal=True, black_box=True, label_only=True, cost=_cost)
def hopskipjump(
    target: Target, x: torch.Tensor, y: torch.Tensor, *, eps: float | None, norm: Norm,
    generator: torch.Generator, params: HopSkipJumpParams, y_target: torch.Tensor | None = None,
) -> AttackResult:
    """HopSkipJump, minimal perturbation from labels only (Chen et al. 2020)."""
    calls = ModelCalls(target)
    best, dist = hopskipjump_core(calls, x, y, norm=norm, params=params, generator=generator,
                                  stop_at=eps)
    return AttackResult.build(x, best, torch.isfinite(dist), calls)


__all__ = ["HopSkipJumpParams", "hopskipjump", "hopskipjump_core"]
