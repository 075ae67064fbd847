"""The local Lipschitz estimate recorded beside robustness: how steeply the decision margin
changes with the input.

For an image ``x`` with label ``y`` the decision margin is ``m(x) = z_y(x) − max_{j≠y} z_j(x)``
over the target's logits (a discriminator's ``[0, d]``: ``±d``). To first order, an ``eps``-ball
attack in the norm ``p`` lowers it by ``eps · ‖∇ₓm‖_q`` with ``q`` the dual norm (Linf → L1,
L2 → L2), so the median of these gradient norms over the evaluated images says how much each
unit of budget buys the attacker (Hein & Andriushchenko, "Formal Guarantees on the Robustness of
a Classifier against Adversarial Manipulation", NeurIPS 2017). Measured in advbench's pixel
space, in eval mode and fp32, with one backward pass per batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.core.losses import margin_loss
from bench.core.target import Target


@dataclass(frozen=True)
class MarginGradient:
    """Median norms of the margin's input gradient: ``l1`` (the dual of Linf) and ``l2``."""

    l1: float | None
    l2: float | None


def margin_gradient_norms(target: Target, x: torch.Tensor, y: torch.Tensor,
                          batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-image L1 and L2 norms of ``∇ₓ m(x)``; ``None`` when the target gives no finite input
    gradient (a defense that is not differentiable end to end)."""
    l1s, l2s = [], []
    with target.evaluating(), torch.autocast(x.device.type, enabled=False):
        for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
            xb = xb.detach().float().requires_grad_(True)
            with torch.enable_grad():
                margin = -margin_loss(target(xb), yb)  # z_y − max_{j≠y} z_j
                if not margin.requires_grad:
                    return None
                (grad,) = torch.autograd.grad(margin.sum(), xb, allow_unused=True)
            if grad is None or not bool(torch.isfinite(grad).all()):
                return None
            flat = grad.detach().flatten(1)
            l1s.append(flat.abs().sum(1))
            l2s.append(flat.norm(dim=1))
    return torch.cat(l1s), torch.cat(l2s)


def median_margin_gradient(target: Target, x: torch.Tensor, y: torch.Tensor,
                           batch_size: int = 256) -> MarginGradient:
    """The median gradient norms over ``x`` (``None`` where no gradient exists)."""
    norms = margin_gradient_norms(target, x, y, batch_size) if len(x) else None
    if norms is None:
        return MarginGradient(None, None)
    l1, l2 = norms
    return MarginGradient(float(l1.median()), float(l2.median()))


__all__ = ["MarginGradient", "margin_gradient_norms", "median_margin_gradient"]
