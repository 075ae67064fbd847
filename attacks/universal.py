"""Universal adversarial perturbations: one perturbation v, fitted on training images, that fools
the classifier on most unseen images.

- ``method = "deepfool"``: Moosavi-Dezfooli, Fawzi, Fawzi, Frossard, "Universal adversarial
  perturbations", CVPR 2017 (Algorithm 1). For the images that x + v does not fool, a DeepFool
  step Δv_i on x_i + v, then v ← P_{p,ξ}(v + Δv_i); stop at the target fooling rate or after
  ``max_passes``. As in the paper, the inner DeepFool is the L2 one whatever the ball. Here a
  minibatch's DeepFool steps are computed in one batched call, then folded into v one image at a
  time with the projection; small minibatches (32) keep v's updates close to the paper's
  image-by-image ones.
- ``method = "sgd"``: Shafahi, Najibi, Xu, Dickerson, Davis, Goldstein, "Universal Adversarial
  Training", AAAI 2020: sign-gradient ascent of the clipped cross-entropy min(CE, β) of the
  minibatch with respect to v, projected (clipping keeps already-fooled images from dominating).

``eps`` is ξ, the radius of the ball the one shared perturbation lives in. The fitted v is
returned as the artifact ``perturbation``; evaluation applies it to every image: clip(x + v).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attacks.deepfool import deepfool_core, resolve_candidates
from bench.core.attack_registry import register_attack
from bench.core.calls import ModelCalls
from bench.core.errors import BadInput
from bench.core.losses import cross_entropy_loss
from bench.core.norms import Norm, project, steepest_direction
from bench.core.result import AttackResult
from bench.core.target import Target, check_differentiable


@dataclass(frozen=True)
class UAPParams:
    """``method``: "deepfool" (the paper's) or "sgd". ``target_fooling_rate``: 1 - δ, the
    fooling rate on the fitting data at which fitting stops. ``max_passes``: passes over the data
    (epochs for sgd). ``batch_size``: minibatch of fitting images (None: 32 for deepfool, 100 for
    sgd). ``max_fit``: use at most this many fitting images (0 = all). DeepFool:
    ``deepfool_steps``, ``overshoot``, ``candidates``. SGD: ``step_size`` (None = ξ/20) and
    ``loss_clip`` β."""

    method: str = "deepfool"
    target_fooling_rate: float = 0.8
    max_passes: int = 10
    batch_size: int | None = None
    max_fit: int = 0
    deepfool_steps: int = 50
    overshoot: float = 0.02
    candidates: int | None = None
    step_size: float | None = None
    loss_clip: float = 1.0

    @property
    def minibatch(self) -> int:
        if self.batch_size is not None:
            return self.batch_size
        return 32 if self.method == "deepfool" else 100

    def __post_init__(self) -> None:
        if self.method not in ("deepfool", "sgd"):
            raise BadInput(f"UAP method must be 'deepfool' or 'sgd', got {self.method!r}")
        if not 0 < self.target_fooling_rate <= 1:
            raise BadInput(f"target_fooling_rate must be in (0, 1], got {self.target_fooling_rate}")
        for name in ("max_passes", "minibatch", "deepfool_steps"):
            if getattr(self, name) < 1:
                raise BadInput(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_fit < 0:
            raise BadInput(f"max_fit must be >= 0 (0 = all), got {self.max_fit}")
        if self.step_size is not None and not self.step_size > 0:
            raise BadInput(f"step_size must be > 0, got {self.step_size}")
        if not self.loss_clip > 0:
            raise BadInput(f"loss_clip must be > 0, got {self.loss_clip}")


@torch.no_grad()
def _predict(calls: ModelCalls, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([calls.logits(chunk).argmax(1) for chunk in x.split(batch_size)])


def fooling_rate(calls: ModelCalls, x: torch.Tensor, v: torch.Tensor, clean_pred: torch.Tensor,
                 bounds: tuple[float, float], batch_size: int) -> float:
    """Fraction of images whose prediction changes when v is added."""
    lo, hi = bounds
    pred = torch.cat([calls.logits((chunk + v).clamp(lo, hi)).argmax(1)
                      for chunk in x.split(batch_size)])
    return float((pred != clean_pred).float().mean())


def fit_uap_deepfool(calls: ModelCalls, x: torch.Tensor, clean_pred: torch.Tensor, *,
                     eps: float, norm: Norm, params: UAPParams, generator: torch.Generator,
                     bounds: tuple[float, float], candidates: int) -> tuple[torch.Tensor, float]:
    """Algorithm 1 of Moosavi-Dezfooli et al. 2017, minibatched; returns (v, fit fooling rate)."""
    lo, hi = bounds
    v = torch.zeros_like(x[:1])
    rate = 0.0
    for _ in range(params.max_passes):
        order = torch.randperm(x.shape[0], generator=generator, device=generator.device)
        for batch in order.to(x.device).split(params.minibatch):
            xb, pb = x[batch], clean_pred[batch]
            shifted = (xb + v).clamp(lo, hi)
            still = calls.logits(shifted).argmax(1) == pb
            if not bool(still.any()):
                continue
            base = shifted[still]
            adv, ok = deepfool_core(calls, base, pb[still], norm=Norm.L2,
                                    steps=params.deepfool_steps, overshoot=params.overshoot,
                                    candidates=candidates, bounds=bounds)
            for dv in (adv - base)[ok]:
                v = project(v + dv[None], norm, eps)
        rate = fooling_rate(calls, x, v, clean_pred, bounds, 1024)
        if rate >= params.target_fooling_rate:
            break
    return v, rate


def fit_uap_sgd(calls: ModelCalls, x: torch.Tensor, labels: torch.Tensor, clean_pred: torch.Tensor,
                *, eps: float, norm: Norm, params: UAPParams, generator: torch.Generator,
                bounds: tuple[float, float]) -> tuple[torch.Tensor, float]:
    """Sign-gradient ascent of the mean loss over minibatches (Shafahi et al. 2020)."""
    lo, hi = bounds
    step = params.step_size if params.step_size is not None else eps / 20
    v = torch.zeros_like(x[:1])
    rate = 0.0
    for _ in range(params.max_passes):
        order = torch.randperm(x.shape[0], generator=generator, device=generator.device)
        for batch in order.to(x.device).split(params.minibatch):
            v_ = v.detach().requires_grad_(True)
            with torch.enable_grad():
                logits = calls.target((x[batch] + v_).clamp(lo, hi))
                check_differentiable(logits, calls.target.name)
                loss = cross_entropy_loss(logits, labels[batch]).clamp(max=params.loss_clip).mean()
                (grad,) = torch.autograd.grad(loss, v_)
            calls.n_forward += len(batch)
            calls.n_backward += len(batch)
            v = project(v + step * steepest_direction(grad, norm), norm, eps).detach()
        rate = fooling_rate(calls, x, v, clean_pred, bounds, 1024)
        if rate >= params.target_fooling_rate:
            break
    return v, rate


def _uap_cost(params: UAPParams, n: int, num_classes: int, n_fit: int) -> tuple[int, int]:
    fit = min(params.max_fit or n_fit, n_fit) * params.max_passes
    if params.method == "sgd":
        return fit + n, fit
    k = min(num_classes, params.candidates or 10)
    return fit * (params.deepfool_steps + 1) + n, fit * params.deepfool_steps * (k - 1)


@register_attack("uap", params=UAPParams, norms=(Norm.LINF, Norm.L2), needs_fit_data=True,
                 positive_budget=True, cost=_uap_cost)
def uap(
    target: Target, x: torch.Tensor, y: torch.Tensor, *, eps: float | None, norm: Norm,
    generator: torch.Generator, params: UAPParams, y_target: torch.Tensor | None = None,
    fit_data: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> AttackResult:
    """Universal adversarial perturbation, DeepFool-based or SGD (Moosavi-Dezfooli et al. 2017).

    Fitted on ``fit_data``, applied to ``x``; the artifacts hold the perturbation, its fooling
    rate on the fit data and on ``x`` (held out: the share of ``x`` whose prediction it changes).
    """
    assert eps is not None
    if fit_data is None:
        raise BadInput("attack 'uap' fits on training data: pass fit_data=(x, y)")
    fit_x, fit_y = fit_data[0].to(x.device), fit_data[1].to(x.device)
    if params.max_fit:
        fit_x, fit_y = fit_x[:params.max_fit], fit_y[:params.max_fit]
    calls = ModelCalls(target)
    clean_fit = _predict(calls, fit_x, 1024)
    if params.method == "deepfool":
        v, rate = fit_uap_deepfool(calls, fit_x, clean_fit, eps=eps, norm=norm, params=params,
                                   generator=generator, bounds=target.bounds,
                                   candidates=resolve_candidates(params.candidates, target))
    else:
        v, rate = fit_uap_sgd(calls, fit_x, fit_y, clean_fit, eps=eps, norm=norm, params=params,
                              generator=generator, bounds=target.bounds)
    lo, hi = target.bounds
    x_adv = (x + v).clamp(lo, hi)
    pred = _predict(calls, x_adv, 1024)
    held_out = float((pred != _predict(calls, x, 1024)).float().mean()) if x.shape[0] else 0.0
    return AttackResult.build(x, x_adv, pred != y, calls, artifacts={
        "perturbation": v[0].detach(), "fit_fooling_rate": torch.tensor(rate),
        "fooling_rate": torch.tensor(held_out)})


__all__ = ["UAPParams", "fit_uap_deepfool", "fit_uap_sgd", "fooling_rate", "uap"]
