"""The versioned Parquet schema of advbench results (DESIGN.md, "Results schema").

Two tables: one *summary* row per cell and one *samples* row per (cell, evaluated sample), so
that worst cases over attacks are computed per sample. Numbers are numbers: accuracies are
floats in [0, 1], eps is a float (its display string is kept beside it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

SCHEMA_VERSION = 4
"""v2 added ``defense_params``, v3 ``direction`` (GAN discriminators) and the floor columns, v4
``fast_path``; older files are migrated on read (the added columns null)."""

SUMMARY_SCHEMA = pa.schema([
    pa.field("schema_version", pa.int32(), nullable=False),
    pa.field("cell_id", pa.string(), nullable=False),
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("dataset", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("n_samples", pa.int64(), nullable=False),
    pa.field("target_kind", pa.string(), nullable=False),
    pa.field("direction", pa.string()),  # discriminators: "real->fake" | "fake->real"
    pa.field("model", pa.string(), nullable=False),
    pa.field("defense", pa.string(), nullable=False),
    pa.field("defense_params", pa.string()),
    pa.field("threat", pa.string(), nullable=False),
    pa.field("source_model", pa.string()),
    pa.field("attack", pa.string(), nullable=False),
    pa.field("attack_params", pa.string(), nullable=False),
    pa.field("targeted", pa.bool_(), nullable=False),
    pa.field("norm", pa.string(), nullable=False),
    pa.field("eps", pa.float64()),
    pa.field("eps_display", pa.string(), nullable=False),
    pa.field("seed", pa.int64(), nullable=False),
    pa.field("precision", pa.string(), nullable=False),
    pa.field("batch_size", pa.int64(), nullable=False),
    # how the attacked model ran: "eager", "channels_last", "compile", "channels_last+compile"
    pa.field("fast_path", pa.string()),
    pa.field("clean_acc", pa.float64(), nullable=False),
    pa.field("robust_acc", pa.float64(), nullable=False),
    pa.field("success_rate", pa.float64()),
    pa.field("fooling_rate", pa.float64(), nullable=False),
    pa.field("median_l2", pa.float64()),
    pa.field("median_linf", pa.float64()),
    pa.field("mean_l0", pa.float64()),
    pa.field("rho_adv", pa.float64()),
    pa.field("n_forward", pa.int64(), nullable=False),
    pa.field("n_backward", pa.int64(), nullable=False),
    pa.field("wall_s", pa.float64(), nullable=False),
    pa.field("img_per_s", pa.float64(), nullable=False),
    # the attacked model's forward+backward (or, for gradient-free attacks, forward) images/s
    # at the cell's precision, and the share of it the attack's model calls reached
    pa.field("floor_img_per_s", pa.float64()),
    pa.field("floor_fraction", pa.float64()),
    pa.field("peak_mem_bytes", pa.int64()),
    pa.field("device", pa.string(), nullable=False),
    pa.field("torch_version", pa.string(), nullable=False),
    pa.field("advbench_version", pa.string(), nullable=False),
    pa.field("git_sha", pa.string()),
], metadata={"advbench_schema_version": str(SCHEMA_VERSION), "advbench_table": "summary"})

SAMPLES_SCHEMA = pa.schema([
    pa.field("cell_id", pa.string(), nullable=False),
    pa.field("sample_idx", pa.int64(), nullable=False),
    pa.field("label", pa.int64(), nullable=False),
    pa.field("clean_correct", pa.bool_(), nullable=False),
    pa.field("adv_correct", pa.bool_(), nullable=False),
    pa.field("success", pa.bool_(), nullable=False),
    pa.field("l2", pa.float32(), nullable=False),
    pa.field("linf", pa.float32(), nullable=False),
    pa.field("l0", pa.float32(), nullable=False),
], metadata={"advbench_schema_version": str(SCHEMA_VERSION), "advbench_table": "samples"})

_FRACTIONS = ("clean_acc", "robust_acc", "success_rate", "fooling_rate")


class SchemaError(ValueError):
    """A row does not fit the results schema (a bug in whoever built it)."""


def summary_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Validate summary rows and build a typed Arrow table."""
    for row in rows:
        missing = [f.name for f in SUMMARY_SCHEMA if f.name not in row]
        extra = sorted(set(row) - set(SUMMARY_SCHEMA.names))
        if missing or extra:
            raise SchemaError(f"summary row: missing {missing}, unexpected {extra}")
        if row["schema_version"] != SCHEMA_VERSION:
            raise SchemaError(f"summary row has schema_version {row['schema_version']}")
        for name in _FRACTIONS:
            value = row[name]
            if value is not None and not (isinstance(value, float) and 0.0 <= value <= 1.0):
                raise SchemaError(f"{name} must be a float in [0, 1], got {value!r}")
        for name in ("n_samples", "n_forward", "n_backward"):
            if not isinstance(row[name], int) or row[name] < 0:
                raise SchemaError(f"{name} must be a non-negative int, got {row[name]!r}")
        eps = row["eps"]
        if eps is not None and (not isinstance(eps, float) or math.isnan(eps) or eps < 0):
            raise SchemaError(f"eps must be a non-negative float or null, got {eps!r}")
    return _table(rows, SUMMARY_SCHEMA)


def samples_table(columns: Mapping[str, Any]) -> pa.Table:
    """Build the typed per-sample table from column arrays."""
    missing = [f.name for f in SAMPLES_SCHEMA if f.name not in columns]
    if missing:
        raise SchemaError(f"samples table: missing columns {missing}")
    try:
        return pa.table({f.name: columns[f.name] for f in SAMPLES_SCHEMA}, schema=SAMPLES_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise SchemaError(f"samples table: {exc}") from None


def _table(rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    try:
        return pa.Table.from_pylist(list(rows), schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise SchemaError(str(exc)) from None
