"""A row's failure indicators (:mod:`bench.core.indicators`), from what its run measured: the
attack's gradient evaluations and per-sample ``crossed`` / ``improving`` artifacts, the
prepared target's second clean pass, the cascade's members, and the eps against the input
range. Indicators that compare rows (``black-box-wins`` across attacks, ``transfer-wins``,
``eps-rises``, a discriminator's ``near-chance`` over its two directions) are the boards'
(:mod:`leaderboards.compare`)."""

from __future__ import annotations

import logging

import torch

from attacks.cascade import failure_reasons
from bench.cascade_rows import member_stats
from bench.config import Cell
from bench.core import indicators as ind
from bench.core.bounds import METHODS as BOUND_METHODS
from bench.core.norms import Norm
from bench.evaluation import EvalData
from bench.records import AttackRun, PreparedTarget
from bench.verification import Outcome

log = logging.getLogger(__name__)


def spans_input_range(cell: Cell, data: EvalData, bounds: tuple[float, float]) -> bool:
    """The cell's Linf or L2 eps reaches every point of the input box
    (:meth:`bench.core.threat.ThreatModel.largest`), so an attack that works fools every
    sample."""
    threat = cell.threat_model
    return threat.eps is not None and threat.norm in (Norm.LINF, Norm.L2) and \
        threat.eps >= threat.largest(bounds, tuple(data.x.shape[1:]))


def not_adaptive(cell: Cell, run: AttackRun) -> bool:
    """The cell's gradient attack averaged a single draw of the target per gradient (its
    ``expectation_draws``: ``eot_iter``, SmoothAdv's noise draws)."""
    spec = cell.attack.spec
    if spec.black_box or (spec.cascade is not None and cell.member and any(
            m.black_box for m in spec.cascade(cell.attack.params, cell.threat_model.norm) if m.name == cell.member)):
        return False
    return int(getattr(cell.attack.params, "expectation_draws", 1)) <= 1


def certificate_violations(cell: Cell, prepared: PreparedTarget, outcome: Outcome) -> int:
    """Samples a deterministic bound certifies that the cell's verified adversarials
    contradict: fooled within the cell's eps though certified there, or fooled at a distance
    (the cell's norm) below the certified radius. Logged as an error: it is a bug."""
    cert = prepared.certificate_of(cell)[0]
    if cert is None or cert.method not in BOUND_METHODS or \
            cert.norm != cell.threat_model.norm.value:
        return 0
    fooled = outcome.success & prepared.clean_correct
    certified = prepared.certified_at(cell)
    broken = fooled & certified if certified is not None else torch.zeros_like(fooled)
    if outcome.distance is not None:
        slack = 1e-6 * (1 + cert.radius)
        broken |= fooled & (cert.pred == prepared.labels) & (
            outcome.distance.to(cert.radius.device) < cert.radius - slack)
    count = int(broken.sum())
    if count:
        log.error("%s: %d sample(s) certified by %s were fooled inside their certified "
                  "radius (cell %s): a bound or an attack is wrong", cell.attack_name, count,
                  cert.method, cell.cell_id)
    return count


def row_flags(cell: Cell, prepared: PreparedTarget, data: EvalData, run: AttackRun,
              outcome: Outcome) -> str | None:
    """The codes of the indicators the cell's run raised, ``", "``-joined (None: none). On a
    randomised target an attack's loss and its crossings are one draw's, so ``silent-success``
    and ``incomplete`` (which read them) are not raised there; ``unstable`` and ``no-eot`` are."""
    codes = []
    correct = prepared.clean_correct
    left = correct & outcome.adv_correct
    crossed = run.artifacts.get("crossed")
    if crossed is not None and not prepared.defended.randomised and bool((crossed.to(correct.device) & correct
                                     & ~outcome.success).any()):
        codes.append(ind.SILENT_SUCCESS)
    improving = run.artifacts.get("improving")
    if improving is not None and int(left.sum()) and not prepared.defended.randomised:
        still = int((improving.to(left.device) & left).sum())
        if still and still >= ind.IMPROVING_SHARE * int(left.sum()):
            codes.append(ind.INCOMPLETE)
    if run.n_backward and run.n_grad_unavailable >= ind.ZERO_GRAD_SHARE * run.n_backward:
        codes.append(ind.ZERO_GRAD)
    if prepared.unstable:
        codes.append(ind.UNSTABLE)
    if (prepared.unstable or prepared.defended.randomised) and not_adaptive(cell, run):
        codes.append(ind.NO_EOT)
    defended = prepared.defended
    if defended.kind == "classifier" and correct.numel() and ind.near_chance(
            float(correct.float().mean()), defended.num_classes):
        codes.append(ind.NEAR_CHANCE)
    if not cell.member and spans_input_range(cell, data, prepared.defended.bounds) \
            and int(left.sum()):
        codes.append(ind.UNCONSTRAINED)
    if certificate_violations(cell, prepared, outcome):
        codes.append(ind.CERTIFICATE_BROKEN)
    spec = cell.attack.spec
    if spec.cascade is not None and "members" in run.artifacts:
        reasons = failure_reasons(spec.cascade(cell.attack.params, cell.threat_model.norm), member_stats(run))
        codes += [code for code, _ in reasons]
    return ind.join(codes)
