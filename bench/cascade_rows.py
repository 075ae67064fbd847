"""A cascade's bookkeeping: each member's row read from the cascade's one run (its
adversarials, calls and time, from the :class:`bench.core.members.MemberStats` the cascade
returns), which member fooled each sample, and what a conditional member decided."""

from __future__ import annotations

from typing import Any

import torch

from attacks.cascade import decision
from bench.config import Cell
from bench.core.members import MemberStats
from bench.records import AttackRun


def member_stats(run: AttackRun) -> list[MemberStats]:
    """The cascade run's per-member record (up to the row's member, for a member's run)."""
    return MemberStats.read(run.artifacts["members"])


def member_index(cell: Cell) -> int:
    """The 1-based position of a cascade member cell's member."""
    assert cell.attack.spec.cascade is not None
    names = [m.name for m in cell.attack.spec.cascade(cell.attack.params, cell.threat_model.norm)]
    return names.index(cell.member) + 1


def member_run(cell: Cell, run: AttackRun, x: torch.Tensor) -> AttackRun:
    """A cascade member's view of the cascade's run: the adversarials of the members up to and
    including it (the clean input elsewhere), its own model calls and time, and the run's notes
    (an ``eot_iter`` that ran as 1, a resume from a checkpoint)."""
    k = member_index(cell)
    fooled_by = run.artifacts["fooled_by"].to(x.device)
    upto = (fooled_by >= 1) & (fooled_by <= k)
    x_adv = torch.where(upto.view(-1, *([1] * (x.ndim - 1))), run.x_adv, x)
    own = member_stats(run)[k - 1]
    return AttackRun(x_adv, None, own.n_forward, own.n_backward, own.wall_s, run.peak_mem_bytes,
                     {"fooled_by": torch.where(fooled_by <= k, fooled_by, -1),
                      "members": run.artifacts["members"][:k]}, run.effective_params,
                     own.n_grad_unavailable, list(run.notes))


def row_decision(cell: Cell, run: AttackRun) -> str | None:
    """What the run decided, in words: a cascade's conditional member, what it did and why
    (the cascade's row only), and the run's own notes (an ``eot_iter`` that ran as 1, a resume
    from a checkpoint: on every row read from the run)."""
    spec = cell.attack.spec
    said = list(run.notes)
    if not cell.member and spec.cascade is not None and "members" in run.artifacts:
        said.insert(0, decision(spec.cascade(cell.attack.params, cell.threat_model.norm), member_stats(run)) or "")
    return "; ".join(s for s in said if s) or None


def member_columns(cell: Cell, run: AttackRun) -> dict[str, Any]:
    """A cascade member row's own numbers: samples it attacked, share it left robust."""
    if not cell.member:
        return {"cascade_member": None, "member_given": None, "member_robust_acc": None}
    own = member_stats(run)[-1]
    return {"cascade_member": cell.member, "member_given": own.given,
            "member_robust_acc": (own.given - own.fooled) / own.given if own.given else None}


def attacked_count(cell: Cell, run: AttackRun, n: int) -> int:
    """How many images the row's run attacked: a cascade member only those it was given."""
    return member_stats(run)[-1].given if cell.member else n


def black_box_row(cell: Cell) -> bool:
    """A member row is as black-box as its member; any other row as its attack."""
    if cell.member and cell.attack.spec.cascade is not None:
        return next(m.black_box for m in cell.attack.spec.cascade(cell.attack.params, cell.threat_model.norm)
                    if m.name == cell.member)
    return cell.attack.spec.black_box


def label_only_row(cell: Cell) -> bool:
    """Whether the row's attack read only the target's labels (a cascade's members read scores)."""
    return cell.attack.spec.label_only and not cell.member


def fooled_by_names(cell: Cell, run: AttackRun, n: int) -> list[str | None]:
    """Per sample, the name of the member that fooled it ("clean" when the clean input is
    misclassified; None when none did or the row is no cascade's)."""
    if "fooled_by" not in run.artifacts or cell.attack.spec.cascade is None:
        return [None] * n
    names = ["clean"] + [m.name for m in cell.attack.spec.cascade(cell.attack.params, cell.threat_model.norm)]
    return [names[k] if k >= 0 else None for k in run.artifacts["fooled_by"].tolist()]
