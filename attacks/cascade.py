"""The ``standard`` cascade: AutoAttack's evaluation (Croce & Hein, ICML 2020) as one attack.

``version = "standard"`` runs APGD-CE → APGD-T → FAB-T → Square, AutoAttack's standard version;
``"fast"`` runs APGD-CE → APGD-T. The clean pass comes first (a misclassified sample needs no
attack); each member then attacks only the samples that every earlier member failed on, at the
cascade's budget, and a sample counts as fooled when a member's adversarial leaves its label
within eps. The result says which member fooled each sample (``artifacts["fooled_by"]``: 0 the
clean pass, k the k-th member, −1 none) and what each member cost (``artifacts["members"]``,
one :class:`bench.core.members.MemberStats` per member: samples given, samples fooled, forward
calls, backward calls, seconds, unavailable gradients, samples skipped).
The runner turns these into one row per member and one for the cascade.

``"rapid"`` spends AutoAttack's model calls where they decide something. Most of the standard
version's calls on a robust sample are Square's 5,000 queries and the 9 × 100 steps of APGD-T
and FAB-T, yet on a model whose gradients work Square and FAB-T rarely fool what APGD missed.
So ``rapid`` runs APGD-CE; APGD-T on the 3 target classes nearest by MALT's linearised
distance (Melamed et al., NeurIPS 2024) rather than the 9 highest logits; a short Square probe
(500 queries) on what is left; and Square's full budget only when a failure indicator of the
earlier members says gradients cannot be trusted (:func:`failure_reasons`: zero or non-finite
gradients, or the probe fooling, or getting closer to the boundary than, every white-box
member — masked gradients, the case Square is in AutoAttack for). The row's ``decision`` column says what it decided and why.

``"rand"`` is AutoAttack's version for randomised defenses: APGD-CE and APGD-DLR, one restart
each, every gradient the mean of ``eot_iter`` = 20 draws of the defense's randomness (EOT).

Members run through the one attack entry point, so each streams and stops early as on its own.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import torch

from bench.core import resume
from bench.core.attack import Attack
from bench.core.attack_registry import ATTACKS, register_attack
from bench.core.calls import ModelCalls
from bench.core.errors import BadInput
from bench.core.indicators import (
    BEAT_SHARE,
    BLACK_BOX_CLOSER,
    BLACK_BOX_SHARE,
    BLACK_BOX_WINS,
    ZERO_GRAD,
    ZERO_GRAD_SHARE,
)
from bench.core.members import CascadeMember, MemberStats
from bench.core.norms import Norm, within_eps
from bench.core.result import AttackResult
from bench.core.target import Target

log = logging.getLogger(__name__)

VERSIONS = ("standard", "fast", "rapid", "rand")
TARGET_CLASSES = {"standard": 9, "fast": 9, "rapid": 3, "rand": 9}
"""Target classes of APGD-T (and FAB-T) when ``target_classes`` is not given."""
RAND_EOT_ITER = 20
"""AutoAttack's EOT draws per gradient in its ``rand`` version."""
PROBE_SHARE_DIVISOR = 10
"""``rapid``'s probe is, by default, the first tenth of Square's queries (500 of 5000)."""


@dataclass(frozen=True)
class StandardParams:
    """``version``: ``"standard"`` (APGD-CE, APGD-T, FAB-T, Square), ``"fast"`` (APGD-CE,
    APGD-T) or ``"rapid"`` (APGD-CE, APGD-T on MALT's nearest targets, a Square probe, and
    Square's full budget only when a failure indicator asks for it). ``steps``: APGD and FAB-T
    iterations (AutoAttack: 100). ``target_classes``: target classes of APGD-T and FAB-T
    (default 9; 3 for ``rapid``). ``queries``: Square's queries per sample (5000).
    ``probe_queries``: the queries of ``rapid``'s Square probe. ``"rand"`` (APGD-CE and
    APGD-DLR with EOT) is AutoAttack's version for randomised defenses. ``eot_iter``: the draws
    each gradient of the white-box members averages (default 20 for ``rand``, else 1).
    ``bpda``: members differentiate a defense's non-differentiable step as its stand-in
    (:class:`bench.core.calls.AdaptiveParams`)."""

    version: str = "standard"
    steps: int = 100
    target_classes: int | None = None
    queries: int = 5000
    probe_queries: int | None = None
    eot_iter: int | None = None
    bpda: bool = True

    @property
    def expectation_draws(self) -> int:
        """The draws of the target's randomness each member's gradient averages."""
        return int(self.eot_iter or 1)

    def __post_init__(self) -> None:
        if self.version not in VERSIONS:
            raise BadInput(f"unknown cascade version {self.version!r}; use one of "
                           f"{', '.join(VERSIONS)}")
        if self.target_classes is None:  # the version's own, recorded in the row's params
            object.__setattr__(self, "target_classes", TARGET_CLASSES[self.version])
        if self.eot_iter is None:
            object.__setattr__(self, "eot_iter", RAND_EOT_ITER if self.version == "rand" else 1)
        if self.version != "rapid" and self.probe_queries is not None:
            raise BadInput(f"probe_queries applies to the rapid version only, not "
                           f"{self.version!r}")
        if self.version == "rapid" and self.probe_queries is None:
            object.__setattr__(self, "probe_queries",
                               max(1, self.queries // PROBE_SHARE_DIVISOR))
        for name in ("steps", "target_classes", "queries", "probe_queries", "eot_iter"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise BadInput(f"{name} must be >= 1, got {value}")
        if self.probe_queries is not None and self.probe_queries >= self.queries:
            raise BadInput(f"probe_queries ({self.probe_queries}) must be below queries "
                           f"({self.queries}): the probe is the first queries of Square's "
                           f"budget, and Square's run continues from it")



L1_RESTARTS = 5
"""APGD-CE's restarts in AutoAttack's L1 version (its APGD-T runs 5 target classes)."""


def l1_members(params: StandardParams) -> tuple[CascadeMember, ...]:
    """AutoAttack's L1 version (Croce & Hein, ICML 2021): APGD-CE with 5 restarts and APGD-T,
    both on the 3·eps, 2·eps, eps schedule, then FAB-T and Square in L1. ``fast``: the two
    APGD members."""
    if params.version not in ("standard", "fast"):
        raise BadInput(f"the {params.version!r} version has no L1 members; in L1 use "
                       f"'standard' or 'fast'")
    adaptive = {"eot_iter": params.eot_iter, "bpda": params.bpda}
    chosen = (
        CascadeMember("apgd-ce", "apgd", {"steps": params.steps, "loss": "ce",
                                          "restarts": L1_RESTARTS, "large_reps": True,
                                          **adaptive}),
        CascadeMember("apgd-t", "apgd_t", {"steps": params.steps,
                                           "target_classes": params.target_classes,
                                           "large_reps": True, **adaptive}),
        CascadeMember("fab-t", "fab_t", {"steps": params.steps,
                                         "target_classes": params.target_classes}),
        CascadeMember("square", "square", {"queries": params.queries}, black_box=True),
    )
    return chosen if params.version == "standard" else chosen[:2]


def members(params: StandardParams, norm: Norm = Norm.LINF) -> tuple[CascadeMember, ...]:
    """The cascade's members in order, with AutoAttack's settings at ``params``' budgets
    (its L1 version's in L1, :func:`l1_members`)."""
    if norm is Norm.L1:
        return l1_members(params)
    adaptive = {"eot_iter": params.eot_iter, "bpda": params.bpda}
    ce = CascadeMember("apgd-ce", "apgd", {"steps": params.steps, "loss": "ce", **adaptive})
    if params.version == "rand":
        return ce, CascadeMember("apgd-dlr", "apgd", {"steps": params.steps, "loss": "dlr",
                                                      **adaptive})
    if params.version == "rapid":
        return (
            ce,
            CascadeMember("apgd-t", "apgd_t", {"steps": params.steps,
                                               "target_classes": params.target_classes,
                                               "target_order": "malt", **adaptive}),
            CascadeMember("square-probe", "square", {"queries": params.queries,
                                                     "stop_query": params.probe_queries},
                          black_box=True, probe=True),
            CascadeMember("square", "square", {"queries": params.queries,
                                               "start_query": params.probe_queries},
                          black_box=True, conditional=True, continues=True),
        )
    chosen = (
        ce,
        CascadeMember("apgd-t", "apgd_t", {"steps": params.steps,
                                           "target_classes": params.target_classes,
                                           **adaptive}),
        CascadeMember("fab-t", "fab_t", {"steps": params.steps,
                                         "target_classes": params.target_classes}),
        CascadeMember("square", "square", {"queries": params.queries}, black_box=True),
    )
    return chosen if params.version == "standard" else chosen[:2]


CLEAN = 0
ROBUST = -1
MARGIN_TOL = 1e-4
"""A black-box member beats the white-box members on a sample when its margin loss is higher
than all of theirs by more than this share of the sample's clean logit spread (largest minus
smallest logit): multiplying the logits by any positive factor leaves the decision as it is."""


def failure_reasons(chosen: tuple[CascadeMember, ...], stats: list[MemberStats]
                    ) -> list[tuple[str, str]]:
    """The failure indicators the members in ``stats`` (the first ``len(stats)`` of
    ``chosen``) raised, as ``(code, detail)``: ``zero-grad`` when at least
    :data:`bench.core.indicators.ZERO_GRAD_SHARE` of their gradient evaluations came back zero
    or not finite, ``black-box-wins`` when a black-box member fooled at least
    :data:`bench.core.indicators.BLACK_BOX_SHARE` (and at least one) of the samples it was
    given, all of which every white-box member before it missed, and ``black-box-closer`` when a
    short probe that fooled none of them reached a higher margin loss than all of them on at
    least :data:`bench.core.indicators.BEAT_SHARE` of those (a full black-box budget is expected
    to: a probe's few queries are not). ``rapid`` runs its conditional member (the rest of
    Square's budget) exactly when this is not empty."""
    reasons = []
    grads = sum(s.n_backward for s in stats)
    unavailable = sum(s.n_grad_unavailable for s in stats)
    if grads and unavailable >= ZERO_GRAD_SHARE * grads:
        reasons.append((ZERO_GRAD, f"{unavailable / grads:.1%} of {grads} gradient "
                                   f"evaluations zero or not finite"))
    for member, s in zip(chosen, stats, strict=False):
        if not member.black_box or not s.given:
            continue
        if s.fooled >= max(1.0, BLACK_BOX_SHARE * s.given):
            reasons.append((BLACK_BOX_WINS, f"{member.name} fooled {s.fooled} of {s.given} "
                                            f"that white-box members missed"))
        elif member.probe and s.beat_white_box >= max(1.0, BEAT_SHARE * s.given):
            reasons.append((BLACK_BOX_CLOSER, f"{member.name} got closer to the boundary than "
                                            f"every white-box member on {s.beat_white_box} "
                                            f"of {s.given}"))
    return reasons


def decision(chosen: tuple[CascadeMember, ...], stats: list[MemberStats]) -> str | None:
    """What a cascade with a conditional member decided and why, in words (a row's
    ``decision`` column); None for a cascade without one."""
    said = []
    for k, (member, s) in enumerate(zip(chosen, stats, strict=False)):
        if not member.conditional:
            continue
        reasons = failure_reasons(chosen, stats[:k])
        if s.skipped:
            grads = sum(t.n_backward for t in stats[:k])
            bad = sum(t.n_grad_unavailable for t in stats[:k])
            probes = ", ".join(f"{m.name} fooled {t.fooled} of {t.given}"
                               for m, t in zip(chosen[:k], stats[:k], strict=True)
                               if m.black_box)
            said.append(f"{member.name} skipped on {s.skipped}: no failure indicator "
                        f"({bad / grads if grads else 0:.1%} of gradients unavailable"
                        f"{'; ' + probes if probes else ''})")
        elif s.given:
            said.append(f"{member.name} ran on {s.given}: "
                        + "; ".join(f"{code} ({detail})" for code, detail in reasons))
        else:
            said.append(f"{member.name} not needed: every sample was fooled before it")
    return "; ".join(said) or None


def _standard_cost(params: StandardParams, n: int, num_classes: int, n_fit: int
                   ) -> tuple[int, int]:
    forward, backward = n, 0
    for m in members(params):  # the Linf / L2 members: at least the L1 ones' cost
        spec = ATTACKS.get(m.attack)
        cost = spec.max_calls(spec.make_params(m.params), n, num_classes, n_fit)
        if cost is not None:
            forward, backward = forward + cost[0], backward + cost[1]
    return forward, backward


@register_attack("standard", params=StandardParams, norms=(Norm.LINF, Norm.L2, Norm.L1),
                 cost=_standard_cost, streams=True, cascade=members)
def standard(
    target: Target, x: torch.Tensor, y: torch.Tensor, *, eps: float | None, norm: Norm,
    generator: torch.Generator, params: StandardParams, y_target: torch.Tensor | None = None,
    batch_size: int | None = None, checkpoints: resume.Checkpoints | None = None,
) -> AttackResult:
    """AutoAttack's cascade: APGD-CE, APGD-T, FAB-T, Square, each on what the others missed.

    ``checkpoints``: where to save the run's state after each member, and a piece of an earlier
    run of the same cell to resume from (:mod:`bench.core.resume`); None runs it whole."""
    assert eps is not None
    calls = ModelCalls(target)
    rows = max(1, batch_size or x.shape[0])
    n = x.shape[0]
    chosen = members(params, norm)
    started_run = time.perf_counter()
    piece = checkpoints.resumed() if checkpoints is not None else None
    state = _State.restore(piece, x, calls, generator) if piece is not None \
        and _State.fits(piece, chosen, n) else _State.start(x, y, calls, rows, generator)
    state.names = [m.name for m in chosen]
    for k, member in enumerate(chosen, start=1):
        if k <= len(state.stats):
            continue  # done before the run resumed
        todo = torch.nonzero(state.fooled_by == ROBUST).flatten()
        started = time.perf_counter()
        if todo.numel() == 0:
            state.stats.append(MemberStats(0, 0, 0, 0, 0.0))
        elif member.conditional and not failure_reasons(chosen, state.stats):
            state.stats.append(MemberStats(0, 0, 0, 0, 0.0, skipped=todo.numel()))
        else:
            state.stats.append(_attack_member(state, member, k, todo, target, x, y, norm, eps,
                                              generator, rows, started))
        if checkpoints is not None:
            checkpoints.save(state.piece(member.name, calls, generator,
                                         time.perf_counter() - started_run))
    fooled_by, x_adv = state.fooled_by, state.x_adv
    crossed, improving, stats = state.crossed, state.improving, state.stats
    result = AttackResult.build(x, x_adv, fooled_by != ROBUST, calls, artifacts={
        "fooled_by": fooled_by.cpu(), "members": MemberStats.table(stats),
        "crossed": crossed, "improving": improving & (fooled_by == ROBUST)})
    result.n_forward += sum(s.n_forward for s in stats)
    result.n_backward += sum(s.n_backward for s in stats)
    result.n_grad_unavailable += sum(s.n_grad_unavailable for s in stats)
    result.earlier_s = state.earlier_s
    if state.resumed:
        result.notes.append(f"resumed from a checkpoint after {state.resumed} of "
                            f"{len(chosen)} members ({', '.join(state.names[:state.resumed])})")
    return result


def _attack_member(state: _State, member: CascadeMember, k: int, todo: torch.Tensor,
                   target: Target, x: torch.Tensor, y: torch.Tensor, norm: Norm, eps: float,
                   generator: torch.Generator, rows: int, started: float) -> MemberStats:
    """Run the k-th member on the samples ``todo`` every earlier member missed; record what
    it fooled in ``state``."""
    attack = Attack.create(member.attack, norm=norm, eps=eps, params=member.params)
    res = attack(target, x[todo], y[todo], generator=generator, batch_size=rows,
                 x_init=state.search[todo] if member.continues else None)
    inside = within_eps(res.x_adv - x[todo], norm, eps, target.bounds[1] - target.bounds[0])
    hit = res.success & inside
    state.x_adv[todo[hit]] = res.x_adv[hit]
    state.fooled_by[todo[hit]] = k
    if "search" in res.artifacts:  # where a search continued by a later member stands
        state.search[todo] = res.artifacts["search"].to(x.device, x.dtype)
    for name, flag in (("crossed", state.crossed), ("improving", state.improving)):
        if name in res.artifacts:
            flag[todo] |= res.artifacts[name].to(x.device)
    beat = 0
    if "margin" in res.artifacts:
        reached = res.artifacts["margin"].to(x.device)
        if member.black_box:
            ahead = reached - state.white_box_margin[todo]
            beat = int((ahead > MARGIN_TOL * state.spread[todo]).sum())
        else:
            state.white_box_margin[todo] = torch.maximum(state.white_box_margin[todo], reached)
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    return MemberStats(todo.numel(), int(hit.sum()), res.n_forward, res.n_backward,
                       time.perf_counter() - started, res.n_grad_unavailable,
                       beat_white_box=beat)


@dataclass
class _State:
    """A cascade's progress: adversarials so far, which member fooled each sample (0 the clean
    pass, -1 none yet), the indicators' per-sample flags, the best white-box margins, each
    sample's clean logit spread (the margins' scale), where a black-box search stands (for a
    member that continues it), and the members' stats; checkpointed after each member
    (:mod:`bench.core.resume`)."""

    x_adv: torch.Tensor
    fooled_by: torch.Tensor
    crossed: torch.Tensor
    improving: torch.Tensor
    white_box_margin: torch.Tensor
    spread: torch.Tensor
    search: torch.Tensor
    stats: list[MemberStats]
    earlier_s: float = 0.0  # seconds the pieces before a resume took
    resumed: int = 0  # members done before a resume
    names: list[str] = field(default_factory=list)  # the cascade's members

    TENSORS = ("x_adv", "fooled_by", "crossed", "improving", "white_box_margin", "spread",
               "search")
    """The per-sample tensors a checkpoint holds, by name."""

    @staticmethod
    def start(x: torch.Tensor, y: torch.Tensor, calls: ModelCalls, rows: int,
              generator: torch.Generator) -> _State:
        """The clean pass: a misclassified sample needs no attack."""
        n = x.shape[0]
        fooled_by = torch.full((n,), ROBUST, dtype=torch.long, device=x.device)
        spread = torch.zeros(n, device=x.device)
        if n:
            logits = torch.cat([calls.logits(c) for c in x.split(rows)]).float()
            fooled_by[logits.argmax(1) != y] = CLEAN
            spread = logits.amax(1) - logits.amin(1)
        return _State(x.clone(), fooled_by, torch.zeros(n, dtype=torch.bool, device=x.device),
                      torch.zeros(n, dtype=torch.bool, device=x.device),
                      torch.full((n,), -math.inf, device=x.device), spread, x.clone(), [])

    @staticmethod
    def fits(piece: resume.Piece, chosen: tuple[CascadeMember, ...], n: int) -> bool:
        """Whether ``piece`` is this cascade's state on these ``n`` samples; a checkpoint
        another version of advbench wrote (other tensors) is refused in one log line."""
        wanted = {*_State.TENSORS, *MemberStats.named([]), "generator"}
        if set(piece.tensors) != wanted:
            log.warning("checkpoint after %s holds %s, not this advbench's %s: the cascade "
                        "starts over", piece.label, ", ".join(sorted(piece.tensors)),
                        ", ".join(sorted(wanted)))
            return False
        return (piece.meta.get("members") == [m.name for m in chosen]
                and piece.tensors["fooled_by"].shape[0] == n and piece.done <= len(chosen))

    @staticmethod
    def restore(piece: resume.Piece, x: torch.Tensor, calls: ModelCalls,
                generator: torch.Generator) -> _State:
        t = {k: v.to(x.device) for k, v in piece.tensors.items() if k != "generator"}
        generator.set_state(piece.tensors["generator"])
        calls.n_forward = int(piece.meta["clean_forward"])
        stats = MemberStats.from_named(piece.tensors)
        return _State(t["x_adv"].to(x.dtype), t["fooled_by"].long(), t["crossed"].bool(),
                      t["improving"].bool(), t["white_box_margin"].to(x.dtype),
                      t["spread"].float(), t["search"].to(x.dtype), stats,
                      float(piece.meta["elapsed_s"]), piece.done)

    def piece(self, label: str, calls: ModelCalls, generator: torch.Generator,
              seconds: float) -> resume.Piece:
        """This state after the member ``label`` (the clean pass's calls and the seconds so
        far included)."""
        return resume.Piece(len(self.stats), label, {
            **{name: getattr(self, name) for name in self.TENSORS},
            **MemberStats.named(self.stats), "generator": generator.get_state()},
            {"clean_forward": calls.n_forward, "elapsed_s": self.earlier_s + seconds,
             "members": self.names})


__all__ = ["CLEAN", "ROBUST", "StandardParams", "decision", "failure_reasons", "members",
           "standard"]
