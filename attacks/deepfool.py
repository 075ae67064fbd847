"""DeepFool: Moosavi-Dezfooli, Fawzi, Frossard, "DeepFool: a simple and accurate method to fool
deep neural networks", CVPR 2016.

A minimal-perturbation attack: it takes ``eps = None`` and reports per-sample norms, from which
the runner derives robust accuracy at any eps. Batched with a per-sample active set: samples that
are fooled stop costing compute. The Jacobian rows of the ``candidates - 1`` logit differences
are vector-Jacobian products of one forward pass, vmapped (``is_grads_batched``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.core.attack_registry import register_attack
from bench.core.calls import ModelCalls
from bench.core.errors import BadInput
from bench.core.norms import Norm
from bench.core.result import AttackResult
from bench.core.target import Target


@dataclass(frozen=True)
class DeepFoolParams:
    """``steps``: maximum linearisation steps. ``overshoot``: the paper's 0.02.
    ``candidates``: the top-k classes (by clean logit) considered, including the true one;
    ``None`` = min(10, number of classes)."""

    steps: int = 50
    overshoot: float = 0.02
    candidates: int | None = None

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise BadInput(f"steps must be >= 1, got {self.steps}")
        if self.overshoot < 0:
            raise BadInput(f"overshoot must be >= 0, got {self.overshoot}")
        if self.candidates is not None and self.candidates < 2:
            raise BadInput(f"candidates must be >= 2, got {self.candidates}")


def deepfool_core(calls: ModelCalls, x: torch.Tensor, y: torch.Tensor, *, norm: Norm,
                  steps: int, overshoot: float, candidates: int,
                  bounds: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched DeepFool pushing each ``x`` away from class ``y``; returns (x_adv, success).

    Samples already classified away from ``y`` get ``success = True`` and ``x_adv = x``; samples
    not fooled within ``steps`` get ``success = False`` and ``x_adv = x``.
    """
    lo, hi = bounds
    view = (-1,) + (1,) * (x.ndim - 1)
    clean_logits = calls.logits(x)
    # Candidate classes: the label first, then the other top-scoring classes at the clean point.
    others = clean_logits.scatter(1, y[:, None], float("-inf"))
    top = others.topk(candidates - 1, dim=1).indices
    classes = torch.cat([y[:, None], top], dim=1)

    x_adv = x.clone()
    r_total = torch.zeros_like(x)
    success = clean_logits.argmax(1) != y
    initially_fooled = success.clone()
    active = torch.nonzero(~success).flatten()
    for _ in range(steps):
        if active.numel() == 0:
            break
        logits, grads = calls.difference_gradients(x_adv[active], classes[active])
        fooled = logits.argmax(1) != y[active]
        success[active] = fooled
        keep = ~fooled
        active, logits, grads = active[keep], logits[keep], grads[:, keep]
        if active.numel() == 0:
            break
        picked = logits.gather(1, classes[active]).float()
        f_diff = (picked[:, 1:] - picked[:, :1]).T  # [K-1, n_active]
        flat = grads.flatten(2).float()  # [K-1, n_active, D]
        dual = flat.abs().sum(-1) if norm is Norm.LINF else flat.norm(dim=-1)
        distances = f_diff.abs() / (dual + 1e-8)
        best = distances.argmin(0)  # [n_active]
        idx = torch.arange(active.numel(), device=x.device)
        w = grads[best, idx]  # [n_active, ...]
        dist = distances[best, idx]
        if norm is Norm.LINF:
            step = (dist + 1e-4).view(view) * w.sign()
        else:
            step = ((dist + 1e-4) / (dual[best, idx] + 1e-8)).view(view) * w
        r_total[active] += step.to(x.dtype)
        x_adv[active] = (x[active] + (1 + overshoot) * r_total[active]).clamp(lo, hi)
    else:
        if active.numel():
            success[active] = calls.logits(x_adv[active]).argmax(1) != y[active]
    # Samples never fooled, or fooled from the start, keep the clean input.
    x_adv = torch.where((success & ~initially_fooled).view(view), x_adv, x)
    return x_adv, success


def _deepfool_cost(params: DeepFoolParams, n: int, num_classes: int, n_fit: int
                   ) -> tuple[int, int]:
    k = min(num_classes, params.candidates or 10)
    return n * (params.steps + 1), n * params.steps * (k - 1)


@register_attack("deepfool", params=DeepFoolParams, norms=(Norm.L2, Norm.LINF), minimal=True,
                 cost=_deepfool_cost)
def deepfool(
    target: Target, x: torch.Tensor, y: torch.Tensor, *, eps: float | None, norm: Norm,
    generator: torch.Generator, params: DeepFoolParams, y_target: torch.Tensor | None = None,
) -> AttackResult:
    """DeepFool, L2 and Linf, minimal perturbation (Moosavi-Dezfooli et al. 2016)."""
    calls = ModelCalls(target)
    x_adv, success = deepfool_core(calls, x, y, norm=norm, steps=params.steps,
                                   overshoot=params.overshoot,
                                   candidates=resolve_candidates(params.candidates, target),
                                   bounds=target.bounds)
    return AttackResult.build(x, x_adv, success, calls)


def resolve_candidates(candidates: int | None, target: Target) -> int:
    """The candidate count to use: the default min(10, C), or a checked explicit value."""
    if candidates is None:
        return min(10, target.num_classes)
    if candidates > target.num_classes:
        raise BadInput(f"candidates = {candidates} exceeds the target's "
                       f"{target.num_classes} classes; use 2..{target.num_classes}")
    return candidates


__all__ = ["DeepFoolParams", "deepfool", "deepfool_core", "resolve_candidates"]
