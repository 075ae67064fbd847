"""Models built to mask gradients or to be randomised, wrapping a classifier: for the tests of
the failure indicators and of ``rapid``'s decision (each mechanism raises a different one)."""

from __future__ import annotations

import math

import torch
from torch import nn


class Quantised(nn.Module):
    """Input quantisation to 3 levels ({0, 0.5, 1}): its input gradient is zero everywhere."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.round(x * 2) / 2)


class Shattered(nn.Module):
    """A preprocessing whose gradient is noise, ``x + 0.03·sin(2π·60·x)`` (Athalye et al.'s
    shattered gradients, ICML 2018): gradients exist, are finite and non-zero, and their signs
    say little about where the loss rises."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x + 0.03 * torch.sin(2 * math.pi * 60 * x))


class Noisy(nn.Module):
    """Gaussian noise (σ = 0.3) on the input at every call: a randomised model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x + 0.3 * torch.randn_like(x))


class _Reverse(torch.autograd.Function):
    """The identity forward; its backward pass hands back the negated gradient."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        return -grad


class Reversed(nn.Module):
    """A classifier whose input gradient points the wrong way (a layer that is the identity
    forward and negates the gradient backward): gradients are finite, non-zero and exactly
    misleading. Held out: no test and no threshold of ``rapid`` was set on it; only the
    benchmark against the original AutoAttack uses it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(_Reverse.apply(x))
