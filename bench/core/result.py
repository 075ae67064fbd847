"""What every attack returns: adversarials, success, norms and
model calls; chunks of one run joined, and a minimal attack's result seen at a budget."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from bench.core.calls import ModelCalls
from bench.core.errors import AttackContractError
from bench.core.norms import l0_norm, l2_norm, linf_norm, within_eps
from bench.core.target import (
    Target,
)
from bench.core.threat import ThreatModel

SuccessCheck = Callable[[], torch.Tensor]
"""Computes ``success`` when it is first read (a fresh fp32 forward of the final iterates)."""


class AttackResult:
    """What every attack returns. Norms are of ``x_adv - x``, per sample, in pixel space.

    ``n_forward`` / ``n_backward`` count per-image model evaluations (a batch of 128 counts 128).
    ``success`` may be given as a :data:`SuccessCheck` instead of a tensor: an attack whose last
    iterate needs no decision (FGSM, one-restart PGD) leaves the check to whoever reads it, so a
    sweep, whose runner verifies every adversarial with its own fresh fp32 forward anyway, never
    pays for it twice. That forward is not counted in ``n_forward``.

    ``effective_params`` names params the attack had to run differently than asked, with the
    value it used (APGD's DLR loss on a two-class target runs as the margin loss): the row's
    ``attack_params`` records them. ``n_grad_unavailable`` counts the per-image gradient
    evaluations (of ``n_backward``) that came back zero or not finite (the ``zero-grad``
    indicator, :mod:`bench.core.indicators`). ``notes``: what the run decided that the row
    should say in words (its ``decision`` column). ``earlier_s``: the seconds a run resumed
    from a checkpoint (:mod:`bench.core.resume`) spent before it resumed.
    """

    def __init__(self, x_adv: torch.Tensor, success: torch.Tensor | SuccessCheck,
                 l2: torch.Tensor, linf: torch.Tensor, l0: torch.Tensor, n_forward: int,
                 n_backward: int, y_target: torch.Tensor | None = None,
                 artifacts: dict[str, torch.Tensor] | None = None,
                 effective_params: dict[str, Any] | None = None,
                 n_grad_unavailable: int = 0) -> None:
        self.x_adv = x_adv
        self._success = success
        self.l2, self.linf, self.l0 = l2, linf, l0
        self.n_forward, self.n_backward = n_forward, n_backward
        self.y_target = y_target
        self.artifacts: dict[str, torch.Tensor] = artifacts or {}
        self.effective_params: dict[str, Any] = effective_params or {}
        self.n_grad_unavailable = n_grad_unavailable
        self.notes: list[str] = []
        self.earlier_s = 0.0  # seconds of a resumed run's pieces before it resumed

    @property
    def success(self) -> torch.Tensor:
        """``[N]`` bool: the adversarial fools the model (reaches ``y_target`` when targeted)."""
        if callable(self._success):
            self._success = self._success().bool()
        return self._success

    @classmethod
    def build(
        cls,
        x: torch.Tensor,
        x_adv: torch.Tensor,
        success: torch.Tensor | SuccessCheck,
        calls: ModelCalls,
        y_target: torch.Tensor | None = None,
        artifacts: dict[str, torch.Tensor] | None = None,
        effective_params: dict[str, Any] | None = None,
    ) -> AttackResult:
        delta = x_adv - x
        return cls(
            x_adv=x_adv,
            success=success if callable(success) else success.bool(),
            l2=l2_norm(delta),
            linf=linf_norm(delta),
            l0=l0_norm(delta),
            n_forward=calls.n_forward,
            n_backward=calls.n_backward,
            y_target=y_target,
            artifacts=artifacts,
            effective_params=effective_params,
            n_grad_unavailable=calls.n_grad_unavailable,
        )


def deferred_success(target: Target, x_adv: torch.Tensor, labels: torch.Tensor, *,
                     targeted: bool, known: torch.Tensor, unknown: torch.Tensor) -> SuccessCheck:
    """A :data:`SuccessCheck`: ``known`` where ``unknown`` is False, else a fresh fp32 eval-mode
    prediction of ``x_adv`` against ``labels`` (the target class when ``targeted``)."""
    def check() -> torch.Tensor:
        success = known.clone()
        rows = torch.nonzero(unknown).flatten()
        if rows.numel():
            pred = target.predict_logits(x_adv[rows]).argmax(1)
            success[rows] = pred == labels[rows] if targeted else pred != labels[rows]
        return success
    return check

def budget_mask(x: torch.Tensor, x_adv: torch.Tensor, threat: ThreatModel,
                bounds: tuple[float, float]) -> torch.Tensor:
    """``[N]`` bool: which of a minimal-perturbation attack's adversarials lie inside
    ``threat``'s eps ball (all of them when eps is None)."""
    if threat.eps is None:
        return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    return within_eps(x_adv - x, threat.norm, threat.eps, bounds[1] - bounds[0])


def within_budget(x: torch.Tensor, x_adv: torch.Tensor, threat: ThreatModel,
                  bounds: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """A minimal-perturbation attack's adversarials seen at budget eps, and which lie inside
    the ball (:func:`budget_mask`): one outside keeps its clean input."""
    inside = budget_mask(x, x_adv, threat, bounds)
    return torch.where(inside.view(-1, *([1] * (x.ndim - 1))), x_adv, x), inside


def at_budget(result: AttackResult, x: torch.Tensor, threat: ThreatModel,
              bounds: tuple[float, float]) -> AttackResult:
    """A minimal-perturbation result seen at budget eps: an adversarial outside the eps ball
    does not count (the sample keeps its clean input and is not fooled by the attack)."""
    x_adv, inside = within_budget(x, result.x_adv, threat, bounds)
    delta = x_adv - x
    seen = AttackResult(x_adv, result.success & inside, l2_norm(delta), linf_norm(delta),
                        l0_norm(delta), result.n_forward, result.n_backward,
                        y_target=result.y_target, artifacts=result.artifacts,
                        effective_params=result.effective_params,
                        n_grad_unavailable=result.n_grad_unavailable)
    seen.notes = result.notes
    return seen


def _join_artifacts(results: list[AttackResult]) -> dict[str, torch.Tensor]:
    """The chunks' artifacts as one run's: a per-sample artifact (one entry per image of its
    chunk) joined in sample order. Any other artifact describes a whole run, which a chunked
    attack cannot have: raise :class:`AttackContractError` rather than keep one chunk's."""
    joined: dict[str, torch.Tensor] = {}
    for key in dict.fromkeys(k for r in results for k in r.artifacts):
        parts = [r.artifacts.get(key) for r in results]
        if any(p is None or p.ndim == 0 or p.shape[0] != r.x_adv.shape[0]
               for p, r in zip(parts, results, strict=True)):
            raise AttackContractError(
                f"artifact {key!r} is not per-sample in every chunk, so chunks of one run "
                f"cannot be joined; return it with one entry per image")
        joined[key] = torch.cat([p for p in parts if p is not None])
    return joined


def concat_results(results: list[AttackResult]) -> AttackResult:
    """One result for consecutive chunks of a batch (model calls add up, per-sample artifacts
    are joined in order)."""
    if len(results) == 1:
        return results[0]
    checks = [r._success for r in results]

    def success() -> torch.Tensor:
        return torch.cat([r.success for r in results])

    targets = [r.y_target for r in results if r.y_target is not None]
    joined = AttackResult(
        x_adv=torch.cat([r.x_adv for r in results]),
        success=success if any(callable(c) for c in checks) else success(),
        l2=torch.cat([r.l2 for r in results]), linf=torch.cat([r.linf for r in results]),
        l0=torch.cat([r.l0 for r in results]),
        n_forward=sum(r.n_forward for r in results),
        n_backward=sum(r.n_backward for r in results),
        y_target=torch.cat(targets) if len(targets) == len(results) else None,
        artifacts=_join_artifacts(results),
        effective_params={k: v for r in results for k, v in r.effective_params.items()},
        n_grad_unavailable=sum(r.n_grad_unavailable for r in results),
    )
    joined.notes = list(dict.fromkeys(note for r in results for note in r.notes))
    joined.earlier_s = sum(r.earlier_s for r in results)
    return joined
