"""Sweeps: plan the cells, skip what is stored, claim the rest, execute, write.

- **Plan.** Every cell of the config; those whose ``cell_id`` is stored are skipped (``--force``
  recomputes them). ``advbench run --dry-run`` prints the plan with each cell's upper bound of
  model calls and touches nothing.
- **Preflight.** Before anything is trained or written, ``--out`` must be a writable directory
  (or creatable) and every file already in it must read as advbench results of a readable
  schema version (:meth:`leaderboards.store.ResultStore.check`).
- **Claims.** A cell is claimed in the store (``claims/<cell_id>``) as it starts (a chunk at a
  time on a pool or Ray); the claim is a lease the sweep renews while it works (a thread, every
  quarter of ``claim_ttl``). A cell whose lease is live is left to its holder, so several sweeps
  on one directory, on any machines, split the work. Once it has run what it could claim, a
  sweep waits until the cells other sweeps hold are stored (``--no-wait``: exit at once), and
  runs any whose holder died (same host) or whose lease went unrenewed for ``claim_ttl``
  (any host). A sweep stores a cell only while it still holds its lease: one that was paused
  past its lease and taken over drops its result (``RunReport.lost``).
- **Resumable runs.** A cascade checkpoints after each member into ``partial/``
  (:mod:`bench.core.resume`); a rerun after a killed worker, node or driver resumes from there,
  and the checkpoint is removed once every row of its run is stored.
- **Executors** (:mod:`bench.executors`): ``local`` runs in this process, or with ``workers`` > 1
  in a pool of processes (one per visible GPU by default on CUDA); ``ray`` runs one task per
  group of cells sharing a base model. Workers only compute; the driver alone writes the store.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from bench.checks import check_sweep
from bench.config import Cell, SweepConfig, expand_cells
from bench.core.datasets import load_dataset
from bench.core.errors import BadInput
from bench.core.files import check_writable
from bench.core.progress import progress_bar
from bench.executors import partial_dir
from bench.rows import attack_run_id
from bench.runner import RunOptions, RunReport
from leaderboards.leases import LeaseLost
from leaderboards.store import ResultStore, Scan

if TYPE_CHECKING:
    from bench.executors import Executor
    from bench.records import CellResult

log = logging.getLogger(__name__)


def group_key(cell: Cell) -> tuple[str, str, str, int]:
    """Cells that share a trained base model run in one task (it is trained or loaded once)."""
    return (cell.dataset, cell.train_dataset, cell.model, cell.seed)


@dataclass
class Plan:
    """A sweep's cells and which of them are already stored."""

    config: SweepConfig
    cells: list[Cell]
    stored: set[str]

    @property
    def todo(self) -> list[Cell]:
        return [c for c in self.cells if c.cell_id not in self.stored]

    @staticmethod
    def groups(cells: list[Cell]) -> list[list[Cell]]:
        """``cells`` grouped by the base model they share (one executor task each)."""
        out: dict[tuple[str, str, str, int], list[Cell]] = {}
        for cell in cells:
            out.setdefault(group_key(cell), []).append(cell)
        return list(out.values())


def plan_sweep(config: SweepConfig, options: RunOptions) -> Plan:
    """Check the config (nothing is trained or written) and list its cells."""
    check_sweep(config)
    scan = preflight(options.out)
    cells = expand_cells(config)
    if not cells:
        raise BadInput(
            f"sweep {config.name!r} has no cells: each target needs a threat its defenses can "
            f"be attacked under ('transfer' applies to defended targets only, 'none' has just "
            f"'adaptive')")
    stored = set() if options.force else set(scan.cells)
    return Plan(config, cells, stored)


def estimated_calls(cell: Cell) -> tuple[int, int] | None:
    """Upper bound on the cell's (forward, backward) per-image model calls; a minimal attack's
    eps cells and a cascade's member cells reuse its one run (0, 0)."""
    spec = cell.attack.spec
    if (spec.minimal and cell.threat_model.eps is not None) or cell.member:
        return (0, 0)
    params = cell.attack.params
    num_classes = 2 if cell.direction else load_dataset(cell.dataset).num_classes
    n_fit = len(load_dataset(cell.train_dataset).split("train")) if spec.needs_fit_data else 0
    return spec.max_calls(params, cell.n_eval, num_classes, n_fit)


def dry_run_table(plan: Plan) -> pd.DataFrame:
    """One row per cell: whether it is stored, what it is, and its estimated model calls."""
    rows = []
    for cell in plan.cells:
        calls = estimated_calls(cell)
        rows.append({
            "status": "stored" if cell.cell_id in plan.stored else "todo",
            "cell_id": cell.cell_id[:10], "dataset": cell.dataset, "model": cell.model,
            "defense": cell.defense, "threat": cell.threat, "direction": cell.direction,
            "attack": cell.attack_name + (f"/{cell.member}" if cell.member else "")
            + (f" (from {cell.source})" if cell.source else ""),
            "norm": cell.threat_model.norm.value, "eps": cell.threat_model.eps_display,
            "seed": cell.seed, "n": cell.n_eval,
            "forward": calls[0] if calls else None, "backward": calls[1] if calls else None,
        })
    table = pd.DataFrame(rows)
    if not table["direction"].astype(bool).any():
        table = table.drop(columns="direction")
    return table


def dry_run_text(plan: Plan) -> str:
    table = dry_run_table(plan)
    todo = table[table["status"] == "todo"]
    fwd, bwd = todo["forward"].fillna(0).sum(), todo["backward"].fillna(0).sum()
    return (table.to_markdown(index=False) + "\n\n"
            f"{len(plan.cells)} cell(s): {len(todo)} to run, {len(plan.cells) - len(todo)} "
            f"already stored; at most {int(fwd):,} forward and {int(bwd):,} backward per-image "
            f"model calls to run them (dry run: nothing trained or written)")


def preflight(out: Path) -> Scan:
    """What ``out`` holds (:meth:`leaderboards.store.ResultStore.check`); :class:`BadInput`
    unless results can be written there without touching anything advbench cannot read."""
    check_writable(out, "--out")
    for sub in ("summary", "samples", "claims", "partial"):
        folder = Path(out) / sub
        if folder.exists() and (not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK)):
            raise BadInput(f"cannot write results into {folder}: not a writable directory")
    return ResultStore(out).check()


WAIT_POLL_S = 2.0


class _Driver:
    """Claims, renews, writes and releases cells for one sweep run (the one writer of the
    store)."""

    def __init__(self, options: RunOptions, run_id: str, report: RunReport,
                 claim_ttl: float, cells: list[Cell]) -> None:
        self.options, self.run_id, self.report = options, run_id, report
        self.store = ResultStore(options.out, claim_ttl)
        self.held: set[str] = set()
        self.busy: dict[str, Cell] = {}
        self.threads = torch.get_num_threads()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.renewer = threading.Thread(target=self._renew, args=(claim_ttl / 4,), daemon=True,
                                        name="advbench-lease-renewal")
        self.renewer.start()
        self.unstored = Counter(attack_run_id(cell) for cell in cells)
        self.pieces = partial_dir(options)

    def _renew(self, every: float) -> None:
        """Renew the leases of the cells this sweep holds until :meth:`close`."""
        while not self.stop.wait(every):
            with self.lock:
                lost = self.store.leases.renew(sorted(self.held))
            for cell_id in lost:
                log.warning("cell %s: another sweep took over its claim (this sweep's lease "
                            "went unrenewed past claim_ttl); its result will not be stored",
                            cell_id[:10])

    def claim(self, cells: list[Cell]) -> list[Cell]:
        """The cells of ``cells`` this process now holds; the others are stored or held."""
        mine = []
        for cell in cells:
            with self.lock:
                taken = self.store.leases.claim(cell.cell_id, self.run_id)
            if not taken:
                self.busy[cell.cell_id] = cell
            elif not self.options.force and self.store.is_stored(cell.cell_id):
                self.store.leases.release(cell.cell_id)  # another sweep stored it since we looked
                self.report.skipped += 1
            else:
                self.busy.pop(cell.cell_id, None)
                with self.lock:
                    self.held.add(cell.cell_id)
                mine.append(cell)
        if mine:
            self.share_cores()
        return mine

    def share_cores(self) -> None:
        """Split this machine's intra-op threads evenly among the sweeps running cells in this
        directory right now (two sweeps on 2 cores: one thread each, instead of four threads
        fighting over two cores); a sweep running alone takes them all back."""
        sweeps = len(self.store.leases.live_holders() | {os.getpid()})
        torch.set_num_threads(max(1, self.threads // sweeps))

    def run(self, executor: Executor, cells: list[Cell], bar: tqdm) -> None:
        for cell, outcome in executor.run(Plan.groups(cells), self.run_id, self.claim,
                                          self.retried):
            if isinstance(outcome, BaseException):
                self.report.failed.append((cell.cell_id, f"{type(outcome).__name__}: {outcome}"))
            elif not self.store_fenced(cell, outcome):
                self.report.lost.append(cell.cell_id)  # taken over: its new holder stores it
            with self.lock:
                self.store.leases.release(cell.cell_id)
                self.held.discard(cell.cell_id)
            bar.set_postfix_str(f"{cell.model}/{cell.defense} {cell.attack_name} "
                                f"{cell.threat_model.norm.value}@{cell.threat_model.eps_display}")
            bar.update(1)

    def store_fenced(self, cell: Cell, outcome: CellResult) -> bool:
        """Store ``cell``'s outcome while this sweep's lease of it is current; False (nothing
        stored) when another sweep took the lease over."""
        try:
            self.store.write_cell(outcome.summary, outcome.samples, outcome.artifacts,
                                  fenced=True)
        except LeaseLost:
            return False
        self.report.written.append(outcome.summary)
        self.stored(cell)
        _pause_for_tests(len(self.report.written))
        return True

    def retried(self, cells: list[Cell], reason: str) -> None:
        self.report.retried += [(cell.cell_id, reason) for cell in cells]

    def stored(self, cell: Cell) -> None:
        """Remove the checkpoint of ``cell``'s attack run once every row of it is stored."""
        run = attack_run_id(cell)
        self.unstored[run] -= 1
        if self.unstored[run] <= 0:
            self.pieces.drop(run)

    def wait_for_others(self) -> list[Cell]:
        """Block until every cell other sweeps hold is stored; return those whose holder died
        without storing them (this sweep runs them)."""
        log.warning("%d cell(s) are being run by another sweep; waiting for them (--no-wait "
                    "to leave them to it)", len(self.busy))
        while True:
            orphans = []
            for cell_id, cell in list(self.busy.items()):
                if self.store.is_stored(cell_id):
                    del self.busy[cell_id]
                    self.report.stored_by_others += 1
                elif not self.store.leases.claimed(cell_id):
                    orphans.append(cell)
            if orphans or not self.busy:
                return orphans
            time.sleep(WAIT_POLL_S)

    def close(self) -> None:
        """Stop renewing and release every claim this sweep still holds."""
        self.stop.set()
        self.renewer.join()
        for cell_id in self.held:
            self.store.leases.release(cell_id)
        self.held.clear()
        self.pieces.remove_if_empty()


def run_sweep(config: SweepConfig, options: RunOptions) -> RunReport:
    """Run every cell of ``config`` not already stored in ``options.out``."""
    from bench.executors import make_executor

    created_root = not Path(options.out).exists()
    plan = plan_sweep(config, options)
    run_id = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + uuid.uuid4().hex[:6]
    todo = plan.todo
    report = RunReport(run_id, len(plan.cells), len(plan.cells) - len(todo))
    if not todo:
        return report  # nothing to run: no executor (and no Ray instance) is started
    executor = make_executor(config, options)  # an unreachable cluster fails before writing
    driver = _Driver(options, run_id, report, options.claim_ttl or config.claim_ttl, todo)
    bar = progress_bar(total=len(todo), desc=f"sweep {config.name}", unit="cell",
                       enabled=options.progress)
    try:
        cells = todo
        while cells:
            driver.run(executor, cells, bar)
            if not driver.busy or not options.wait:
                break
            cells = driver.wait_for_others()
        report.busy = len(driver.busy)
        if report.busy:
            log.warning("%d cell(s) are being run by another sweep; left to it", report.busy)
    finally:
        bar.close()
        torch.set_num_threads(driver.threads)
        driver.close()
        driver.store.remove_empty(created_root)
        executor.close()
    return report


PAUSE_ENV = "ADVBENCH_TEST_PAUSE_AFTER_CELLS"


def _pause_for_tests(written: int) -> None:
    """Test hook: with ``$ADVBENCH_TEST_PAUSE_AFTER_CELLS = N`` the sweep blocks once it has
    stored N cells, until a signal ends it, so interruption tests know what is stored."""
    pause = os.environ.get(PAUSE_ENV, "")
    if pause.isdigit() and written == int(pause):
        log.warning("%s=%s: paused after %d stored cells", PAUSE_ENV, pause, written)
        while True:  # short sleeps: a signal that lands before one starts is handled after it
            time.sleep(0.1)


def summary_line(config: SweepConfig, report: RunReport, out: Any) -> str:
    parts = [f"{len(report.written)} cell(s) run", f"{report.skipped} already stored"]
    if report.stored_by_others:
        parts.append(f"{report.stored_by_others} stored by another sweep meanwhile")
    if report.busy:
        parts.append(f"{report.busy} left to another running sweep")
    if report.retried:
        parts.append(f"{len({c for c, _ in report.retried})} retried")
    if report.lost:
        parts.append(f"{len(report.lost)} taken over by another sweep (not stored here)")
    if report.failed:
        parts.append(f"{len(report.failed)} failed")
    return f"sweep {config.name!r}: {', '.join(parts)}; results in {out}/"


__all__ = ["Plan", "plan_sweep", "preflight", "run_sweep", "dry_run_table", "dry_run_text",
           "estimated_calls", "summary_line"]
