"""advbench defenses: each turns a base Target into a defended Target (DESIGN.md, "Defense").

``fit(base_target, train_data, params, generator) -> Target``. ``none`` is the identity, the
undefended baseline every defended row is compared with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from bench.datasets import Split
from bench.registry import Registry
from bench.target import Target

DefenseFit = Callable[[Target, Split, Any, torch.Generator], Target]


@dataclass(frozen=True)
class DefenseSpec:
    name: str
    fit: DefenseFit
    summary: str


DEFENSES: Registry[DefenseSpec] = Registry("defense")


def register_defense(name: str) -> Callable[[DefenseFit], DefenseFit]:
    """Register a defense's ``fit`` function under ``name``."""

    def decorator(fit: DefenseFit) -> DefenseFit:
        summary = (fit.__doc__ or "").strip().splitlines()[0] if fit.__doc__ else ""
        DEFENSES.add(name, DefenseSpec(name, fit, summary))
        return fit

    return decorator


@register_defense("none")
def no_defense(base: Target, train: Split, params: Any, generator: torch.Generator) -> Target:
    """No defense: the base target itself (the baseline)."""
    return base


__all__ = ["DEFENSES", "DefenseSpec", "register_defense"]
