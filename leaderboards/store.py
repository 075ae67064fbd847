"""The append-only Parquet result store (DESIGN.md, "The store is append-only").

Layout under the results directory::

    summary/<cell_id>-<run_id>.parquet   one summary row per cell
    samples/<cell_id>-<run_id>.parquet   that cell's per-sample rows

    claims/<cell_id>                     a cell being computed (pid, host), while it runs

A cell's samples file is written before its summary file, each through a hidden temporary name
and an atomic rename, so readers see whole files or nothing, and a cell counts as stored exactly
when its summary file exists. A killed sweep leaves at most hidden temporary files (ignored by
readers) and the claims of the cells it had in flight; a claim whose process is gone (same
host, dead pid) is taken over by the next sweep, so two sweeps writing into one directory never
compute a cell twice.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import save_file

from bench.core.errors import BadInput
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
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
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


class ResultStore:
    """Read and append advbench results under ``root``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @property
    def summary_dir(self) -> Path:
        return self.root / "summary"

    @property
    def samples_dir(self) -> Path:
        return self.root / "samples"

    def _files(self, folder: Path) -> list[Path]:
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.glob("*.parquet") if not p.name.startswith("."))

    @property
    def artifacts_dir(self) -> Path:
        return self.root / "artifacts"

    @property
    def claims_dir(self) -> Path:
        return self.root / "claims"

    def is_stored(self, cell_id: str) -> bool:
        return any(self.summary_dir.glob(f"{cell_id}-*.parquet"))

    def claim(self, cell_id: str, run_id: str) -> bool:
        """Take ``cell_id`` for this process; ``False`` if a live process holds it.

        The claim file is written under a temporary name and hard-linked into place, so it
        appears whole or not at all, and two processes cannot both create it.
        """
        self.claims_dir.mkdir(parents=True, exist_ok=True)
        path = self.claims_dir / cell_id
        tmp = self.claims_dir / f".{cell_id}.{uuid.uuid4().hex}.tmp"
        tmp.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                   "run_id": run_id}))
        try:
            for _ in range(3):
                try:
                    os.link(tmp, path)
                    return True
                except FileExistsError:
                    if not _claim_is_stale(path):
                        return False
                    # the holder died: move its claim aside (only one taker can) and retry
                    aside = self.claims_dir / f".{cell_id}.{uuid.uuid4().hex}.stale"
                    try:
                        os.rename(path, aside)
                        aside.unlink()
                    except FileNotFoundError:
                        pass
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def release(self, cell_id: str) -> None:
        (self.claims_dir / cell_id).unlink(missing_ok=True)

    def remove_empty(self) -> None:
        """Remove the claims folder, and the results folder itself, when they hold nothing (a
        sweep that failed before writing leaves no trace)."""
        for folder in (self.claims_dir, self.root):
            try:
                folder.rmdir()
            except OSError:
                pass  # not empty, or not there

    def write_cell(self, summary: SummaryRow | Mapping[str, Any], samples: Mapping[str, Any],
                   artifacts: Mapping[str, torch.Tensor] | None = None) -> None:
        """Store one finished cell: artifacts, then samples, then its summary row."""
        row = summary_row(summary)
        summary_t = summary_table([row])
        samples_t = samples_table(samples)
        stem = f"{row.cell_id}-{row.run_id}"
        if artifacts:
            _atomic_artifacts(artifacts, self.artifacts_dir / stem)
        atomic_write(samples_t, self.samples_dir / f"{stem}.parquet")
        atomic_write(summary_t, self.summary_dir / f"{stem}.parquet")

    def completed_cells(self) -> set[str]:
        """cell_ids whose summary file exists."""
        return {p.name.split("-", 1)[0] for p in self._files(self.summary_dir)}

    def _read(self, files: Iterable[Path], schema: pa.Schema) -> pa.Table:
        tables = []
        for path in files:
            try:
                meta = pq.read_schema(path).metadata or {}
            except (pa.ArrowInvalid, OSError) as exc:
                raise BadInput(f"{path} is not a readable Parquet file ({exc}); move it out of "
                               f"the results directory (advbench writes whole files only)"
                               ) from None
            text = meta.get(b"advbench_schema_version", b"?").decode()
            version = int(text) if text.isdigit() else -1
            if version == SCHEMA_VERSION:
                tables.append(pq.read_table(path, schema=schema))
            elif OLDEST_READABLE <= version < SCHEMA_VERSION:
                tables.append(migrate(pq.read_table(path), version, schema))
            else:
                raise BadInput(
                    f"{path} was written with results schema version {text}; this advbench "
                    f"reads versions {OLDEST_READABLE} to {SCHEMA_VERSION}: upgrade "
                    f"advbench or write new results into another directory"
                )
        return pa.concat_tables(tables) if tables else schema.empty_table()

    def summary(self) -> pd.DataFrame:
        """All summary rows, one per cell_id (the newest when a cell was recomputed)."""
        df = self._read(self._files(self.summary_dir), SUMMARY_SCHEMA).to_pandas()
        if df.empty:
            return df
        df = df.sort_values("created_at").drop_duplicates("cell_id", keep="last")
        return df.reset_index(drop=True)

    def samples(self, summary: pd.DataFrame | None = None) -> pd.DataFrame:
        """Per-sample rows of the cells in ``summary`` (default: every stored cell)."""
        summary = self.summary() if summary is None else summary
        wanted = {f"{c}-{r}.parquet" for c, r in zip(summary["cell_id"], summary["run_id"])}
        files = [p for p in self._files(self.samples_dir) if p.name in wanted]
        return self._read(files, SAMPLES_SCHEMA).to_pandas()


def _claim_is_stale(path: Path) -> bool:
    """A claim is stale when its process, on this host, no longer exists. Claims of other hosts
    are trusted (delete ``claims/`` by hand if such a machine died)."""
    try:
        holder = json.loads(path.read_text())
    except FileNotFoundError:
        return True
    except (OSError, ValueError):
        return False
    if holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, KeyError, ValueError, TypeError):
        return False
    return False


def load(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The summary rows of a results directory as a pandas DataFrame."""
    root = Path(path)
    if not root.is_dir():
        raise BadInput(f"results directory {root} does not exist")
    return ResultStore(root).summary()
