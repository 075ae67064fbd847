"""A per-sample budget of model calls, and the smallest adversarial each sample was shown:
AttackBench's protocol (Cinà et al., "AttackBench: Evaluating Gradient-based Attacks for
Adversarial Examples", AAAI 2025), so that attacks from any library are compared at the same
cost and by what they found rather than what they returned.

:class:`CallBudget` wraps a model for one batch of samples. Every image a caller passes is
matched to the sample it perturbs (the nearest clean input in L2); a forward pass and a backward
pass each spend one call of that sample's budget; images are clamped to the box of valid
inputs first, as AttackBench does. Once a sample has spent its budget the model
answers it with a constant output that classifies it correctly and carries no gradient, so no
implementation can spend more. Every answered image that is misclassified is a candidate: the
wrapper keeps, per sample, the smallest distance (in the board's norm) of any such image, which
is the attack's distance whatever the attack returns.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from bench.core.norms import Norm, norm_of


class CallBudget(nn.Module):
    """``model`` answering each of the samples ``x`` (labels ``y``) at most ``budget``
    forward + backward passes, tracking the smallest adversarial ``norm`` distance per sample
    (``best``; 0 where the clean input is misclassified, inf where none was found)."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: Norm,
                 budget: int, num_classes: int, bounds: tuple[float, float] = (0.0, 1.0)
                 ) -> None:
        super().__init__()
        self.model, self.bounds = model, bounds
        self.norm, self.budget, self.num_classes = norm, int(budget), int(num_classes)
        self.x, self.y = x.detach(), y
        self.flat = x.detach().flatten(1).float()
        self.square = (self.flat ** 2).sum(1)
        n = x.shape[0]
        self.used = torch.zeros(n, dtype=torch.long, device=x.device)
        self.best = torch.full((n,), float("inf"), device=x.device)
        self.tracking = False
        with torch.no_grad():
            clean = model(x).argmax(1) != y
        self.best[clean] = 0.0
        self.tracking = True
        self.overhead_s = 0.0  # seconds spent in its own bookkeeping, not in the model

    def match(self, inputs: torch.Tensor) -> torch.Tensor:
        """``[M]``: the sample each image perturbs (its nearest clean input in L2)."""
        flat = inputs.detach().flatten(1).float()
        gaps = self.square[None, :] - 2 * flat @ self.flat.T
        return gaps.argmin(dim=1)

    def allowed(self, idx: torch.Tensor) -> torch.Tensor:
        """``[M]``: which images still fit their sample's budget (several images of one sample
        in one call spend it in order)."""
        order = torch.zeros_like(idx)
        if idx.numel():
            sorted_idx, perm = idx.sort(stable=True)
            first = torch.ones_like(sorted_idx, dtype=torch.bool)
            first[1:] = sorted_idx[1:] != sorted_idx[:-1]
            starts = torch.nonzero(first).flatten()
            run_start = starts[torch.cumsum(first.long(), 0) - 1]
            order[perm] = torch.arange(idx.numel(), device=idx.device) - run_start
        return self.used[idx] + order < self.budget

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """The model's logits for ``inputs`` clamped to the bounds (as AttackBench enforces
        the box); constant, correct logits for images past their sample's budget."""
        inputs = inputs.clamp(*self.bounds)
        out = self.model(inputs)
        if not self.tracking:
            return out
        started = time.perf_counter()
        idx = self.match(inputs)
        ok = self.allowed(idx)
        self.used.index_add_(0, idx[ok], torch.ones_like(idx[ok]))
        answer = torch.nn.functional.one_hot(self.y[idx], self.num_classes).to(out.dtype) * 1e3
        out = torch.where(ok[:, None], out, answer)
        self._track(inputs.detach(), out.detach(), idx, ok)
        if out.requires_grad:
            out.register_hook(lambda grad: self._spend_backward(idx, ok, grad))
        self.overhead_s += time.perf_counter() - started
        return out

    def _spend_backward(self, idx: torch.Tensor, ok: torch.Tensor, grad: torch.Tensor
                        ) -> torch.Tensor:
        """A backward pass spends a call of each answered sample that has one left; the others'
        gradient rows are zeroed (their forward was the last call of their budget)."""
        started = time.perf_counter()
        ok = ok & self.allowed(idx)
        self.used.index_add_(0, idx[ok], torch.ones_like(idx[ok]))
        self.overhead_s += time.perf_counter() - started
        return grad * ok.view(-1, *([1] * (grad.ndim - 1))).to(grad.dtype)

    def _track(self, inputs: torch.Tensor, out: torch.Tensor, idx: torch.Tensor,
               ok: torch.Tensor) -> None:
        """Keep, per sample, the smallest distance of an answered misclassified image."""
        fooled = ok & (out.argmax(1) != self.y[idx])
        if not bool(fooled.any()):
            return
        rows = torch.nonzero(fooled).flatten()
        dist = norm_of(inputs[rows] - self.x[idx[rows]], self.norm).to(self.best.dtype)
        self.best.scatter_reduce_(0, idx[rows], dist, reduce="amin")


__all__ = ["CallBudget"]
