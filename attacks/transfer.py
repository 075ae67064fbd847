"""Attacks built to transfer: momentum and input diversity on the sign-gradient step.

- MI-FGSM: Dong, Liao, Pang, Su, Zhu, Hu, Li, "Boosting Adversarial Attacks with Momentum",
  CVPR 2018 — the gradient, divided by its mean absolute value, accumulates with decay ``mu``;
  each step follows the sign of the accumulated direction (steepest ascent of it in L2).
  Defaults are the paper's: 10 steps of eps/10, mu = 1.
- DI-FGSM: Xie, Zhang, Zhou, Bai, Wang, Ren, Yuille, "Improving Transferability of Adversarial
  Examples with Input Diversity", CVPR 2019 — each gradient is taken, with probability ``p``
  (0.5), at a randomly resized and padded copy of the iterate. The paper enlarges 299 to
  [299, 330) pixels for networks with global pooling; networks with a fixed input size (a LeNet's
  flatten) need the input size kept, so the copy is shrunk to [rate·H, H) pixels (rate 0.9) and
  padded back to H at a random offset with the lower pixel bound, as torchattacks' ``DIFGSM``
  does. ``decay = 1`` makes it M-DI²-FGSM.

Both run their full budget (no early stop: a point that just crosses the source model's
boundary transfers worse than one pushed on) on the model they are given — a sweep's transfer
``source`` (one surrogate, or several whose logits are averaged, Dong et al. §3.2), or the
target itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.core.attack_registry import register_attack
from bench.core.calls import AdaptiveParams, ModelCalls
from bench.core.errors import BadInput
from bench.core.losses import loss_by_name
from bench.core.norms import Norm, project, steepest_direction
from bench.core.result import AttackResult, deferred_success
from bench.core.target import Target


@dataclass(frozen=True)
class MomentumParams(AdaptiveParams):
    """``steps`` sign-gradient steps of ``step_size`` (``None``: eps / steps); ``decay``: the
    momentum ``mu`` (0: no momentum); ``diversity_prob``: the chance a gradient is taken at a
    resized and padded copy (0: never); ``resize_rate``: the smallest copy's side as a share
    of the input's; ``loss``: ``"ce"`` (the papers') or ``"margin"``."""

    steps: int = 10
    step_size: float | None = None
    decay: float = 1.0
    diversity_prob: float = 0.0
    resize_rate: float = 0.9
    loss: str = "ce"

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise BadInput(f"steps must be >= 1, got {self.steps}")
        if self.step_size is not None and not self.step_size > 0:
            raise BadInput(f"step_size must be > 0, got {self.step_size}")
        if not self.decay >= 0:
            raise BadInput(f"decay must be >= 0, got {self.decay}")
        if not 0 <= self.diversity_prob <= 1:
            raise BadInput(f"diversity_prob must be in [0, 1], got {self.diversity_prob}")
        if not 0 < self.resize_rate <= 1:
            raise BadInput(f"resize_rate must be in (0, 1] (the copy is shrunk and padded back "
                           f"to the input size), got {self.resize_rate}")
        loss_by_name(self.loss)


@dataclass(frozen=True)
class DiversityParams(MomentumParams):
    """DI-FGSM's defaults: no momentum, a diverse copy half of the time (Xie et al.)."""

    decay: float = 0.0
    diversity_prob: float = 0.5


def diverse_copy(x: torch.Tensor, rate: float, pad_value: float, generator: torch.Generator
                 ) -> torch.Tensor:
    """``x`` (``[N, C, H, W]``) shrunk to a random side in ``[rate·H, H)`` (bilinear; the width
    in proportion) and padded back to ``H × W`` at a random offset with ``pad_value``; one
    draw for the batch (Xie et al. 2019). Differentiable in ``x``."""
    h, w = x.shape[-2:]
    low = max(1, int(h * rate))
    if low >= h:
        return x
    draw = torch.randint(low, h, (1,), generator=generator, device=generator.device)
    new_h = int(draw)
    new_w = max(1, min(w, round(w * new_h / h)))
    offsets = torch.rand(2, generator=generator, device=generator.device)
    top = int(float(offsets[0]) * (h - new_h + 1))
    left = int(float(offsets[1]) * (w - new_w + 1))
    small = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)
    return F.pad(small, (left, w - new_w - left, top, h - new_h - top), value=pad_value)


def _gradient(calls: ModelCalls, x: torch.Tensor, labels: torch.Tensor, params: MomentumParams,
              generator: torch.Generator) -> torch.Tensor:
    """The loss gradient at ``x``, or (with probability ``diversity_prob``) at a diverse copy
    of it, carried back to ``x`` through the copy."""
    loss_fn = loss_by_name(params.loss)
    coin = torch.rand(1, generator=generator, device=generator.device)
    if x.ndim != 4 or not float(coin) < params.diversity_prob:
        return calls.loss_and_grad(x, labels, loss_fn)[2]
    xr = x.detach().requires_grad_(True)
    with torch.enable_grad():
        copy = diverse_copy(xr, params.resize_rate, calls.target.bounds[0], generator)
        grad_copy = calls.loss_and_grad(copy.detach(), labels, loss_fn)[2]
        (grad,) = torch.autograd.grad(copy, xr, grad_copy)
    return grad


def momentum_attack(target: Target, x: torch.Tensor, y: torch.Tensor, *, eps: float,
                    norm: Norm, generator: torch.Generator, params: MomentumParams,
                    batch_size: int | None = None) -> AttackResult:
    """MI-FGSM / DI-FGSM on ``target``, ``batch_size`` samples at a time (default: all)."""
    calls = ModelCalls(target)
    step = params.step_size if params.step_size is not None else eps / params.steps
    lo, hi = target.bounds
    out = x.clone()
    for rows in torch.arange(x.shape[0], device=x.device).split(max(1, batch_size or len(x))):
        x0, labels = x[rows], y[rows]
        x_adv, momentum = x0.clone(), torch.zeros_like(x0)
        for _ in range(params.steps):
            grad = _gradient(calls, x_adv, labels, params, generator)
            scale = grad.abs().flatten(1).mean(1).clamp_min(1e-12)
            momentum = params.decay * momentum + grad / scale.view(-1, *([1] * (x.ndim - 1)))
            x_adv = x_adv + step * steepest_direction(momentum, norm)
            x_adv = (x0 + project(x_adv - x0, norm, eps)).clamp(lo, hi)
        out[rows] = x_adv
    unknown = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    success = deferred_success(target, out, y, targeted=False, known=~unknown, unknown=unknown)
    return AttackResult.build(x, out, success, calls)


def _cost(params: MomentumParams, n: int, num_classes: int, n_fit: int) -> tuple[int, int]:
    return n * params.steps, n * params.steps


@register_attack("mifgsm", params=MomentumParams, norms=(Norm.LINF, Norm.L2), cost=_cost,
                 streams=True)
def mifgsm(target: Target, x: torch.Tensor, y: torch.Tensor, *, eps: float | None, norm: Norm,
           generator: torch.Generator, params: MomentumParams,
           y_target: torch.Tensor | None = None, batch_size: int | None = None) -> AttackResult:
    """Momentum iterative FGSM, for transfer (Dong et al. 2018)."""
    assert eps is not None
    return momentum_attack(target, x, y, eps=eps, norm=norm, generator=generator, params=params,
                           batch_size=batch_size)


@register_attack("difgsm", params=DiversityParams, norms=(Norm.LINF, Norm.L2), cost=_cost,
                 streams=True)
def difgsm(target: Target, x: torch.Tensor, y: torch.Tensor, *, eps: float | None, norm: Norm,
           generator: torch.Generator, params: DiversityParams,
           y_target: torch.Tensor | None = None, batch_size: int | None = None) -> AttackResult:
    """Diverse-input iterative FGSM, for transfer (Xie et al. 2019)."""
    assert eps is not None
    return momentum_attack(target, x, y, eps=eps, norm=norm, generator=generator, params=params,
                           batch_size=batch_size)
