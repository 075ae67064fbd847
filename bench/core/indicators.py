"""Indicators of attack failure: the ways an evaluation goes wrong that can be seen in its own
run (Pintor et al., "Indicators of Attack Failure: Debugging and Improving Optimization of
Adversarial Examples", NeurIPS 2022; AutoAttack's ``checks.py``, Croce & Hein 2020).

Each indicator has a stable short code, the threshold at which it is raised, a one-line
explanation and a remedy. Rows store the codes of the indicators their run raised (the
``flags`` column, codes joined by ``", "``); boards and ``advbench compare`` show them, and
``advbench list flags`` prints this catalog. Attacks measure what they can during the run at no
extra model call (gradient availability, loss progress, iterates that crossed the boundary);
the runner adds its second clean pass and the cascade's black-box member; boards compare rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Indicator:
    """A failure indicator: ``code`` as rows store it, the ``threshold`` that raises it, what
    it means and what to do about it."""

    code: str
    threshold: str
    explanation: str
    remedy: str


SILENT_SUCCESS = "silent-success"
INCOMPLETE = "incomplete"
ZERO_GRAD = "zero-grad"
UNSTABLE = "unstable"
UNCONSTRAINED = "unconstrained"
BLACK_BOX_WINS = "black-box-wins"
BLACK_BOX_CLOSER = "black-box-closer"
TRANSFER_WINS = "transfer-wins"
NEAR_CHANCE = "near-chance"
EPS_RISES = "eps-rises"
NO_EOT = "no-eot"
CERTIFICATE_BROKEN = "certificate-broken"

ZERO_GRAD_SHARE = 0.01
"""``zero-grad``: at least this share of the per-image gradient evaluations were zero or not
finite."""
TAIL = 0.1
"""``incomplete``: the last share of a run's iterations whose loss progress is looked at."""
TAIL_GAIN = 0.05
"""``incomplete``: a sample still improves when its best loss rose by more than this share of
its whole run's rise during the last :data:`TAIL` of its iterations."""
IMPROVING_SHARE = 0.1
"""``incomplete``: at least this share of the samples left robust were still improving."""
BLACK_BOX_SHARE = 0.01
"""``black-box-wins`` (in a cascade): the black-box member fooled at least this share (and at
least one) of the samples every white-box member missed."""
BEAT_SHARE = 0.1
"""``black-box-closer`` (in a cascade): its short black-box probe fooled none of them but got
closer to the boundary (a higher margin loss, by more than a scale-free tolerance) than every
white-box member on at least this share of those samples."""
CHANCE_MARGIN = 0.1
"""``near-chance``: clean accuracy below chance + this share of the way from chance to 1."""

CATALOG: dict[str, Indicator] = {i.code: i for i in (
    Indicator(SILENT_SUCCESS, "any sample",
              "an iterate crossed the decision boundary but the returned point does not",
              "return the best adversarial found, not the last iterate"),
    Indicator(INCOMPLETE, f"{IMPROVING_SHARE:.0%} of the samples left robust still gained over "
              f"{TAIL_GAIN:.0%} of their loss rise in the last {TAIL:.0%} of the iterations",
              "the loss was still improving when the budget ran out",
              "raise steps (or restarts) until the robust accuracy stops falling"),
    Indicator(ZERO_GRAD, f"{ZERO_GRAD_SHARE:.0%} of the gradient evaluations",
              "input gradients were zero or not finite (quantisation, saturation, a "
              "non-differentiable layer): gradient attacks are blind there",
              "attack with a black-box member (square), or BPDA around the layer"),
    Indicator(UNSTABLE, "any sample",
              "clean forward passes disagree: the model is randomised",
              "average over draws (EOT) and evaluate over several draws"),
    Indicator(NO_EOT, "any row on a randomised target",
              "a gradient attack followed one draw of the target's randomness per step: its "
              "number is an upper bound from a non-adaptive attack",
              "set eot_iter (e.g. 20, or the standard cascade's rand version)"),
    Indicator(CERTIFICATE_BROKEN, "any sample",
              "a sample certified by a deterministic bound (IBP, CROWN) within eps was fooled "
              "inside eps, or at a distance below its certified radius: a bound or an attack "
              "is wrong",
              "report it with the row's cell_id; neither number of the row can be trusted"),
    Indicator(UNCONSTRAINED, "any sample",
              "an eps spanning the whole input range left samples robust: the attack, not the "
              "model, failed",
              "fix the attack (loss, step size, gradients) before reading smaller budgets"),
    Indicator(BLACK_BOX_WINS, f"in a cascade, its black-box member fooled "
              f"{BLACK_BOX_SHARE:.0%} of the samples its white-box members left robust; across "
              "rows of one population, any sample inside the white-box ball",
              "a black-box attack fooled samples every white-box attack missed: gradients "
              "are masked",
              "report the black-box number; attack adaptively (BPDA, EOT, another loss)"),
    Indicator(BLACK_BOX_CLOSER, f"in a cascade, its black-box probe fooled none but got closer "
              f"to the boundary than every white-box member on {BEAT_SHARE:.0%} of the samples "
              "they left robust",
              "a few black-box queries out-climbed every gradient attack: gradients may be "
              "masked (rapid then runs the rest of Square's budget)",
              "read the row's decision; attack adaptively (BPDA, EOT, another loss)"),
    Indicator(TRANSFER_WINS, "any row",
              "a transfer attack crafted on another model beat the white-box attack through "
              "the defense: its gradients mislead",
              "attack adaptively (BPDA around non-differentiable parts, EOT over randomness)"),
    Indicator(NEAR_CHANCE, f"clean accuracy below chance + {CHANCE_MARGIN:.0%} of the way to 1 "
              "(a discriminator: averaged over its two directions)",
              "the target is barely better than guessing, so its robust accuracy says little",
              "train the target further, or read its row as a sanity check only"),
    Indicator(EPS_RISES, "any row",
              "robust accuracy rises as eps grows on one curve: a larger budget found less",
              "rerun with more steps or restarts; the attack is unreliable at that eps"),
)}


def join(codes: list[str]) -> str | None:
    """The ``flags`` column of a row: its codes in catalog order, or None."""
    known = [c for c in CATALOG if c in codes]
    return ", ".join(known) if known else None


def split(flags: object) -> list[str]:
    """The codes of a stored or shown ``flags`` value (None or NaN: none); a shown flag may
    carry its detail in parentheses after the code (``"black-box-wins (4 inside linf 0.1)"``)."""
    if not isinstance(flags, str):
        return []
    return [c.split(" (")[0] for c in flags.split(", ") if c]


def unavailable_gradients(grad: torch.Tensor) -> torch.Tensor:
    """``[N]`` bool: a row's input gradient is all zero or holds a value that is not finite."""
    flat = grad.flatten(1)
    return ~torch.isfinite(flat).all(1) | (flat.abs().sum(1) == 0)


def tail_start(evaluations: int) -> int:
    """The first of a run's ``evaluations`` (loss evaluations, numbered from 0) in its last
    :data:`TAIL`."""
    return evaluations - math.ceil(TAIL * evaluations)


def still_improving(first: torch.Tensor, best: torch.Tensor, at_tail: torch.Tensor
                    ) -> torch.Tensor:
    """``[N]`` bool: the best loss of the tail beat the best before it (``at_tail``) by more
    than :data:`TAIL_GAIN` of the run's whole rise (``best - first``). A run too short to have
    a tail (one evaluation: FGSM) never counts."""
    rise = best - first
    return torch.isfinite(at_tail) & ((best - at_tail) > TAIL_GAIN * rise.clamp_min(0) + 1e-12)


def near_chance(clean_acc: float, num_classes: int) -> bool:
    """Clean accuracy within :data:`CHANCE_MARGIN` of the way from chance to 1."""
    chance = 1.0 / max(num_classes, 1)
    return clean_acc < chance + CHANCE_MARGIN * (1 - chance)


__all__ = ["CATALOG", "Indicator", "join", "near_chance", "split", "still_improving",
           "tail_start", "unavailable_gradients"]
