"""A linear classifier and its exact minimal adversarial distances, in every norm, inside the
box of valid images: the closed-form reference for minimum-norm attacks.

For a linear classifier z = Wx + b, x is misclassified at x + δ iff some class t ≠ y has
a_t·δ > g_t, with a_t = w_t − w_y and g_t = z_y − z_t (> 0 at a correctly classified x).
The set of adversarials is the union of these half-spaces, so the minimal distance is the
minimum over t of the distance to each half-space inside the box; for one half-space each
coordinate i moves at most its room (1 − x_i upwards or x_i downwards, the way a_t,i pushes)
and contributes |a_t,i| per unit, which makes every norm's problem one-dimensional:

- L0: the fewest coordinates whose full contributions |a_i| room_i reach g (largest first);
- L1: a fractional knapsack, coordinates by |a_i| descending, each up to its room;
- L2: δ_i = clip(λ a_i, room), λ solved by bisection (the KKT point of the projection);
- Linf: the smallest d with Σ |a_i| min(d, room_i) ≥ g, by bisection.

Computed here in float64 NumPy, independent of advbench's code.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from bench.core.norms import Norm
from bench.core.target import Target


def linear_target(classes: int = 6, features: int = 20, seed: int = 0,
                  shape: tuple[int, ...] = (1, 4, 5)) -> Target:
    """A linear classifier whose class weights differ in length by up to 20×, so that the
    nearest boundary is often not the runner-up logit's."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(features, classes))
    with torch.no_grad():
        scale = torch.logspace(0, 1.3, classes)[torch.randperm(classes, generator=g)]
        model[1].weight.copy_(torch.randn(classes, features, generator=g) * scale[:, None])
        model[1].bias.copy_(torch.randn(classes, generator=g))
    return Target(model, num_classes=classes, input_shape=shape, bounds=(0.0, 1.0))


def _bisect(reach: object, goal: float, hi: float) -> float:
    """The smallest v in [0, hi] with reach(v) >= goal, for a non-decreasing reach."""
    lo = 0.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if reach(mid) >= goal:  # type: ignore[operator]
            hi = mid
        else:
            lo = mid
    return hi


def half_space_distance(a: np.ndarray, room: np.ndarray, goal: float, norm: Norm) -> float:
    """The smallest ``norm`` of δ with a·δ >= goal and each |δ_i| <= room_i in a's direction
    (inf when even the whole room falls short)."""
    gain = np.abs(a) * room
    if gain.sum() < goal:
        return float("inf")
    if norm is Norm.L0:
        return float(np.searchsorted(np.cumsum(np.sort(gain)[::-1]), goal) + 1)
    if norm is Norm.L1:
        order = np.argsort(-np.abs(a))
        spent, left = 0.0, goal
        for i in order:
            take = min(room[i], left / abs(a[i]))
            spent, left = spent + take, left - take * abs(a[i])
            if left <= 0:
                break
        return spent
    if norm is Norm.LINF:
        return _bisect(lambda d: (np.abs(a) * np.minimum(d, room)).sum(), goal, float(room.max()))
    lam = _bisect(lambda v: (np.abs(a) * np.minimum(v * np.abs(a), room)).sum(), goal,
                  float((room / np.maximum(np.abs(a), 1e-300)).max()))
    return float(np.linalg.norm(np.minimum(lam * np.abs(a), room)))


def exact_distances(target: Target, x: torch.Tensor, y: torch.Tensor, norm: Norm) -> np.ndarray:
    """``[N]``: each sample's exact minimal ``norm`` distance to misclassification inside
    [0, 1] (0 where already misclassified)."""
    layer = target.model[1]
    w = layer.weight.detach().double().numpy()
    b = layer.bias.detach().double().numpy()
    flat = x.flatten(1).double().numpy()
    out = np.zeros(len(flat))
    for n, (xi, yi) in enumerate(zip(flat, y.tolist(), strict=True)):
        z = w @ xi + b
        if int(np.argmax(z)) != yi:
            continue
        best = float("inf")
        for t in range(len(z)):
            if t == yi:
                continue
            a = w[t] - w[yi]
            room = np.where(a > 0, 1.0 - xi, xi)
            best = min(best, half_space_distance(a, room, z[yi] - z[t], norm))
        out[n] = best
    return out


__all__ = ["exact_distances", "half_space_distance", "linear_target"]
