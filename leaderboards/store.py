"""The Parquet result store (DESIGN.md, "The store is append-only").

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
(ignored by readers) and the claims of the cells it had in flight. A claim is a lease its holder
renews while it works: one whose process is gone (same host, dead pid) is taken over at once, one
whose lease has not changed for ``claim_ttl`` seconds (any host) after that.

Files that do not read whole, or that are not advbench results, are never deleted: readers name
them, and ``advbench doctor`` (or ``advbench run --repair``) moves them into ``quarantine/``.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import socket
import time
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


OLDEST_READABLE = 1
"""Files of schema versions from this one up are migrated on read."""


@dataclass(frozen=True)
class Problem:
    """A file in a results directory advbench cannot use. ``movable``: unreadable or foreign
    (``advbench doctor`` moves it aside); otherwise results of another advbench version."""

    path: Path
    reason: str
    movable: bool

    def message(self, root: Path) -> str:
        fix = (f"run `advbench doctor {root}` to move it into {root / QUARANTINE}/ (nothing is "
               f"deleted), or write into another --out" if self.movable else
               "upgrade advbench or write new results into another --out")
        return f"{self.path} {self.reason}; {fix}"


QUARANTINE = "quarantine"


def _inspect(path: Path, table: str, whole: bool) -> tuple[pa.Table | None, int, Problem | None]:
    """Read ``path`` (the footer only unless ``whole``): its table, schema version, or why not."""
    try:
        meta = pq.read_schema(path).metadata or {}
        data = pq.read_table(path) if whole else None
    except (pa.ArrowException, OSError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return None, -1, Problem(path, f"is not a readable Parquet file ({detail})", True)
    text = meta.get(b"advbench_schema_version", b"").decode(errors="replace")
    kind = meta.get(b"advbench_table", table.encode()).decode(errors="replace")
    if not text.isdigit() or kind != table:
        return None, -1, Problem(path, f"is not an advbench {table} file", True)
    version = int(text)
    if not OLDEST_READABLE <= version <= SCHEMA_VERSION:
        return None, version, Problem(
            path, f"was written with results schema version {version}; this advbench reads "
                  f"versions {OLDEST_READABLE} to {SCHEMA_VERSION}", False)
    expected = {"summary": SUMMARY_SCHEMA, "samples": SAMPLES_SCHEMA}[table].names
    if data is not None and version == SCHEMA_VERSION and data.column_names != expected:
        missing = sorted(set(expected) - set(data.column_names)) or ["(column order)"]
        return None, version, Problem(path, f"claims results schema version {version} but "
                                            f"lacks columns {', '.join(missing)}", True)
    return data, version, None


@dataclass
class Scan:
    """What a results directory holds: whole cells (cell_id -> run_id) and problem files."""

    cells: dict[str, str]
    problems: list[Problem]


class ResultStore:
    """Read and write advbench results under ``root``; ``claim_ttl``: seconds after which an
    unrenewed lease of another process may be taken over (never, by default)."""

    def __init__(self, root: str | os.PathLike[str], claim_ttl: float = math.inf) -> None:
        self.root = Path(root)
        self.claim_ttl = claim_ttl
        self._tokens: dict[str, str] = {}  # cell_id -> the token of this process's lease
        self._seen: dict[str, tuple[str, float]] = {}  # cell_id -> (claim text, first seen)

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
        return self.root / "claims"

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
            data, _, problem = _inspect(path, "summary", whole=True)
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
                    _inspect(samples, "samples", whole=False)[2]
                if unreadable is None:
                    cells[cell_id] = (run_id, created)
        return {c: r for c, (r, _) in cells.items()}

    def scan(self) -> Scan:
        """Read every summary file whole and every samples file's footer, once."""
        samples = {p: _inspect(p, "samples", whole=False)[2]
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
        return [(path, self._quarantine(path)) for path in dict.fromkeys(moves)
                if path not in other_versions]

    def _quarantine(self, path: Path) -> Path:
        target = self.root / QUARANTINE / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            target = target.with_name(f"{path.stem}.{uuid.uuid4().hex[:8]}{path.suffix}")
        os.replace(path, target)
        return target

    def is_stored(self, cell_id: str) -> bool:
        """Whether ``cell_id``'s summary and samples files read whole."""
        return cell_id in self._whole_cells(self._summary_files(cell_id), [])

    def claim(self, cell_id: str, run_id: str) -> bool:
        """Take ``cell_id``'s lease for this process; ``False`` while another holder's lease is
        live (:meth:`_expired`).

        The claim file is written under a temporary name and hard-linked into place, so it
        appears whole or not at all, and two processes cannot both create it. An expired claim
        is replaced under a takeover lock (:meth:`_take_over`), so of several sweeps racing for
        it one wins.
        """
        self.claims_dir.mkdir(parents=True, exist_ok=True)
        path = self.claims_dir / cell_id
        token = uuid.uuid4().hex
        tmp = self.claims_dir / f".{cell_id}.{token}.tmp"
        tmp.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                   "run_id": run_id, "token": token, "renewals": 0}))
        try:
            for _ in range(3):
                try:
                    os.link(tmp, path)
                    self._tokens[cell_id] = token
                    return True
                except FileExistsError:
                    pass
                text = _read_text(path)
                if text is None:
                    continue  # released meanwhile: link ours
                if not self._expired(cell_id, text) or not self._take_over(path, text, tmp):
                    return False
                self._tokens[cell_id] = token
                return True
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def _take_over(self, path: Path, expired: str, ours: Path) -> bool:
        """Replace the expired claim ``path`` (still reading ``expired``) with ``ours``, holding
        ``.<cell_id>.takeover`` (created exclusively) meanwhile; False when another taker holds
        the lock or the claim changed. A lock left by a dead taker is removed (its cell is taken
        at the next try)."""
        lock = self.claims_dir / f".{path.name}.takeover"
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            text = _read_text(lock)
            if text is not None and self._expired(lock.name, text):
                lock.unlink(missing_ok=True)
            return False
        try:
            os.write(fd, json.dumps({"pid": os.getpid(),
                                     "host": socket.gethostname()}).encode())
            if _read_text(path) != expired:
                return False  # renewed, released or taken meanwhile
            os.replace(ours, path)
            self._seen.pop(path.name, None)
            return True
        finally:
            os.close(fd)
            lock.unlink(missing_ok=True)

    def _expired(self, cell_id: str, text: str) -> bool:
        """Whether the claim reading ``text`` may be taken over: its holder is a dead process
        on this host, or its lease has not changed for ``claim_ttl`` seconds of this process's
        own clock (renewal is judged by change seen here, never by comparing two machines'
        clocks, so clock skew cannot expire a live lease)."""
        holder = _holder(text)
        if holder is not None and _dead_here(holder):
            return True
        now = time.monotonic()
        seen = self._seen.get(cell_id)
        if seen is None or seen[0] != text:
            self._seen[cell_id] = (text, now)
            return self.claim_ttl <= 0
        return now - seen[1] >= self.claim_ttl

    def holds(self, cell_id: str) -> bool:
        """Whether this store's process still holds ``cell_id``'s lease."""
        holder = _holder(_read_text(self.claims_dir / cell_id))
        return holder is not None and holder.get("token") == self._tokens.get(cell_id)

    def renew(self, cell_ids: Iterable[str]) -> list[str]:
        """Renew the leases of ``cell_ids`` (a counter in the claim file changes, so watchers
        see it live); returns those whose lease another sweep has taken over meanwhile."""
        lost = []
        for cell_id in cell_ids:
            path = self.claims_dir / cell_id
            holder = _holder(_read_text(path))
            if holder is None or holder.get("token") != self._tokens.get(cell_id):
                lost.append(cell_id)
                continue
            holder["renewals"] = int(holder.get("renewals", 0)) + 1
            tmp = self.claims_dir / f".{cell_id}.{uuid.uuid4().hex}.tmp"
            tmp.write_text(json.dumps(holder))
            os.replace(tmp, path)
        return lost

    def release(self, cell_id: str) -> None:
        """Drop this process's claim of ``cell_id`` (a lease another sweep took over stays)."""
        if self.holds(cell_id):
            (self.claims_dir / cell_id).unlink(missing_ok=True)
        self._tokens.pop(cell_id, None)

    def live_holders(self) -> set[int]:
        """The pids of this host's live processes that hold claims here."""
        pids = set()
        for path in self.claims_dir.glob("*") if self.claims_dir.is_dir() else ():
            if path.name.startswith("."):
                continue
            holder = _holder(_read_text(path))
            if holder is not None and holder.get("host") == socket.gethostname() \
                    and not _dead_here(holder):
                pids.add(int(holder.get("pid", -1)))
        return pids

    def claimed(self, cell_id: str) -> bool:
        """Whether a live lease holds ``cell_id``."""
        text = _read_text(self.claims_dir / cell_id)
        return text is not None and not self._expired(cell_id, text)

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
                   artifacts: Mapping[str, torch.Tensor] | None = None) -> None:
        """Store one finished cell: artifacts, then samples, then its summary row (replacing
        the cell's previous summary in one rename), then remove what that run superseded."""
        row = summary_row(summary)
        summary_t = summary_table([row])
        samples_t = samples_table(samples)
        stem = f"{row.cell_id}-{row.run_id}"
        if artifacts:
            _atomic_artifacts(artifacts, self.artifacts_dir / stem)
        atomic_write(samples_t, self.samples_dir / f"{stem}.parquet")
        atomic_write(summary_t, self.summary_dir / f"{row.cell_id}.parquet")
        self._remove_superseded(row.cell_id, stem)

    def _remove_superseded(self, cell_id: str, stem: str) -> None:
        """Earlier runs' files of ``cell_id`` (unreadable ones are moved aside, not deleted)."""
        old = [p for p in self.summary_dir.glob(f"{cell_id}-*.parquet")]  # older layout
        old += [p for p in self.samples_dir.glob(f"{cell_id}-*.parquet") if p.stem != stem]
        for path in old:
            table = "summary" if path.parent == self.summary_dir else "samples"
            if _inspect(path, table, whole=False)[2] is None:
                path.unlink(missing_ok=True)
            else:
                self._quarantine(path)
        for folder in self.artifacts_dir.glob(f"{cell_id}-*"):
            if folder.name != stem and folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)

    def completed_cells(self) -> set[str]:
        """cell_ids whose summary and samples files read whole."""
        return set(self.scan().cells)

    def _read(self, files: Iterable[Path], schema: pa.Schema) -> pa.Table:
        tables = []
        for path in files:
            data, version, problem = _inspect(path, str(schema.metadata[b"advbench_table"],
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


def _read_text(path: Path) -> str | None:
    """A claim file's text; None when there is none."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        return "<unreadable>"  # watched like any other claim: it expires unless it changes


def _holder(text: str | None) -> dict[str, Any] | None:
    try:
        holder = json.loads(text) if text is not None else None
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


def _dead_here(holder: Mapping[str, Any]) -> bool:
    """Whether the claim's holder is a process of this host that no longer exists."""
    if holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, KeyError, ValueError, TypeError, OverflowError):
        return False
    return False


def load(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The summary rows of a results directory as a pandas DataFrame."""
    root = Path(path)
    if not root.is_dir():
        raise BadInput(f"results directory {root} does not exist")
    return ResultStore(root).summary()
