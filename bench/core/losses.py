"""The losses attacks climb: cross-entropy and the margin loss, by name; and the order in which
targeted attacks take their target classes."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from bench.core.errors import BadInput

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy, ``[N]``."""
    return F.cross_entropy(logits.float(), labels, reduction="none")


def margin_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample ``max_{j != y} z_j - z_y`` (Carlini & Wagner 2017); > 0 means misclassified."""
    logits = logits.float()
    true = logits.gather(1, labels[:, None])[:, 0]
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return others.amax(dim=1) - true


def cross_entropy_direction_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample ``Σ_{j≠y} q_j z_j − z_y`` with q the softmax of the other classes' logits,
    held constant: its input gradient is the cross-entropy's divided by 1 − p_y, the same
    direction without the underflow of a saturated softmax (where p_y rounds to 1 in fp32
    the cross-entropy's gradient is zero or denormal). For attacks that only use the
    gradient's direction (DDN)."""
    logits = logits.float()
    true = logits.gather(1, labels[:, None])[:, 0]
    others = logits.scatter(1, labels[:, None], float("-inf"))
    weights = others.detach().softmax(dim=1)
    return (weights * others.masked_fill(weights == 0, 0.0)).sum(dim=1) - true


def other_classes_by_score(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Every class but ``y``, most likely first, ``[N, C-1]``: the order in which targeted
    attacks (APGD-T, FAB-T; Croce & Hein 2020) take their target classes."""
    ranked = logits.float().sort(dim=1, descending=True).indices
    return ranked[ranked != labels[:, None]].view(logits.shape[0], -1)


LOSSES: dict[str, LossFn] = {"ce": cross_entropy_loss, "margin": margin_loss}


def loss_by_name(name: str) -> LossFn:
    try:
        return LOSSES[name]
    except KeyError:
        raise BadInput(f"unknown loss {name!r}; use one of {', '.join(LOSSES)}") from None
