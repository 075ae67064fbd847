"""The Parquet result store.

Layout under the results directory::

    summary/<cell_id>.parquet            one summary row per cell
    samples/<cell_id>-<run_id>.parquet   that cell's per-sample rows from run <run_id>
    artifacts/<cell_id>-<run_id>/        tensors an attack produced (a UAP's perturbation)
    claims/<cell_id>                     a cell's lease (host, pid, run, renewals) while it runs
    partial/<run key>.safetensors        a long attack run's state after each piece (resumable)
    quarantine/                          unreadable or foreign files `advbench doctor` moved aside

A cell's samples file is written before its summary file, each through a hidden temporary name
and an atomic rename, so readers see whole files or nothing. A cell counts as stored exactly when
its summary file and the samples file it names both read whole. Recomputing a cell (``--force``)
replaces its summary file in one rename, so every reader, advbench's or a plain
``read_parquet('results/summary/*.parquet')``, sees one row per cell; the superseded samples and
artifacts are removed after the swap. A killed sweep leaves at most hidden temporary files
(ignored by readers), the claims of the cells it had in flight, and the samples file of a cell
it was storing when it died: no summary names that file, so no reader uses it, and the cell's
next run (or ``advbench doctor``) removes it. A claim is a lease its holder
renews while it works, fenced: a sweep whose lease was taken over cannot store the cell
(:mod:`leaderboards.leases`).

Files that do not read whole, or that are not advbench results, are never deleted: readers name
them (:mod:`leaderboards.quarantine`), and ``advbench doctor`` (or ``advbench run --repair``)
moves them into ``quarantine/``.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import save_file

from bench.core.errors import BadInput
from bench.core.files import temp_dir
from leaderboards.leases import LeaseLost, Leases
from leaderboards.quarantine import Problem, inspect_file, move_aside
from leaderboards.schema import (
    SAMPLES_SCHEMA,
    SCHEMA_VERSION,
    SUMMARY_SCHEMA,
    SummaryRow,
    migrate,
    samples_table,
    summary_row,
    summary_table,
)


def atomic_write(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` as Parquet through a hidden temporary name and an atomic
    rename: readers see the whole file or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _png(tensor: torch.Tensor) -> bytes | None:
    """An image-shaped tensor ([C, H, W], C in 1 or 3) as a contrast-stretched PNG."""
    if tensor.ndim != 3 or tensor.shape[0] not in (1, 3):
        return None
    from PIL import Image

    t = tensor.detach().float().cpu()
    t = (t - t.min()) / (t.max() - t.min()).clamp_min(1e-12)
    array = (t * 255).round().byte().permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).save(buf, format="PNG")
    return buf.getvalue()


def _atomic_artifacts(artifacts: Mapping[str, torch.Tensor], folder: Path) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(folder.parent, f".{folder.name}.")
    try:
        for name, tensor in artifacts.items():
            save_file({name: tensor.detach().cpu().contiguous()}, str(tmp / f"{name}.safetensors"))
            png = _png(tensor)
            if png is not None:
                (tmp / f"{name}.png").write_bytes(png)
        if not folder.exists():
            os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


FENCE_KEY = b"advbench_lease_fence"
"""Summary-file metadata: the fence of the lease the cell's result was written under."""


@dataclass
class Scan:
    """What a results directory holds: whole cells (cell_id -> run_id) and problem files."""

    cells: dict[str, str]
    problems: list[Problem]


class ResultStore:
    """Read and write advbench results under ``root``. ``leases``: who computes which cell
    (:mod:`leaderboards.leases`); ``claim_ttl``: seconds after which an unrenewed lease of
    another process may be taken over (never, by default)."""

    def __init__(self, root: str | os.PathLike[str], claim_ttl: float = math.inf) -> None:
        self.root = Path(root)
        self.leases = Leases(self.root / "claims", claim_ttl, self.stored_fence)

    @property
    def summary_dir(self) -> Path:
        return self.root / "summary"

    @property
    def samples_dir(self) -> Path:
        return self.root / "samples"

    @property
    def artifacts_dir(self) -> Path:
        return self.root / "artifacts"

    @property
    def claims_dir(self) -> Path:
        return self.leases.folder

    def stored_fence(self, cell_id: str) -> int:
        """The lease fence the stored result of ``cell_id`` was written with (0: none, or
        written without a lease)."""
        try:
            meta = pq.read_schema(self.summary_dir / f"{cell_id}.parquet").metadata or {}
        except (pa.ArrowException, OSError):
            return 0
        text = meta.get(FENCE_KEY, b"0").decode(errors="replace")
        return int(text) if text.isdigit() else 0

    def _files(self, folder: Path) -> list[Path]:
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.glob("*.parquet") if not p.name.startswith("."))

    def _summary_files(self, cell_id: str = "*") -> list[Path]:
        """``cell_id``'s summary files (any cell's by default), with the older
        ``<cell_id>-<run_id>.parquet`` layout."""
        if not self.summary_dir.is_dir():
            return []
        return sorted({p for pattern in (f"{cell_id}.parquet", f"{cell_id}-*.parquet")
                       for p in self.summary_dir.glob(pattern) if not p.name.startswith(".")})

    def _whole_cells(self, summaries: list[Path], problems: list[Problem],
                     samples_checked: Mapping[Path, Problem | None] | None = None
                     ) -> dict[str, str]:
        """cell_id -> run_id of the newest summary row among ``summaries`` whose samples file
        reads whole; every summary file that does not read goes to ``problems``.
        ``samples_checked``: samples files already inspected (the others are read here)."""
        checked = samples_checked or {}
        cells: dict[str, tuple[str, Any]] = {}
        for path in summaries:
            data, _, problem = inspect_file(path, "summary", whole=True)
            if problem:
                problems.append(problem)
                continue
            assert data is not None
            for cell_id, run_id, created in zip(data["cell_id"].to_pylist(),
                                                data["run_id"].to_pylist(),
                                                data["created_at"].to_pylist()):
                if cell_id in cells and created <= cells[cell_id][1]:
                    continue
                samples = self.samples_dir / f"{cell_id}-{run_id}.parquet"
                if not samples.is_file():
                    continue
                unreadable = checked[samples] if samples in checked else \
                    inspect_file(samples, "samples", whole=False)[2]
                if unreadable is None:
                    cells[cell_id] = (run_id, created)
        return {c: r for c, (r, _) in cells.items()}

    def scan(self) -> Scan:
        """Read every summary file whole and every samples file's footer, once."""
        samples = {p: inspect_file(p, "samples", whole=False)[2]
                   for p in self._files(self.samples_dir)}
        problems: list[Problem] = []
        cells = self._whole_cells(self._summary_files(), problems, samples)
        problems += [problem for problem in samples.values() if problem]
        return Scan(cells, problems)

    def check(self) -> Scan:
        """The directory's :meth:`scan`; :class:`BadInput` naming the first file advbench
        cannot use (run this before writing anything)."""
        if self.root.exists() and not self.root.is_dir():
            raise BadInput(f"results directory {self.root} is a file; pick a directory for --out")
        scan = self.scan()
        if scan.problems:
            more = f" ({len(scan.problems) - 1} more)" if len(scan.problems) > 1 else ""
            raise BadInput(scan.problems[0].message(self.root) + more)
        return scan

    def doctor(self) -> list[tuple[Path, Path]]:
        """Move every unreadable or foreign results file, and samples files no summary refers
        to, into ``quarantine/`` (nothing is deleted); returns (from, to) pairs."""
        scan = self.scan()
        referenced = {f"{c}-{r}" for c, r in scan.cells.items()}
        moves = [p.path for p in scan.problems if p.movable]
        moves += [p for p in self._files(self.samples_dir) if p.stem not in referenced]
        moves += [p for p in self._summary_files()  # summaries whose samples are gone
                  if p.stem.split("-", 1)[0] not in scan.cells]
        other_versions = {p.path for p in scan.problems if not p.movable}
        return [(path, move_aside(self.root, path)) for path in dict.fromkeys(moves)
                if path not in other_versions]

    def is_stored(self, cell_id: str) -> bool:
        """Whether ``cell_id``'s summary and samples files read whole."""
        return cell_id in self._whole_cells(self._summary_files(cell_id), [])

    def remove_empty(self, created_root: bool) -> None:
        """Remove the claims folder when it holds nothing, and the results folder itself when
        this process created it and it holds nothing (a sweep that failed before writing leaves
        no trace, and never removes a folder the user made)."""
        for folder in (self.claims_dir, self.root) if created_root else (self.claims_dir,):
            try:
                folder.rmdir()
            except OSError:
                pass  # not empty, or not there

    def write_cell(self, summary: SummaryRow | Mapping[str, Any], samples: Mapping[str, Any],
                   artifacts: Mapping[str, torch.Tensor] | None = None, *,
                   fenced: bool = False) -> None:
        """Store one finished cell: artifacts, then samples, then its summary row (replacing
        the cell's previous summary in one rename), then remove what that run superseded.
        ``fenced``: commit only while this process's lease of the cell is the current one
        (:meth:`leaderboards.leases.Leases.fenced`); otherwise its own files are removed and
        :class:`leaderboards.leases.LeaseLost` raised."""
        row = summary_row(summary)
        summary_t = summary_table([row])
        samples_t = samples_table(samples)
        stem = f"{row.cell_id}-{row.run_id}"
        if artifacts:
            _atomic_artifacts(artifacts, self.artifacts_dir / stem)
        atomic_write(samples_t, self.samples_dir / f"{stem}.parquet")
        if not fenced:
            self._commit(summary_t, row.cell_id, stem, 0)
            return
        try:
            with self.leases.fenced(row.cell_id) as fence:
                self._commit(summary_t, row.cell_id, stem, fence)
        except LeaseLost:
            (self.samples_dir / f"{stem}.parquet").unlink(missing_ok=True)
            shutil.rmtree(self.artifacts_dir / stem, ignore_errors=True)
            raise

    def _commit(self, summary_t: pa.Table, cell_id: str, stem: str, fence: int) -> None:
        """Put the summary in place (with the lease fence it was written under) and remove
        what it superseded."""
        meta = {**(summary_t.schema.metadata or {}), FENCE_KEY: str(fence).encode()}
        atomic_write(summary_t.replace_schema_metadata(meta),
                     self.summary_dir / f"{cell_id}.parquet")
        self._remove_superseded(cell_id, stem)

    def _remove_superseded(self, cell_id: str, stem: str) -> None:
        """Earlier runs' files of ``cell_id`` (unreadable ones are moved aside, not deleted)."""
        old = [p for p in self.summary_dir.glob(f"{cell_id}-*.parquet")]  # older layout
        old += [p for p in self.samples_dir.glob(f"{cell_id}-*.parquet") if p.stem != stem]
        for path in old:
            table = "summary" if path.parent == self.summary_dir else "samples"
            if inspect_file(path, table, whole=False)[2] is None:
                path.unlink(missing_ok=True)
            else:
                move_aside(self.root, path)
        for folder in self.artifacts_dir.glob(f"{cell_id}-*"):
            if folder.name != stem and folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)

    def completed_cells(self) -> set[str]:
        """cell_ids whose summary and samples files read whole."""
        return set(self.scan().cells)

    def _read(self, files: Iterable[Path], schema: pa.Schema) -> pa.Table:
        tables = []
        for path in files:
            data, version, problem = inspect_file(path, str(schema.metadata[b"advbench_table"],
                                                        "utf-8"), whole=True)
            if problem:
                raise BadInput(problem.message(self.root))
            assert data is not None
            try:
                tables.append(data.cast(schema) if version == SCHEMA_VERSION
                              else migrate(data, version, schema))
            except (ValueError, pa.ArrowException) as exc:  # SchemaError is a ValueError
                missing = sorted(set(schema.names) - set(data.column_names))
                detail = f"lacks columns {', '.join(missing)}" if missing else str(exc)[:200]
                raise BadInput(Problem(path, f"claims results schema version {version} but "
                                             f"{detail}", True).message(self.root)) from None
        return pa.concat_tables(tables) if tables else schema.empty_table()

    def summary(self) -> pd.DataFrame:
        """All summary rows, one per cell_id (the newest when a cell was recomputed)."""
        df = self._read(self._summary_files(), SUMMARY_SCHEMA).to_pandas()
        if df.empty:
            return df
        df = df.sort_values("created_at").drop_duplicates("cell_id", keep="last")
        return df.reset_index(drop=True)

    def samples(self, summary: pd.DataFrame | None = None) -> pd.DataFrame:
        """Per-sample rows of the cells in ``summary`` (default: every stored cell)."""
        summary = self.summary() if summary is None else summary
        wanted = {f"{c}-{r}.parquet" for c, r in zip(summary["cell_id"], summary["run_id"])}
        files = [p for p in self._files(self.samples_dir) if p.name in wanted]
        missing = sorted(wanted - {p.name for p in files})
        if missing:
            raise BadInput(
                f"{self.samples_dir / missing[0]} is missing (its summary row is stored); run "
                f"`advbench doctor {self.root}` or rerun the sweep to recompute the cell")
        return self._read(files, SAMPLES_SCHEMA).to_pandas()


def load(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The summary rows of a results directory as a pandas DataFrame."""
    root = Path(path)
    if not root.is_dir():
        raise BadInput(f"results directory {root} does not exist")
    return ResultStore(root).summary()
