"""The versioned Parquet schema of advbench results.

Two tables: one *summary* row per cell (:class:`SummaryRow`) and one *samples* row per (cell,
evaluated sample) (:class:`SampleRow`), so that worst cases over attacks are computed per sample.
Each table is one frozen dataclass; its Arrow schema, its validation and the defaults that
migrate older files are derived from the fields. Numbers are numbers: accuracies are floats in
[0, 1], eps is a float (its display string is kept beside it).

Adding a column is one field (``X | None`` when older rows cannot know it) plus an entry in
:data:`ADDED_IN`, and, when older rows *can* know it, a function in :data:`MIGRATION_VALUES`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import pyarrow as pa
import pyarrow.compute as pc

from bench.core.indicators import BLACK_BOX_WINS, UNCONSTRAINED, join

SCHEMA_VERSION = 16

INT32 = pa.int32()
FLOAT32 = pa.float32()


class SchemaError(ValueError):
    """A row does not fit the results schema (a bug in whoever built it)."""


@dataclass(frozen=True, kw_only=True)
class SummaryRow:
    """One cell's result: what was evaluated, how, and what it measured."""

    schema_version: Annotated[int, INT32] = SCHEMA_VERSION
    cell_id: str
    run_id: str
    created_at: dt.datetime
    dataset: str
    train_dataset: str | None  # the data the model (and its defense) was trained on
    split: str
    n_samples: int
    target_kind: str
    direction: str | None  # discriminators: "real->fake" | "fake->real"
    model: str
    # where the model comes from: "zoo" (trained by advbench), or a user model's factory
    model_source: str
    # what the model is and its paper (a link): the zoo's, or a user model's own
    # ``description`` / ``paper``; and a user model's [[models]] table as JSON (null for zoo
    # models), from which a published page writes its reproduction snippet
    model_description: str | None
    model_paper: str | None
    model_entry: str | None
    # the SHA-256 of the evaluated target's weights (parameters and buffers; a defended
    # target's own), bench.core.checkpoints.state_sha256; before v9 a user model's weights file
    weights_sha256: str | None
    base_weights_sha256: str | None  # the undefended model's (= weights_sha256 for "none")
    # a Wasserstein critic's real/fake threshold t (the target is [0, score - t]); else null
    critic_threshold: float | None
    defense: str
    defense_params: str | None
    threat: str
    source_model: str | None
    attack: str
    attack_params: str
    # a cascade member's row (``standard``): the member; its row's robust_acc is the cascade's
    # cumulative robust accuracy after it, member_given the samples it attacked (all earlier
    # members failed on them) and member_robust_acc the share of those it left robust
    cascade_member: str | None
    member_given: int | None
    member_robust_acc: float | None
    # the failure indicators the run raised: their codes (bench.core.indicators.CATALOG),
    # ", "-joined; null when none was raised
    flags: str | None
    # what the run decided, in words: a cascade's conditional member (``rapid``), whether it
    # ran and why; an attack's eot_iter that ran as 1 on a deterministic target
    decision: str | None
    black_box: bool  # the attack uses model outputs only, never gradients
    label_only: bool  # the attack reads only the target's predicted label, never its scores
    targeted: bool
    norm: str
    eps: float | None
    eps_display: str
    seed: int
    precision: str
    batch_size: int
    # how the attacked model ran: "eager", "channels_last", "compile", "channels_last+compile"
    fast_path: str | None
    clean_acc: float
    robust_acc: float
    # a randomised target (its forward draws randomness): the forward passes each prediction
    # was judged over (clean_acc and robust_acc count a sample only if every draw is right),
    # and the accuracies of the first draw alone; null for a deterministic target
    draws: int | None
    clean_acc_one_draw: float | None
    robust_acc_one_draw: float | None
    # a certificate at the row's norm and eps: randomized smoothing's (CERTIFY of the smoothed
    # classifier, L2) or a deterministic network's bound (IBP, CROWN-IBP, CROWN;
    # bench.core.bounds): the share of samples certified correct within eps, the samples so
    # certified that the attack nevertheless fooled (0 unless Monte-Carlo error, for
    # smoothing, or a bug), and the share of attacked inputs the smoothed classifier abstained
    # on; null otherwise. certify_method names it: "smoothing", "ibp", "crown-ibp", "crown"
    certified_acc: float | None
    certified_fooled: int | None
    abstain_rate: float | None
    certify_method: str | None
    # the certificate's cost: per sample, forward passes (smoothing) or bound computations
    # (the radius's bisection and each eps checked), and seconds for the evaluated samples
    certify_n_forward: int | None
    certify_s: float | None
    success_rate: float | None
    fooling_rate: float
    median_l2: float | None
    median_linf: float | None
    mean_l0: float | None
    rho_adv: float | None
    # the clean pass's median norm of the input gradient of the decision margin (z_y - max
    # other z) over the evaluated images: L1 (the dual of Linf) and L2; null when the evaluated
    # target has no input gradient (bench.core.lipschitz)
    margin_grad_l1: float | None
    margin_grad_l2: float | None
    # the attack run whose model calls and time the row reports: the cell itself, or, for the
    # per-eps rows derived from one minimal-perturbation run, that run (they share its cost)
    attack_run: str
    # the attack run's own model calls: forward and backward passes through the attacked
    # model, one per image (a batch of 128 counts 128); EOT draws each count
    n_forward: int
    n_backward: int
    # the runner's own model passes on the cell's samples, apart from the attack's: the clean
    # pass (twice on a deterministic target, once per draw on a randomised one) and its margin
    # gradients (both shared by a population's cells, counted in each), the fp32 re-check of
    # the adversarials (once per draw), and a certificate's n0 + n; a smoothed classifier's
    # prediction counts its n_predict noisy passes
    runner_calls: int | None
    wall_s: float
    img_per_s: float
    # the attacked model's forward+backward (or, for gradient-free attacks, forward) images/s
    # at the cell's precision, and the share of it the attack's model calls reached
    floor_img_per_s: float | None
    floor_fraction: float | None
    peak_mem_bytes: int | None
    device: str
    # the machine that ran the cell: its host name, and for a Ray task ":" and the Ray node's
    # id (bench.core.measure.node_name)
    node: str | None
    torch_version: str
    advbench_version: str
    git_sha: str | None

    def __post_init__(self) -> None:
        if self.schema_version != SCHEMA_VERSION:
            raise SchemaError(f"summary row has schema_version {self.schema_version}")
        for name in ("clean_acc", "robust_acc", "success_rate", "fooling_rate",
                     "member_robust_acc", "clean_acc_one_draw", "robust_acc_one_draw",
                     "certified_acc", "abstain_rate"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, float) and 0.0 <= value <= 1.0):
                raise SchemaError(f"{name} must be a float in [0, 1], got {value!r}")
        for name in ("n_samples", "n_forward", "n_backward"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise SchemaError(f"{name} must be a non-negative int, got {value!r}")
        eps = self.eps
        if eps is not None and (not isinstance(eps, float) or math.isnan(eps) or eps < 0):
            raise SchemaError(f"eps must be a non-negative float or null, got {eps!r}")


@dataclass(frozen=True, kw_only=True)
class SampleRow:
    """One evaluated sample of one cell (the table is written column-wise)."""

    cell_id: str
    sample_idx: int
    label: int
    clean_correct: bool
    adv_correct: bool
    success: bool
    l2: Annotated[float, FLOAT32]
    linf: Annotated[float, FLOAT32]
    l0: Annotated[float, FLOAT32]
    # the distance, in the row's norm, of the adversarial the attack reached for the sample:
    # a minimal attack's unbounded run's (the same in every eps row of its curve), an
    # eps-bounded attack's verified adversarial's; 0 where the clean input is already
    # misclassified; null where the attack fooled nothing (bench.rows.sample_distances)
    distance: Annotated[float, FLOAT32] | None
    # a cascade's rows: the member that fooled the sample ("clean" when the clean input is
    # misclassified); null when none did or the row is no cascade's
    fooled_by: str | None
    queries: Annotated[int, INT32] | None  # a query-based attack's model queries for the sample
    # a certified defense: the L2 radius of the sample's certificate (0: abstained), and
    # whether the certified class is its label; null for a target without certificates
    certified_radius: Annotated[float, FLOAT32] | None
    certified_correct: bool | None
    # whether the row's certificate holds at its eps and certifies the label (null: no
    # certificate at this norm)
    certified: bool | None


ADDED_IN: dict[str, int] = {
    "defense_params": 2,  # every v1 defense was parameterless
    "direction": 3,  # v1 and v2 had no discriminator targets
    "floor_img_per_s": 3,
    "floor_fraction": 3,
    "fast_path": 4,
    "black_box": 5,
    "train_dataset": 6,
    "attack_run": 6,
    "model_source": 6,
    "weights_sha256": 6,
    "critic_threshold": 6,
    "cascade_member": 7,
    "member_given": 7,
    "member_robust_acc": 7,
    "flags": 7,
    "fooled_by": 7,
    "queries": 7,
    "margin_grad_l1": 8,
    "margin_grad_l2": 8,
    "base_weights_sha256": 9,
    "decision": 10,
    "draws": 11,
    "clean_acc_one_draw": 11,
    "robust_acc_one_draw": 11,
    "certified_acc": 11,
    "certified_fooled": 11,
    "abstain_rate": 11,
    "certify_n_forward": 11,
    "certify_s": 11,
    "certified_radius": 11,
    "certified_correct": 11,
    "node": 12,
    "model_description": 12,
    "model_paper": 12,
    "model_entry": 12,
    "runner_calls": 13,
    "distance": 14,
    "certify_method": 15,
    "certified": 15,
    "label_only": 16,
}
"""The schema version that added each column; older files get its migration value."""

MIGRATION_VALUES: dict[str, Callable[[pa.Table], pa.Array]] = {
    # up to v4 the one registered black-box attack was the one-pixel attack
    "black_box": lambda table: pc.equal(table["attack"], "onepixel"),
    # up to v15 the registered label-only attacks were HopSkipJump and the Boundary attack
    "label_only": lambda table: pc.is_in(table["attack"], pa.array(["hopskipjump", "boundary"])),
    # before v6 each row was timed as its own run
    "attack_run": lambda table: table["cell_id"],
    # before v6 every model was a zoo model
    "model_source": lambda table: pa.array(["zoo"] * table.num_rows, pa.string()),
    # before v15 every certificate was randomized smoothing's
    "certify_method": lambda table: pc.if_else(
        pc.is_valid(table["certified_acc"]), pa.scalar("smoothing"),
        pa.scalar(None, pa.string())) if "certified_acc" in table.column_names
    else pa.nulls(table.num_rows, pa.string()),
    # before v9 weights_sha256 held a user model's undefended weights file in every row
    "base_weights_sha256": lambda table: table["weights_sha256"]
    if "weights_sha256" in table.column_names else pa.nulls(table.num_rows, pa.string()),
}
"""Columns whose value an older file implies; every other added column migrates as null."""

_SCALARS: dict[Any, pa.DataType] = {
    str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_(),
    dt.datetime: pa.timestamp("us", tz="UTC"),
}


def _arrow_field(name: str, hint: Any) -> pa.Field:
    """An Arrow field from a dataclass annotation: ``X | None`` is nullable, ``Annotated[X, t]``
    stores type ``t``."""
    nullable = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        nullable, hint = True, args[0]
    if typing.get_origin(hint) is Annotated:
        arrow_type = typing.get_args(hint)[1]
    else:
        arrow_type = _SCALARS[hint]
    return pa.field(name, arrow_type, nullable=nullable)


def arrow_schema(row_cls: type, table: str) -> pa.Schema:
    """The Arrow schema of a row dataclass, tagged with the schema version and table name."""
    hints = typing.get_type_hints(row_cls, include_extras=True)
    fields = [_arrow_field(f.name, hints[f.name]) for f in dataclasses.fields(row_cls)]
    return pa.schema(fields, metadata={"advbench_schema_version": str(SCHEMA_VERSION),
                                       "advbench_table": table})


SUMMARY_SCHEMA = arrow_schema(SummaryRow, "summary")
SAMPLES_SCHEMA = arrow_schema(SampleRow, "samples")


def summary_row(values: SummaryRow | Mapping[str, Any]) -> SummaryRow:
    """A validated :class:`SummaryRow` from a row or a mapping of its fields."""
    if isinstance(values, SummaryRow):
        return values
    names = [f.name for f in dataclasses.fields(SummaryRow)]
    missing = [n for n in names if n not in values and n != "schema_version"]
    extra = sorted(set(values) - set(names))
    if missing or extra:
        raise SchemaError(f"summary row: missing {missing}, unexpected {extra}")
    return SummaryRow(**values)


def summary_table(rows: Sequence[SummaryRow | Mapping[str, Any]]) -> pa.Table:
    """Validate summary rows and build a typed Arrow table."""
    records = [dataclasses.asdict(summary_row(r)) for r in rows]
    try:
        return pa.Table.from_pylist(records, schema=SUMMARY_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise SchemaError(str(exc)) from None


def samples_table(columns: Mapping[str, Any]) -> pa.Table:
    """Build the typed per-sample table from one array per :class:`SampleRow` field."""
    missing = [f.name for f in SAMPLES_SCHEMA if f.name not in columns]
    extra = sorted(set(columns) - set(SAMPLES_SCHEMA.names))
    if missing or extra:
        raise SchemaError(f"samples table: missing columns {missing}, unexpected {extra}")
    try:
        return pa.table({f.name: columns[f.name] for f in SAMPLES_SCHEMA}, schema=SAMPLES_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise SchemaError(f"samples table: {exc}") from None


OLD_FLAGS = {"black-box": BLACK_BOX_WINS, "spans the whole input range": UNCONSTRAINED}
"""Before v10 ``flags`` held sentences; the codes they stood for, by a phrase each contains."""


def _flag_codes(table: pa.Table) -> pa.Array:
    texts = table["flags"].to_pylist()
    return pa.array([join([code for phrase, code in OLD_FLAGS.items() if phrase in text])
                     if text else None for text in texts], pa.string())


def migrate(table: pa.Table, version: int, schema: pa.Schema) -> pa.Table:
    """A table written at an older ``version`` as the current ``schema``: each column added
    since gets its :data:`MIGRATION_VALUES` entry, or nulls; ``flags`` before v10 become
    codes."""
    columns = {}
    for f in schema:
        if f.name == "schema_version":
            columns[f.name] = pa.array([SCHEMA_VERSION] * table.num_rows, f.type)
        elif f.name == "flags" and version < 10 and f.name in table.column_names:
            columns[f.name] = _flag_codes(table)
        elif f.name in table.column_names:
            columns[f.name] = table[f.name].cast(f.type)
        elif ADDED_IN.get(f.name, 0) > version:
            make = MIGRATION_VALUES.get(f.name)
            columns[f.name] = make(table).cast(f.type) if make else pa.nulls(table.num_rows,
                                                                             f.type)
        else:
            raise SchemaError(f"a version-{version} table lacks column {f.name!r}")
    return pa.table(columns, schema=schema)
