"""The Boundary attack: Brendel, Rauber, Bethge, "Decision-Based Adversarial Attacks: Reliable
Attacks Against Black-Box Machine Learning Models", ICLR 2018 — a minimal L2 attack that reads
only the predicted label.

From an adversarial start (uniform noise, binary-searched towards the clean image), each step
draws a Gaussian direction orthogonal to the line to the clean image, scaled to
``spherical_step`` times the current distance and put back on the sphere of that distance
(Pythagoras), then moves ``source_step`` of the distance towards the clean image; the candidate
is kept when it is still adversarial. Step sizes adapt as in the paper (and foolbox 3, whose
thresholds this follows): every ``stats_every`` steps the spherical candidate is queried too;
over its last 100 checks, a success rate above 0.5 multiplies both steps by 1.5 and below 0.2
divides them; over the last 30 full candidates, above 0.25 multiplies the source step and below
0.1 divides it. Foolbox records a full candidate's outcome only on the steps that query the
spherical one; here every step's counts (it is known without another query), so the source
step adapts ten times sooner (tests/benchmarks/test_decision_based.py measures the distance
this reaches at foolbox's and ART's query counts). A sample has converged when its source step
falls below ``convergence``. Unlike foolbox, each sample draws its own direction, and the run
ends with a binary search from the best point along the line to the clean image (its queries
are kept back from the cap).

Every sample carries its own query count; ``max_queries`` caps it. Given an eps, a sample leaves
once it is within it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from attacks.decision import LabelOracle, boundary_search, noise_start
from bench.core.attack_registry import register_attack
from bench.core.calls import ModelCalls
from bench.core.errors import BadInput
from bench.core.norms import Norm, eps_limit, l2_norm
from bench.core.result import AttackResult
from bench.core.target import Target


@dataclass(frozen=True)
class BoundaryParams:
    """``steps`` (25,000, the paper's and foolbox's), ``max_queries`` per sample (None: no cap),
    the first ``spherical_step`` and ``source_step`` (0.01), ``adaptation`` (1.5),
    ``convergence`` (1e-7), ``stats_every`` (10), ``init_tries`` (100 noise draws)."""

    steps: int = 25_000
    max_queries: int | None = None
    spherical_step: float = 1e-2
    source_step: float = 1e-2
    adaptation: float = 1.5
    convergence: float = 1e-7
    stats_every: int = 10
    init_tries: int = 100

    def __post_init__(self) -> None:
        for name in ("steps", "stats_every", "init_tries"):
            if getattr(self, name) < 1:
                raise BadInput(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_queries is not None and self.max_queries < 1:
            raise BadInput(f"max_queries must be >= 1, got {self.max_queries}")
        for name in ("spherical_step", "source_step", "convergence"):
            if not getattr(self, name) > 0:
                raise BadInput(f"{name} must be > 0, got {getattr(self, name)}")
        if not self.adaptation > 1:
            raise BadInput(f"adaptation must be > 1, got {self.adaptation}")


class _Window:
    """Per sample, the last ``size`` outcomes of a check (a ring), to rate success."""

    def __init__(self, n: int, size: int, device: torch.device) -> None:
        self.hits = torch.zeros(n, size, dtype=torch.bool, device=device)
        self.count = torch.zeros(n, dtype=torch.long, device=device)
        self.size = size

    def add(self, rows: torch.Tensor, hit: torch.Tensor) -> None:
        self.hits[rows, self.count[rows] % self.size] = hit
        self.count[rows] += 1

    def full(self, rows: torch.Tensor) -> torch.Tensor:
        return self.count[rows] >= self.size

    def rate(self, rows: torch.Tensor) -> torch.Tensor:
        return self.hits[rows].float().mean(1)

    def clear(self, rows: torch.Tensor) -> None:
        self.count[rows] = 0


def _proposals(x0: torch.Tensor, best: torch.Tensor, spherical: torch.Tensor,
               source: torch.Tensor, bounds: tuple[float, float], generator: torch.Generator
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(full candidates, spherical candidates) for the rows ``x0`` / ``best``."""
    n, shape = x0.shape[0], x0.shape[1:]
    flat0, flat = x0.flatten(1), best.flatten(1)
    to_source = flat0 - flat
    dist = l2_norm(to_source)
    unit = to_source / dist[:, None]
    eta = torch.randn(flat.shape, generator=generator, device=generator.device).to(flat)
    eta = eta - (eta * unit).sum(1, keepdim=True) * unit
    eta = eta * (spherical * dist / l2_norm(eta).clamp_min(1e-12))[:, None]
    on_sphere = flat0 + (eta - to_source) / torch.sqrt(spherical ** 2 + 1)[:, None]
    on_sphere = on_sphere.clamp(*bounds)
    back = flat0 - on_sphere
    back_norm = l2_norm(back).clamp_min(1e-12)
    length = (source * dist + back_norm - dist).clamp_min(0) / back_norm
    full = (on_sphere + length[:, None] * back).clamp(*bounds)
    return full.view(n, *shape), on_sphere.view(n, *shape)


def boundary_core(calls: ModelCalls, x: torch.Tensor, y: torch.Tensor, *,
                  params: BoundaryParams, generator: torch.Generator,
                  stop_at: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Untargeted Boundary attack; returns (x_adv, its L2 distance, inf where nothing was
    found). Samples misclassified from the start keep ``x`` (distance 0)."""
    n = x.shape[0]
    bounds = calls.target.bounds
    oracle = LabelOracle(calls, y)
    best = x.clone()
    best_dist = torch.full((n,), math.inf, device=x.device)
    every = torch.arange(n, device=x.device)
    wrong = oracle.adversarial(x, every)
    best_dist[wrong] = 0.0
    rows, noise = noise_start(oracle, x, every[~wrong], bounds, params.init_tries, generator)
    d = x[0].numel()
    theta = 1 / (d * math.sqrt(d))
    search = math.ceil(math.log2(1 / theta))  # queries of one binary search
    best[rows] = boundary_search(oracle, x[rows], noise, rows, Norm.L2, theta)
    best_dist[rows] = l2_norm(best[rows] - x[rows])
    found = rows
    spherical = torch.full((n,), params.spherical_step, device=x.device)
    source = torch.full((n,), params.source_step, device=x.device)
    sphere_stats = _Window(n, 100, x.device)
    step_stats = _Window(n, 30, x.device)
    leave_at = 0.0 if stop_at is None else eps_limit(Norm.L2, stop_at, bounds[1] - bounds[0])
    for step in range(1, params.steps + 1):
        check = step % params.stats_every == 0
        going = (source[rows] >= params.convergence) & (best_dist[rows] > leave_at)
        if params.max_queries is not None:  # the last binary search is paid for up front
            going &= oracle.queries[rows] + 1 + int(check) + search <= params.max_queries
        rows = rows[going]
        if rows.numel() == 0:
            break
        full, on_sphere = _proposals(x[rows], best[rows], spherical[rows], source[rows],
                                     bounds, generator)
        hit = oracle.adversarial(full, rows)
        dist = l2_norm(full - x[rows])
        better = hit & (dist < best_dist[rows])
        best[rows[better]], best_dist[rows[better]] = full[better], dist[better]
        step_stats.add(rows, hit)  # every step's outcome: known without another query
        if check:
            sphere_stats.add(rows, oracle.adversarial(on_sphere, rows))
        _adapt(rows, sphere_stats, step_stats, spherical, source, params.adaptation)
    if found.numel():  # a last binary search along the line to the clean image
        closer = boundary_search(oracle, x[found], best[found], found, Norm.L2, theta)
        dist = l2_norm(closer - x[found])
        better = dist < best_dist[found]
        best[found[better]], best_dist[found[better]] = closer[better], dist[better]
    return best, best_dist


def _adapt(rows: torch.Tensor, sphere_stats: _Window, step_stats: _Window,
           spherical: torch.Tensor, source: torch.Tensor, factor: float) -> None:
    """The step sizes from the success rates of full windows (foolbox 3's thresholds)."""
    full = sphere_stats.full(rows)
    rate = sphere_stats.rate(rows)
    up, down = full & (rate > 0.5), full & (rate < 0.2)
    scale = torch.where(up, factor, torch.where(down, 1 / factor, 1.0))
    spherical[rows] *= scale
    source[rows] *= scale
    sphere_stats.clear(rows[up | down])
    full = step_stats.full(rows)
    rate = step_stats.rate(rows)
    up, down = full & (rate > 0.25), full & (rate < 0.1)
    source[rows] *= torch.where(up, factor, torch.where(down, 1 / factor, 1.0))
    step_stats.clear(rows[up | down])


def _cost(params: BoundaryParams, n: int, num_classes: int, n_fit: int) -> tuple[int, int]:
    per_sample = params.init_tries + 30 + params.steps + params.steps // params.stats_every
    if params.max_queries is not None:
        per_sample = min(per_sample, params.max_queries)
    return n * per_sample, 0


@register_attack("boundary", params=BoundaryParams, norms=(Norm.L2,), minimal=True,
                 black_box=True, label_only=True, cost=_cost)
def boundary(
    target: Target, x: torch.Tensor, y: torch.Tensor, *, eps: float | None, norm: Norm,
    generator: torch.Generator, params: BoundaryParams, y_target: torch.Tensor | None = None,
) -> AttackResult:
    """Boundary attack, minimal L2 perturbation from labels only (Brendel et al. 2018)."""
    calls = ModelCalls(target)
    best, dist = boundary_core(calls, x, y, params=params, generator=generator, stop_at=eps)
    return AttackResult.build(x, best, torch.isfinite(dist), calls)


__all__ = ["BoundaryParams", "boundary", "boundary_core"]
