"""A cell's result rows: the summary row (:class:`leaderboards.schema.SummaryRow`) and the
per-sample columns, from the verified outcome, the run and the prepared target."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from bench.cascade_rows import (
    attacked_count,
    black_box_row,
    fooled_by_names,
    label_only_row,
    member_columns,
    row_decision,
)
from bench.config import Cell
from bench.core.measure import (
    device_name,
    floor_fraction,
    git_sha,
    node_name,
)
from bench.core.norms import Norm, norm_of
from bench.core.version import ADVBENCH_VERSION
from bench.core.zoo import ZOO
from bench.evaluation import EvalData
from bench.failures import row_flags
from bench.records import AttackedModel, AttackRun, PreparedTarget
from bench.verification import Outcome
from leaderboards.schema import SummaryRow


def _median(values: torch.Tensor) -> float | None:
    return float(values.float().median()) if values.numel() else None


def model_about(cell: Cell) -> dict[str, Any]:
    """The row's model description, paper and (a user model's) [[models]] table."""
    user = cell.user_model
    if user is not None:
        return {"model_description": user.description or None,
                "model_paper": user.paper or None,
                "model_entry": json.dumps(user.entry(), sort_keys=True)}
    spec = ZOO.get(cell.model)
    return {"model_description": spec.summary or None,
            "model_paper": getattr(spec, "paper", "") or None, "model_entry": None}


def row_params(cell: Cell, run: AttackRun) -> str:
    """The row's ``attack_params``: the cell's, with what the attack had to change."""
    if not run.effective_params:
        return cell.params_json
    return json.dumps({**json.loads(cell.params_json), **run.effective_params}, sort_keys=True)


def attack_run_id(cell: Cell) -> str:
    """The attack run a cell's numbers come from: its own, for a minimal-perturbation attack
    the one budget-free run every eps of its curve is read from, for a cascade member's row
    the cascade's run."""
    if cell.member:
        return dataclasses.replace(cell, member="").cell_id
    if cell.attack.spec.minimal:
        return dataclasses.replace(cell, attack=cell.attack.at(None)).cell_id
    return cell.cell_id


def _share(mask: torch.Tensor | None) -> float | None:
    return None if mask is None or not mask.numel() else int(mask.sum()) / mask.numel()


def draw_columns(prepared: PreparedTarget, outcome: Outcome) -> dict[str, Any]:
    """A randomised target's draws and first-draw accuracies (nulls for a deterministic one)."""
    if prepared.correct_every_draw is None:
        return {"draws": None, "clean_acc_one_draw": None, "robust_acc_one_draw": None}
    return {"draws": prepared.draws,
            "clean_acc_one_draw": _share(prepared.clean_correct_one_draw),
            "robust_acc_one_draw": _share(outcome.adv_correct_one_draw)}


def certificate_columns(cell: Cell, prepared: PreparedTarget, outcome: Outcome
                        ) -> dict[str, Any]:
    """A certificate's columns: certified accuracy at the cell's eps, the certified samples
    the attack fooled, the abstentions on the attacked inputs, the method, its cost."""
    cert, seconds = prepared.certificate_of(cell)
    certified = prepared.certified_at(cell)
    return {
        "certified_acc": _share(certified),
        "certified_fooled": None if certified is None else int((certified
                                                                & outcome.success).sum()),
        "abstain_rate": _share(outcome.abstained) if prepared.certificate is not None else None,
        "certify_method": cert.method if cert is not None else None,
        "certify_n_forward": cert.n_forward_per_sample if cert is not None else None,
        "certify_s": seconds,
    }


def runner_calls(cell: Cell, prepared: PreparedTarget, n: int) -> int:
    """The runner's own model passes on ``n`` samples (the ``runner_calls`` column): clean
    pass, margin gradients, the adversarials' fp32 re-check, the certificate (a bound
    computation counted as one pass)."""
    per_decision = prepared.defended.decide_passes
    clean = prepared.draws if prepared.correct_every_draw is not None else 2
    gradients = 2 if prepared.margin_grad.l2 is not None else 0  # a forward and a backward
    cert = prepared.certificate_of(cell)[0]
    certify = cert.n_forward_per_sample if cert else 0
    return n * ((clean + prepared.draws) * per_decision + gradients + certify)


def summarise(cell: Cell, prepared: PreparedTarget, data: EvalData, run: AttackRun,
              outcome: Outcome, attacked: AttackedModel, *, device: torch.device,
              run_id: str) -> SummaryRow:
    """The cell's summary row."""
    clean_correct = prepared.clean_correct
    fooled = clean_correct & outcome.success
    n, n_correct = data.x.shape[0], int(clean_correct.sum())
    rho = outcome.l2[fooled] / norm_of(data.x[fooled], Norm.L2).clamp_min(1e-12)
    floor = attacked.floor
    floor_kind = "forward+backward" if run.n_backward else "forward"
    return SummaryRow(
        cell_id=cell.cell_id, run_id=run_id, created_at=dt.datetime.now(dt.timezone.utc),
        dataset=cell.dataset, train_dataset=cell.train_dataset, split=cell.split, n_samples=n,
        target_kind=prepared.defended.kind, direction=cell.direction or None, model=cell.model,
        critic_threshold=prepared.base.card.get("critic_threshold"),
        model_source=cell.user_model.factory if cell.user_model else "zoo",
        **model_about(cell),
        weights_sha256=prepared.weights_sha256, base_weights_sha256=prepared.base_weights_sha256,
        defense=cell.defense, defense_params=cell.defense_params or None, threat=cell.threat,
        source_model=cell.source or None, attack=cell.attack_name,
        attack_params=row_params(cell, run), **member_columns(cell, run),
        flags=row_flags(cell, prepared, data, run, outcome),
        decision=row_decision(cell, run),
        black_box=black_box_row(cell), label_only=label_only_row(cell),
        targeted=cell.attack.targeted, norm=cell.threat_model.norm.value,
        eps=cell.threat_model.eps, eps_display=cell.threat_model.eps_display, seed=cell.seed,
        precision=attacked.precision_for(cell), batch_size=attacked.batch_size,
        fast_path=attacked.fast_path,
        clean_acc=n_correct / n, robust_acc=int(outcome.adv_correct.sum()) / n,
        **draw_columns(prepared, outcome), **certificate_columns(cell, prepared, outcome),
        success_rate=int(fooled.sum()) / n_correct if n_correct else None,
        fooling_rate=int((outcome.adv_pred != prepared.clean_pred).sum()) / n,
        median_l2=_median(outcome.l2[fooled]), median_linf=_median(outcome.linf[fooled]),
        mean_l0=float(outcome.l0[fooled].mean()) if bool(fooled.any()) else None,
        rho_adv=float(rho.mean()) if rho.numel() else None,
        margin_grad_l1=prepared.margin_grad.l1, margin_grad_l2=prepared.margin_grad.l2,
        attack_run=attack_run_id(cell), n_forward=run.n_forward, n_backward=run.n_backward,
        runner_calls=runner_calls(cell, prepared, n), wall_s=run.wall_s,
        img_per_s=attacked_count(cell, run, n) / run.wall_s if run.wall_s > 0 else 0.0,
        floor_img_per_s=floor[(floor_kind, attacked.precision_for(cell))] if floor else None,
        floor_fraction=floor_fraction(run.n_forward, run.n_backward, run.wall_s, floor,
                                      attacked.precision_for(cell)) if floor else None,
        peak_mem_bytes=run.peak_mem_bytes, device=device_name(device), node=node_name(),
        torch_version=torch.__version__, advbench_version=ADVBENCH_VERSION, git_sha=git_sha(),
    )


def sample_columns(cell: Cell, prepared: PreparedTarget, data: EvalData,
                   outcome: Outcome, run: AttackRun) -> dict[str, Any]:
    """The cell's per-sample columns (one per :class:`leaderboards.schema.SampleRow` field)."""
    n = data.x.shape[0]
    return {
        "cell_id": [cell.cell_id] * n,
        "sample_idx": data.idx.numpy().astype(np.int64),
        "label": data.y.cpu().numpy().astype(np.int64),
        "clean_correct": prepared.clean_correct.cpu().numpy(),
        "adv_correct": outcome.adv_correct.cpu().numpy(),
        "success": outcome.success.cpu().numpy(),
        "l2": outcome.l2.cpu().numpy().astype(np.float32),
        "linf": outcome.linf.cpu().numpy().astype(np.float32),
        "l0": outcome.l0.cpu().numpy().astype(np.float32),
        "distance": sample_distances(cell, prepared, data, outcome, run),
        "fooled_by": fooled_by_names(cell, run, n),
        "queries": run.artifacts["queries"].cpu().numpy().astype(np.int32)
        if "queries" in run.artifacts else [None] * n,
        **certificate_samples(cell, prepared, n),
    }


def sample_distances(cell: Cell, prepared: PreparedTarget, data: EvalData, outcome: Outcome,
                     run: AttackRun) -> pa.Array:
    """Per sample, the distance in the cell's norm of the adversarial the attack reached (null
    where it fooled nothing; 0 where the clean input is already wrong). A
    minimal attack's is its unbounded run's, the same in every row of its curve; an eps-bounded
    attack's is the verified adversarial's."""
    if cell.attack.spec.minimal:
        delta = run.x_adv - data.x
        reached = (delta != 0).flatten(1).any(dim=1)
        distance = norm_of(delta, cell.threat_model.norm)
    else:
        reached = outcome.success
        distance = outcome.distance if outcome.distance is not None else \
            torch.full_like(outcome.l2, float("nan"))
    out = distance.cpu().numpy().astype(np.float32)
    out[~reached.cpu().numpy()] = np.nan
    out[~prepared.clean_correct.cpu().numpy()] = 0.0
    return pa.array(out, type=pa.float32(), mask=np.isnan(out))


def certificate_samples(cell: Cell, prepared: PreparedTarget, n: int) -> dict[str, Any]:
    """Per sample, the certificate's radius, whether it certifies the label, and whether it
    does so within the cell's eps."""
    cert = prepared.certificate_of(cell)[0]
    certified = prepared.certified_at(cell)
    if cert is None:
        return {"certified_radius": [None] * n, "certified_correct": [None] * n,
                "certified": [None] * n}
    return {"certified_radius": cert.radius.cpu().numpy().astype(np.float32),
            "certified_correct": (cert.pred == prepared.labels).cpu().numpy(),
            "certified": [None] * n if certified is None else certified.cpu().numpy()}
