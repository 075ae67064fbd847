"""Model calls as attacks make them: counted per image (forward, backward, gradients that came
back unavailable), with EOT over a randomised target's draws, and the adaptive settings (EOT,
BPDA) an attack's params carry (Athalye, Carlini & Wagner, ICML 2018)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from bench.core.errors import BadInput
from bench.core.indicators import unavailable_gradients
from bench.core.losses import LossFn
from bench.core.target import (
    Target,
    check_differentiable,
    check_finite_logits,
    warn_if_probabilities,
)


class ModelCalls:
    """Calls the target and counts per-image forward and backward evaluations."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.n_forward = 0
        self.n_backward = 0
        self.n_grad_unavailable = 0
        self.checked = False

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a forward-only call; a model that returns NaN or infinite logits raises
        :class:`ModelOutputError` here rather than making every attack "fail" silently."""
        self.n_forward += x.shape[0]
        out = self.target(x)
        check_finite_logits(out, getattr(self.target, "name", "model"))
        warn_if_probabilities(self.target, out)
        return out

    @property
    def eot_iter(self) -> int:
        """Draws each gradient averages: the target's ``eot_iter`` when it is randomised, else 1
        (the draws of a deterministic target are identical)."""
        return self.target.eot_iter if getattr(self.target, "randomised", False) else 1

    def loss_and_grad(
        self, x: torch.Tensor, labels: torch.Tensor, loss_fn: LossFn
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample loss, logits (both detached) and the gradient of the summed loss wrt ``x``.
        A row whose gradient is zero or not finite is counted (``n_grad_unavailable``); values
        that are not finite come back as 0, so an attack steps nowhere rather than into NaN.

        On a randomised target with ``eot_iter`` = k > 1 (Expectation over Transformation,
        Athalye et al. 2018) the loss, logits and gradient are the means over k draws, computed
        in one forward of k × the batch."""
        x = x.detach().requires_grad_(True)
        n, draws = x.shape[0], self.eot_iter
        with torch.enable_grad():
            inputs = x if draws == 1 else x.expand(draws, *x.shape).reshape(-1, *x.shape[1:])
            logits = self.target(inputs)
            if not self.checked:  # the first gradient call checks what the model returns
                check_differentiable(logits, getattr(self.target, "name", "model"))
                check_finite_logits(logits, getattr(self.target, "name", "model"))
                warn_if_probabilities(self.target, logits)
                self.checked = True
            loss = loss_fn(logits, labels if draws == 1 else
                           labels.repeat(draws, *([1] * (labels.ndim - 1))))
            if draws > 1:
                loss = loss.view(draws, n).mean(0)
                logits = logits.view(draws, n, -1).mean(0)
            (grad,) = torch.autograd.grad(loss.sum(), x)
        self.n_forward += n * draws
        self.n_backward += n * draws
        self.count_gradients(grad)
        return loss.detach(), logits.detach(), torch.nan_to_num(grad.detach(), 0.0, 0.0, 0.0)

    def difference_gradients(self, x: torch.Tensor, classes: torch.Tensor
                             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits at ``x`` and the gradients of ``z_k - z_0`` for the candidate classes
        ``classes[:, k]``, k ≥ 1 (one forward and K − 1 batched backward passes per image).

        Returns (logits ``[N, C]``, gradients ``[K-1, N, ...]``)."""
        k = classes.shape[1]
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = self.target(x)
            check_differentiable(logits, getattr(self.target, "name", "model"))
            picked = logits.gather(1, classes)  # [N, K]
            seeds = torch.zeros(k - 1, *picked.shape, device=x.device, dtype=picked.dtype)
            rows = torch.arange(k - 1, device=x.device)
            seeds[rows, :, rows + 1] = 1.0
            seeds[:, :, 0] = -1.0
            (grads,) = torch.autograd.grad(picked, x, grad_outputs=seeds, is_grads_batched=True)
        self.n_forward += x.shape[0]
        self.n_backward += x.shape[0] * (k - 1)
        self.count_gradients(grads.flatten(0, 1))
        return logits.detach(), torch.nan_to_num(grads.detach(), 0.0, 0.0, 0.0)

    def count_gradients(self, grad: torch.Tensor) -> None:
        """Count the rows of ``grad`` that are zero or not finite (one gradient evaluation
        each)."""
        self.n_grad_unavailable += int(unavailable_gradients(grad).sum())


@dataclass(frozen=True)
class AdaptiveParams:
    """What a gradient attack does on a randomised or non-differentiable defense (Athalye,
    Carlini & Wagner, "Obfuscated Gradients Give a False Sense of Security", ICML 2018).

    ``eot_iter``: each gradient averages that many draws of a randomised target's forward
    (Expectation over Transformation); on a deterministic target the draws are identical, so
    it runs once and the row's ``decision`` column says so. ``bpda``: a defense's non-differentiable
    step is differentiated as its declared stand-in (BPDA); ``false`` differentiates the step
    itself, whose gradient is then zero (for the comparison; the ``zero-grad`` indicator fires).
    """

    eot_iter: int = 1
    bpda: bool = True

    @property
    def expectation_draws(self) -> int:
        """The draws of the target's randomness each gradient averages."""
        return self.eot_iter


def ran_once_note(eot_iter: int) -> str:
    """What a row says when its ``eot_iter`` > 1 met a deterministic target."""
    return f"eot_iter {eot_iter} ran as 1: the target is deterministic, its draws identical"


def adaptive_settings(params: Any) -> tuple[int, bool]:
    """``(eot_iter, bpda)`` of an attack's params (1, True for an attack without them);
    :class:`BadInput` for an ``eot_iter`` below 1."""
    eot_iter = int(getattr(params, "eot_iter", 1))
    if eot_iter < 1:
        raise BadInput(f"eot_iter must be >= 1, got {eot_iter}")
    return eot_iter, bool(getattr(params, "bpda", True))
