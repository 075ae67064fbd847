"""The attack registry: an attack is a pure batched function registered by name with a frozen
params dataclass::

    @register_attack("pgd", params=PGDParams, norms=(Norm.LINF, Norm.L2))
    def pgd(target, x, y, *, eps, norm, generator, params, y_target=None) -> AttackResult: ...

Targeted vs untargeted is a field of the params, never object state; all randomness comes from
the ``torch.Generator`` passed in. A spec says which norms, budgets and inputs the attack takes
(:func:`check_threat`, :func:`check_labels`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from bench.core.calls import adaptive_settings
from bench.core.errors import BadInput
from bench.core.members import CascadeMember
from bench.core.norms import Norm
from bench.core.params import parse_params
from bench.core.registry import Registry
from bench.core.result import AttackResult
from bench.core.target import (
    Target,
)
from bench.core.threat import ThreatModel


class AttackFn(Protocol):
    def __call__(
        self,
        target: Target,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        eps: float | None,
        norm: Norm,
        generator: torch.Generator,
        params: Any,
        y_target: torch.Tensor | None = None,
    ) -> AttackResult: ...

CostFn = Callable[[Any, int, int, int], tuple[int, int]]
"""``(params, n_images, num_classes, n_fit) -> (forward, backward)`` model calls, upper bound."""


@dataclass(frozen=True)
class AttackSpec:
    """A registered attack: its function, params dataclass, supported norms and paper."""

    name: str
    fn: AttackFn
    params_cls: type
    norms: tuple[Norm, ...]
    minimal: bool = False
    summary: str = ""
    needs_fit_data: bool = False
    positive_budget: bool = False
    black_box: bool = False
    cost: CostFn | None = None
    streams: bool = False
    cascade: Callable[[Any, Norm], tuple[CascadeMember, ...]] | None = None
    only_on: tuple[str, ...] = ()
    starts: bool = False
    label_only: bool = False

    def max_calls(self, params: Any, n: int, num_classes: int, n_fit: int = 0
                  ) -> tuple[int, int] | None:
        """Upper bound on (forward, backward) per-image model calls for ``n`` images (``n_fit``
        fitting images), from the attack's full budget; ``None`` when the attack has no rule."""
        if self.cost is None:
            return None
        forward, backward = self.cost(params, n, num_classes, n_fit)
        draws = 1 if self.cascade is not None else adaptive_settings(params)[0]
        return forward * draws, backward * draws  # EOT: every draw is a call

    def make_params(self, params: Mapping[str, Any] | Any = None) -> Any:
        """Build the frozen params dataclass from a mapping; unknown keys are named in the error."""
        return parse_params(self.params_cls, params, f"attack {self.name!r}")


ATTACKS: Registry[AttackSpec] = Registry("attack")


def register_attack(
    name: str, *, params: type, norms: tuple[Norm, ...], minimal: bool = False,
    needs_fit_data: bool = False, positive_budget: bool = False, black_box: bool = False,
    cost: CostFn | None = None, streams: bool = False,
    cascade: Callable[[Any, Norm], tuple[CascadeMember, ...]] | None = None,
    only_on: tuple[str, ...] = (), starts: bool = False, label_only: bool = False,
) -> Callable[[AttackFn], AttackFn]:
    """Register an attack function under ``name`` (its docstring's first line is its summary).

    ``minimal``: takes ``eps = None`` and reports minimal perturbations. ``needs_fit_data``: the
    attack fits on training data, passed as ``fit_data=(x, y)`` (universal perturbations).
    ``positive_budget``: eps = 0 is refused (a UAP radius ξ or a pixel count k must be > 0).
    ``black_box``: uses model outputs only, never gradients (gradient-masking checks use this).
    ``cost``: the upper bound of model calls for a budget (``advbench run --dry-run``).
    ``streams``: takes ``batch_size=`` and works through any number of images that many at a
    time, refilling the rows that finish early; the runner then hands it a whole cell at once.
    ``cascade``: the attack runs other attacks in turn; ``cascade(params)`` lists its members,
    and its result's ``artifacts`` say which member fooled each sample and what each cost
    (:mod:`attacks.cascade`); the runner writes a row per member. ``only_on``: the attack
    applies only to targets behind these defenses (SmoothAdv: a smoothed classifier); a sweep
    runs it on those and leaves the others out. ``starts``: the attack takes ``x_init=``, a
    starting point per image (a search continued from where an earlier run left it).
    ``label_only``: the attack reads nothing of the target but its predicted label (a target
    declared ``label_only`` takes only such attacks, and transfers).
    """

    def decorator(fn: AttackFn) -> AttackFn:
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        ATTACKS.add(name, AttackSpec(name, fn, params, norms, minimal, summary, needs_fit_data,
                                     positive_budget, black_box, cost, streams, cascade,
                                     only_on, starts, label_only))
        return fn

    return decorator


def check_threat(spec: AttackSpec, threat: ThreatModel) -> None:
    """Raise :class:`BadInput` if ``spec`` cannot run under ``threat``."""
    if threat.norm not in spec.norms:
        raise BadInput(
            f"attack {spec.name!r} supports norms {', '.join(n.value for n in spec.norms)}, "
            f"not {threat.norm.value}"
        )
    if threat.eps is None and not spec.minimal:
        raise BadInput(f"attack {spec.name!r} needs an eps budget")
    if spec.positive_budget and threat.eps is not None and threat.eps <= 0:
        raise BadInput(f"attack {spec.name!r} needs eps > 0 (got {threat.eps_display}); its "
                       f"clean baseline is the clean_acc column of every row")
    if threat.norm is Norm.L0 and threat.eps is not None and (
            threat.eps < 1 or threat.eps != int(threat.eps)):
        raise BadInput(f"attack {spec.name!r}: an l0 budget is a pixel count, a whole number "
                       f">= 1; got eps {threat.eps_display}")


FitData = tuple[torch.Tensor, torch.Tensor]


def check_labels(target: Target, x: torch.Tensor, y: torch.Tensor, what: str) -> None:
    """Raise :class:`BadInput` unless ``y`` holds one integer class of ``target`` per image."""
    if y.shape != (x.shape[0],):
        raise BadInput(f"{what} must have shape [{x.shape[0]}] (one per image), got "
                       f"{tuple(y.shape)}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise BadInput(f"{what} must be integer class indices (torch.long), got {y.dtype}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= target.num_classes):
        raise BadInput(f"{what} must lie in 0..{target.num_classes - 1}, got "
                       f"{int(y.min())}..{int(y.max())}")
