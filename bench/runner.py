"""The runner: a cell is attack → verify → summarise, with the
options a sweep runs under and the report it ends with. Preparing targets is the worker's
(:mod:`bench.worker`), choosing samples :mod:`bench.evaluation`'s, the last word on each
adversarial :mod:`bench.verification`'s, the rows :mod:`bench.rows`'.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench import defaults
from bench.cascade_rows import member_run
from bench.config import Cell
from bench.core.attack_registry import FitData
from bench.core.checkpoints import state_sha256
from bench.core.errors import BadInput
from bench.core.measure import (
    autocast,
    measure,
)
from bench.core.resume import Checkpoints, PieceStore, fingerprint
from bench.core.target import Target
from bench.evaluation import EvalData
from bench.records import SAMPLE_ARTIFACTS, AttackedModel, AttackRun, CellResult, PreparedTarget
from bench.rows import attack_run_id, sample_columns, summarise
from bench.verification import verify
from leaderboards.schema import SummaryRow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    """How a sweep runs: ``executor`` "local" (in process; ``workers`` > 1 = a process pool,
    by default one per visible GPU) or "ray" (``address``: None starts a local instance,
    "auto" or "host:port" joins a cluster); ``retries``: reruns of a failed pool/Ray task."""

    out: Path
    cache_dir: Path
    force: bool = False
    progress: bool = True
    device: str | None = None
    executor: str = "local"
    workers: int | None = None
    address: str | None = None
    retries: int = defaults.RETRIES
    wait: bool = True  # wait for cells another sweep holds until they are stored
    claim_ttl: float | None = None  # None: the config's claim_ttl

    def __post_init__(self) -> None:
        """Raise :class:`BadInput` for settings that cannot work (before anything starts)."""
        if self.retries < 0:
            raise BadInput(f"retries must be >= 0, got {self.retries}")
        if self.claim_ttl is not None and not self.claim_ttl > 0:
            raise BadInput(f"claim_ttl must be > 0 seconds, got {self.claim_ttl}")
        if self.workers is not None and self.workers < 1:
            raise BadInput(f"workers must be >= 1, got {self.workers}")
        if self.executor not in ("local", "ray"):
            raise BadInput(f"unknown executor {self.executor!r}; use 'local' or 'ray'")
        if self.executor == "local" and self.address is not None:
            raise BadInput("--address applies to --executor ray")
        if self.executor == "ray" and self.workers is not None:
            raise BadInput("--workers applies to --executor local (Ray schedules its own "
                           "workers)")


@dataclass
class RunReport:
    """``skipped``: cells already stored; ``stored_by_others``: cells another sweep held and
    stored while this one waited; ``busy``: cells left to another running sweep (``wait``
    off); ``failed``: (cell_id, error) of cells whose task failed after its retries;
    ``retried``: (cell_id, why) of cells whose task was rerun (a worker error, a lost node);
    ``lost``: cells this sweep computed but did not store because its lease on them expired
    and another sweep took them over."""

    run_id: str
    cells: int
    skipped: int
    written: list[SummaryRow] = field(default_factory=list)
    busy: int = 0
    stored_by_others: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    retried: list[tuple[str, str]] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)


def attack_samples(cell: Cell, attacked: Target, data: EvalData, *, device: torch.device,
                   batch_size: int, fit_data: FitData | None = None,
                   progress: bool = False, precision: str = "fp32",
                   pieces: PieceStore | None = None, weights: str = "") -> AttackRun:
    """Run the cell's attack on ``attacked`` over ``data`` at ``precision``, timed on the
    device (batching, streaming and the out-of-memory back-off are the attack entry point's).
    A cascade checkpoints into ``pieces`` after each member and resumes from the last piece a
    killed run left there for the same ``weights`` and samples; its time adds up over pieces."""
    generator = torch.Generator(device=device).manual_seed(cell.seed)
    checkpoints = None if pieces is None else Checkpoints(
        pieces, attack_run_id(cell), fingerprint(weights, data.x, data.y))
    with measure(device) as timing, autocast(device, precision):
        result = cell.attack(attacked, data.x, data.y, generator=generator, fit_data=fit_data,
                             batch_size=batch_size, progress=progress, checkpoints=checkpoints)
    return AttackRun(result.x_adv, result.y_target, result.n_forward, result.n_backward,
                     timing.wall_s + result.earlier_s, timing.peak_mem_bytes, result.artifacts,
                     result.effective_params, result.n_grad_unavailable, result.notes)


def _resumable(resumes: bool, pieces: PieceStore | None, attacked: AttackedModel
               ) -> dict[str, Any]:
    """``attack_samples``' checkpoint arguments for a run that ``resumes`` (a cascade)."""
    if not resumes or pieces is None:
        return {}
    return {"pieces": pieces, "weights": state_sha256(attacked.plain)}


def run_cell(cell: Cell, prepared: PreparedTarget, data: EvalData, attacked: AttackedModel, *,
             device: torch.device, run_id: str, progress: bool = False,
             fit_data: FitData | None = None,
             minimal_runs: dict[str, AttackRun] | None = None,
             pieces: PieceStore | None = None) -> CellResult:
    """Attack one cell's samples on the prepared ``attacked`` model, verify, summarise.

    ``minimal_runs`` caches the runs several rows are read from: a minimal-perturbation run
    (every eps of one curve) and a cascade's (its row and each member's). ``pieces``: where a
    cascade checkpoints after each member (:mod:`bench.core.resume`).
    """
    spec = cell.attack.spec
    if spec.minimal or spec.cascade is not None:
        cache = minimal_runs if minimal_runs is not None else {}
        key = attack_run_id(cell)
        if key not in cache:
            # the run itself: a minimal attack unbounded, a cascade as a whole
            whole = dataclasses.replace(cell, member="", attack=cell.attack.at(None)) \
                if spec.minimal else dataclasses.replace(cell, member="")
            cache[key] = attack_samples(
                whole, attacked.fast, data, device=device, batch_size=attacked.batch_size,
                progress=progress, precision=attacked.precision_for(cell),
                **_resumable(spec.cascade is not None, pieces, attacked))
        run = cache[key]
        if cell.member:
            run = member_run(cell, run, data.x)
    else:
        run = attack_samples(cell, attacked.fast, data, device=device,
                             batch_size=attacked.batch_size, fit_data=fit_data,
                             progress=progress, precision=attacked.precision_for(cell))
    outcome = verify(cell, prepared, data, run, attacked.batch_size)
    return CellResult(
        summarise(cell, prepared, data, run, outcome, attacked, device=device, run_id=run_id),
        sample_columns(cell, prepared, data, outcome, run),
        {k: v for k, v in run.artifacts.items() if k not in SAMPLE_ARTIFACTS})
