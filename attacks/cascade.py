"""The ``standard`` cascade: AutoAttack's evaluation (Croce & Hein, ICML 2020) as one attack.

``version = "standard"`` runs APGD-CE → APGD-T → FAB-T → Square, AutoAttack's standard version;
``"fast"`` runs APGD-CE → APGD-T. The clean pass comes first (a misclassified sample needs no
attack); each member then attacks only the samples that every earlier member failed on, at the
cascade's budget, and a sample counts as fooled when a member's adversarial leaves its label
within eps. The result says which member fooled each sample (``artifacts["fooled_by"]``: 0 the
clean pass, k the k-th member, −1 none) and what each member cost (``artifacts["members"]``,
one :class:`bench.core.attack.MemberStats` per member: samples given, samples fooled, forward
calls, backward calls, seconds).
The runner turns these into one row per member and one for the cascade.

Members run through the one attack entry point, so each streams and stops early as on its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from bench.core.attack import (
    ATTACKS,
    Attack,
    AttackResult,
    CascadeMember,
    MemberStats,
    ModelCalls,
    register_attack,
)
from bench.core.errors import BadInput
from bench.core.norms import Norm, within_eps
from bench.core.target import Target

VERSIONS = ("standard", "fast")


@dataclass(frozen=True)
class StandardParams:
    """``version``: ``"standard"`` (APGD-CE, APGD-T, FAB-T, Square) or ``"fast"`` (APGD-CE,
    APGD-T). ``steps``: APGD and FAB-T iterations (AutoAttack: 100). ``target_classes``: target
    classes of APGD-T and FAB-T (9). ``queries``: Square's queries per sample (5000)."""

    version: str = "standard"
    steps: int = 100
    target_classes: int = 9
    queries: int = 5000

    def __post_init__(self) -> None:
        if self.version not in VERSIONS:
            raise BadInput(f"unknown cascade version {self.version!r}; use one of "
                           f"{', '.join(VERSIONS)}")
        for name in ("steps", "target_classes", "queries"):
            if getattr(self, name) < 1:
                raise BadInput(f"{name} must be >= 1, got {getattr(self, name)}")


def members(params: StandardParams) -> tuple[CascadeMember, ...]:
    """The cascade's members in order, with AutoAttack's settings at ``params``' budgets."""
    chosen = (
        CascadeMember("apgd-ce", "apgd", {"steps": params.steps, "loss": "ce"}),
        CascadeMember("apgd-t", "apgd_t", {"steps": params.steps,
                                    "target_classes": params.target_classes}),
        CascadeMember("fab-t", "fab_t", {"steps": params.steps,
                                  "target_classes": params.target_classes}),
        CascadeMember("square", "square", {"queries": params.queries}, black_box=True),
    )
    return chosen if params.version == "standard" else chosen[:2]


CLEAN = 0
ROBUST = -1


def _standard_cost(params: StandardParams, n: int, num_classes: int, n_fit: int
                   ) -> tuple[int, int]:
    forward, backward = n, 0
    for m in members(params):
        spec = ATTACKS.get(m.attack)
        cost = spec.max_calls(spec.make_params(m.params), n, num_classes, n_fit)
        if cost is not None:
            forward, backward = forward + cost[0], backward + cost[1]
    return forward, backward


@register_attack("standard", params=StandardParams, norms=(Norm.LINF, Norm.L2),
                 cost=_standard_cost, streams=True, cascade=members)
def standard(
    target: Target, x: torch.Tensor, y: torch.Tensor, *, eps: float | None, norm: Norm,
    generator: torch.Generator, params: StandardParams, y_target: torch.Tensor | None = None,
    batch_size: int | None = None,
) -> AttackResult:
    """AutoAttack's cascade: APGD-CE, APGD-T, FAB-T, Square, each on what the others missed."""
    assert eps is not None
    calls = ModelCalls(target)
    rows = max(1, batch_size or x.shape[0])
    x_adv = x.clone()
    fooled_by = torch.full((x.shape[0],), ROBUST, dtype=torch.long, device=x.device)
    if x.shape[0]:
        pred = torch.cat([calls.logits(c).argmax(1) for c in x.split(rows)])
        fooled_by[pred != y] = CLEAN
    stats = []
    for k, member in enumerate(members(params), start=1):
        todo = torch.nonzero(fooled_by == ROBUST).flatten()
        started = time.perf_counter()
        if todo.numel() == 0:
            stats.append(MemberStats(0, 0, 0, 0, 0.0))
            continue
        attack = Attack.create(member.attack, norm=norm, eps=eps, params=member.params)
        res = attack(target, x[todo], y[todo], generator=generator, batch_size=rows)
        inside = within_eps(res.x_adv - x[todo], norm, eps, target.bounds[1] - target.bounds[0])
        hit = res.success & inside
        x_adv[todo[hit]] = res.x_adv[hit]
        fooled_by[todo[hit]] = k
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        stats.append(MemberStats(todo.numel(), int(hit.sum()), res.n_forward, res.n_backward,
                                 time.perf_counter() - started))
    result = AttackResult.build(x, x_adv, fooled_by != ROBUST, calls, artifacts={
        "fooled_by": fooled_by.cpu(), "members": MemberStats.table(stats)})
    result.n_forward += sum(s.n_forward for s in stats)
    result.n_backward += sum(s.n_backward for s in stats)
    return result


__all__ = ["CLEAN", "ROBUST", "StandardParams", "members", "standard"]
