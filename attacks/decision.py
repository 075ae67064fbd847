"""What the decision-based attacks (HopSkipJump, the Boundary attack) share: the label oracle
with per-sample query counts, the uniform-noise start and the binary search to the boundary."""

from __future__ import annotations

import torch

from bench.core.calls import ModelCalls
from bench.core.norms import Norm, linf_norm


class LabelOracle:
    """Is ``x`` misclassified: the target's label only, one query per image, counted per
    sample (and as a forward pass)."""

    def __init__(self, calls: ModelCalls, labels: torch.Tensor) -> None:
        self.calls, self.labels = calls, labels
        self.queries = torch.zeros(labels.shape[0], dtype=torch.long, device=labels.device)

    def adversarial(self, x: torch.Tensor, rows: torch.Tensor, per_row: int = 1) -> torch.Tensor:
        """``x``: ``per_row`` images per sample of ``rows`` (row-major)."""
        self.queries[rows] += per_row
        labels = self.labels[rows].repeat_interleave(per_row)
        return self.calls.logits(x).argmax(1) != labels


def uniform(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator
            ) -> torch.Tensor:
    out = torch.rand(shape, generator=generator, device=generator.device)
    return out.to(device=like.device, dtype=like.dtype)


def noise_start(oracle: LabelOracle, x: torch.Tensor, rows: torch.Tensor,
                bounds: tuple[float, float], tries: int, generator: torch.Generator
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform noise in the bounds until adversarial (``tries`` draws at most per sample): the
    rows that found one, and that noise."""
    lo, hi = bounds
    found = torch.zeros(len(rows), dtype=torch.bool, device=x.device)
    noise = torch.empty_like(x[rows])
    for _ in range(tries):
        todo = torch.nonzero(~found).flatten()
        if todo.numel() == 0:
            break
        draw = lo + (hi - lo) * uniform(tuple(noise[todo].shape), x, generator)
        hit = oracle.adversarial(draw, rows[todo])
        noise[todo[hit]] = draw[hit]
        found[todo[hit]] = True
    return rows[found], noise[found]


def _view(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def blend(x0: torch.Tensor, x_adv: torch.Tensor, at: torch.Tensor, norm: Norm) -> torch.Tensor:
    """L2: the point ``at`` of the way from ``x0`` to ``x_adv``; Linf: ``x_adv`` clipped to
    the box of half-width ``at`` around ``x0``."""
    if norm is Norm.L2:
        return x0 + _view(at, x0) * (x_adv - x0)
    box = _view(at, x0)
    return torch.minimum(torch.maximum(x_adv, x0 - box), x0 + box)


def boundary_search(oracle: LabelOracle, x0: torch.Tensor, x_adv: torch.Tensor,
                    rows: torch.Tensor, norm: Norm, theta: float) -> torch.Tensor:
    """Binary search between the clean ``x0`` and the adversarial ``x_adv`` (of samples
    ``rows``) to the boundary, adversarial side: to ``theta`` of the way in L2, to
    ``min(theta · dist, theta)`` of the box's half-width in Linf (HopSkipJump's Algorithm 2)."""
    if norm is Norm.L2:
        low, high = torch.zeros(len(rows), device=x0.device), torch.ones(
            len(rows), device=x0.device)
        threshold = torch.full_like(low, theta)
    else:
        dist = linf_norm(x_adv - x0)
        low, high = torch.zeros_like(dist), dist.clone()
        threshold = torch.clamp(dist * theta, max=theta)
    while True:
        open_ = torch.nonzero((high - low) > threshold).flatten()  # rows still searching
        if open_.numel() == 0:
            break
        mid = (low[open_] + high[open_]) / 2
        hit = oracle.adversarial(blend(x0[open_], x_adv[open_], mid, norm), rows[open_])
        high[open_] = torch.where(hit, mid, high[open_])
        low[open_] = torch.where(hit, low[open_], mid)
    return blend(x0, x_adv, high, norm)
