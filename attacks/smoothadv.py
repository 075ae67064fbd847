"""SmoothAdv (Salman, Yang, Li, Zhang, Zhang, Razenshteyn & Bubeck, "Provably Robust Deep
Learning via Adversarially Trained Smoothed Classifiers", NeurIPS 2019): L2 PGD on the smoothed
soft classifier ``log E_δ softmax(f(x + δ))``, the expectation estimated from ``noise_draws``
(their ``m``) Gaussian draws per step. The attack of record on a randomized-smoothing defense:
a sample it fools yet CERTIFY certified at a radius ≥ eps can only come from Monte-Carlo error.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attacks.gradient import gradient_attack
from bench.core.attack_registry import register_attack
from bench.core.errors import BadInput
from bench.core.norms import Norm
from bench.core.result import AttackResult
from bench.core.smoothing import SmoothedTarget
from bench.core.target import Target


@dataclass(frozen=True)
class SmoothAdvParams:
    """``steps``: PGD steps (Salman et al.: 1–10). ``noise_draws``: Gaussian draws averaged in
    each step's soft classifier (their ``m``: 1–8). ``step_size``: the L2 step; ``None``:
    ``2·eps/steps``. ``restarts``: independent runs (a sample keeps the first that fools)."""

    steps: int = 10
    noise_draws: int = 8
    step_size: float | None = None
    restarts: int = 1

    @property
    def expectation_draws(self) -> int:
        """The noise draws each gradient averages (the ``no-eot`` indicator reads it)."""
        return self.noise_draws

    def __post_init__(self) -> None:
        for name in ("steps", "noise_draws", "restarts"):
            if getattr(self, name) < 1:
                raise BadInput(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.step_size is not None and not self.step_size > 0:
            raise BadInput(f"step_size must be > 0, got {self.step_size}")


def _smoothadv_cost(params: SmoothAdvParams, n: int, num_classes: int, n_fit: int
                    ) -> tuple[int, int]:
    per_step = n * params.noise_draws
    return per_step * params.steps * params.restarts + n, per_step * params.steps * params.restarts


@register_attack("smoothadv", params=SmoothAdvParams, norms=(Norm.L2,), cost=_smoothadv_cost,
                 only_on=("randomized_smoothing",))
def smoothadv(
    target: Target, x: torch.Tensor, y: torch.Tensor, *, eps: float | None, norm: Norm,
    generator: torch.Generator, params: SmoothAdvParams, y_target: torch.Tensor | None = None,
) -> AttackResult:
    """SmoothAdv-PGD on a smoothed classifier's soft version (Salman et al., NeurIPS 2019)."""
    assert eps is not None
    if not isinstance(target, SmoothedTarget):
        raise BadInput(f"smoothadv attacks a smoothed classifier (defense "
                       f"randomized_smoothing); target {target.name!r} is not one")
    step = params.step_size if params.step_size is not None else 2 * eps / params.steps
    with target.sampling(params.noise_draws):
        result = gradient_attack(
            target, x, y, eps=eps, norm=norm, generator=generator, steps=params.steps,
            step_size=step, random_init=False, restarts=params.restarts, targeted=False,
            loss="ce", y_target=None, early_stop=False)
        result.success  # decided with the same m draws
    calls = params.noise_draws  # each model call above evaluated m noisy copies
    result.n_forward *= calls
    result.n_backward *= calls
    return result
