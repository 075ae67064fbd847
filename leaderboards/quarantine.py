"""Files in a results directory that advbench cannot use, and where they go: a
:class:`Problem` names the file and what is wrong (unreadable, not an advbench results file,
another schema version, missing columns) with the fix; :func:`move_aside` puts an unusable file
into ``quarantine/`` (``advbench doctor``), never deleting it."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from leaderboards.schema import SAMPLES_SCHEMA, SCHEMA_VERSION, SUMMARY_SCHEMA

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


def inspect_file(path: Path, table: str, whole: bool) -> tuple[pa.Table | None, int, Problem | None]:
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


def move_aside(root: Path, path: Path) -> Path:
    """Move ``path`` into ``root/quarantine/<its folder>/`` (a new name beside an earlier file of
    the same name); returns where it went."""
    target = root / QUARANTINE / path.parent.name / path.name
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        target = target.with_name(f"{path.stem}.{uuid.uuid4().hex[:8]}{path.suffix}")
    os.replace(path, target)
    return target
