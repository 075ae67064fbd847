"""Leaderboard tables: pure functions of the stored rows.

One table per (dataset, target kind, threat model, norm). A row is one target (model, defense
and, for GAN discriminators, a direction: ``real->fake`` attacks real images, ``fake->real``
generator samples) measured on one *population*: the same weights, evaluated samples, seed and
precision (:data:`leaderboards.population.POPULATION`). Results that differ in any of those are
separate rows, never averaged; the keys that vary within a board are shown as columns, and the
execution paths a row's runs took (chosen by timing, never split on) are listed. The columns are clean accuracy, robust accuracy per attack and eps (an attack run with
different params gets a column per params, labelled by what differs), and the per-eps *worst
case*: a sample counts as robust only if it was classified correctly and no attack at that eps
fooled it (as AutoAttack reports), with its Wilson 95% interval (``worst@eps lo`` / ``hi``); it is
left blank when the row's cells at that eps did not evaluate the same samples. Rows are ranked by
the worst case at the largest eps. Throughput columns close each row: the median images/s of its
attack runs, their summed wall time (a run counted once, however many per-eps rows were read from
it) and the median share of the attacked model's forward+backward floor their model calls reached.
A ``flags`` column, present when a check failed, names the sanity checks a row's cells failed.
Discriminator boards show, after ``clean``, the median norm of the input gradient of the decision
margin over the evaluated images (``grad l1``, the dual of Linf, and ``grad l2``;
:mod:`bench.core.lipschitz`): the Lipschitz control next to the robustness it buys.
A cascade (``standard``) is one column; its members' rows are in ``advbench compare``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pandas.api.typing import DataFrameGroupBy

from bench.core.errors import BadInput
from leaderboards.compare import eps_flags, wilson
from leaderboards.population import POPULATION, SEED_VARYING, keyed
from leaderboards.seeds import SPREAD_CAPTION, over_seeds, spread_text

GROUP_KEYS = ["dataset", "target_kind", "threat", "norm"]
ROW_KEYS = ["model", "defense", "direction"]
POPULATION_COLUMNS = [k for k in POPULATION if k not in (*GROUP_KEYS, *ROW_KEYS)]
"""The population keys that are a board row's columns (the rest name the board or the row)."""
BOARD_ROW = [*ROW_KEYS, *POPULATION_COLUMNS]
"""What one row of a board is: a target measured on one population."""

GRAD_COLUMNS = {"margin_grad_l1": "grad l1", "margin_grad_l2": "grad l2"}
"""The summary's margin-gradient columns and their board names (discriminator boards)."""



@dataclass(frozen=True)
class Board:
    """One leaderboard table with the keys that name it."""

    dataset: str
    target_kind: str
    threat: str
    norm: str
    table: pd.DataFrame
    spread: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)
    """Rows that differ only in their seed: the mean and min–max of each accuracy column over
    the seeds (:func:`leaderboards.seeds.over_seeds`); empty when every row has one seed."""
    ranked_by: str = "clean"
    """The accuracy column the rows are ranked by (highest first)."""

    @property
    def title(self) -> str:
        return f"{self.dataset} · {self.target_kind} · {self.threat} · {self.norm}"

    @property
    def ranking(self) -> str:
        """The header line that names what the rows are ranked by."""
        return f"Ranked by {self.ranked_by}, highest first."

    @property
    def key_columns(self) -> list[str]:
        """The columns that tell rows apart: model, defense, the direction of discriminators,
        and every population key that takes more than one value among rows sharing those
        (a defended row's own weights or params are not shown for that alone)."""
        rows = [k for k in ROW_KEYS if k in self.table.columns]
        same_row = self.table.groupby(rows, dropna=False)
        return rows + [k for k in POPULATION_COLUMNS if k != "n_samples"
                       and bool((same_row[k].nunique(dropna=False) > 1).any())]

    def row_label(self, row: pd.Series) -> str:
        return " / ".join(f"{row[k]}" if k in ROW_KEYS else f"{k}={row[k]}"
                          for k in self.key_columns if str(row[k]))


def _normalised(summary: pd.DataFrame) -> pd.DataFrame:
    """Bounded-eps rows with text keys made non-null (so they group and join); a cascade's
    member rows stay out (the cascade's own row carries its result)."""
    return keyed(summary[summary["eps"].notna() & summary["cascade_member"].isna()])


def _version(params: str) -> str:
    """``-<version>`` for a cascade run in a version other than its standard one (``rapid``,
    ``rand``, ``fast``), else empty."""
    version = json.loads(params).get("version") if params else None
    return f"-{version}" if isinstance(version, str) and version != "standard" else ""


def column_labels(summary: pd.DataFrame) -> pd.Series:
    """Each row's board column: ``attack[-version][-ll][ (label-only)][ (from source)][
    (differing params)]@eps`` (``standard-rapid@0.3``, ``hopskipjump (label-only)@2``): a
    label-only attack's number is said to be one. The params are named only when one attack
    was run with more than one set on the board."""
    base = summary["attack"] + summary["attack_params"].map(_version) \
        + summary["targeted"].map({True: "-ll", False: ""}) \
        + summary["label_only"].map({True: " (label-only)", False: ""}) \
        + summary["source_model"].map(lambda s: f" (from {s})" if s else "")
    labels = base.copy()
    for _, rows in summary.groupby(base):
        variants = {p: json.loads(p) for p in rows["attack_params"].unique()}
        if len(variants) < 2:
            continue
        differing = sorted({k for v in variants.values() for k in v
                            if len({json.dumps(w.get(k)) for w in variants.values()}) > 1})
        for index, params in rows["attack_params"].items():
            shown = ", ".join(f"{k}={variants[params].get(k)}" for k in differing)
            labels[index] = f"{base[index]} ({shown})"
    return labels + "@" + summary["eps_display"]


def _check_one_cell_each(group: pd.DataFrame) -> None:
    """Refuse (naming the differing fields) two stored cells that would fill one table cell."""
    clash = group[group.duplicated([*BOARD_ROW, "column"], keep=False)]
    if clash.empty:
        return
    first = clash.groupby([*BOARD_ROW, "column"], dropna=False).head(2)
    a, b = first.iloc[0], first.iloc[1]
    ignored = {"cell_id", "run_id", "created_at", "attack_run"}
    differ = [c for c in first.columns if c not in ignored
              and not (pd.isna(a[c]) and pd.isna(b[c])) and a[c] != b[c]]
    raise BadInput(
        f"stored cells {a['cell_id'][:10]} and {b['cell_id'][:10]} would both fill "
        f"{a['model']}/{a['defense']} {a['column']} but differ in {', '.join(differ) or 'nothing'}"
        f"; keep their results in separate directories (--out)")


def worst_case(summary: pd.DataFrame, samples: pd.DataFrame) -> pd.DataFrame:
    """Per (group, row, eps): the fraction of samples no attack fooled; NaN where the row's
    cells at that eps evaluated different samples (their worst case is not one population's)."""
    keys = [*GROUP_KEYS, *BOARD_ROW, "eps", "eps_display"]
    keyed = samples.merge(summary[["cell_id", *keys]], on="cell_id")
    per_sample = keyed.groupby([*keys, "sample_idx"], dropna=False).agg(
        robust=("adv_correct", "all"), cells=("cell_id", "nunique")).reset_index()
    n_cells = keyed.groupby(keys, dropna=False)["cell_id"].nunique().rename("n_cells")
    per_sample = per_sample.merge(n_cells.reset_index(), on=keys)
    per_sample["complete"] = per_sample["cells"] == per_sample["n_cells"]
    per_eps = per_sample.groupby(keys, dropna=False).agg(
        worst_case=("robust", "mean"), complete=("complete", "all")).reset_index()
    per_eps.loc[~per_eps["complete"], "worst_case"] = np.nan
    return per_eps.drop(columns="complete")


def _throughput(group: pd.DataFrame) -> pd.DataFrame:
    """Per row: median img/s, summed wall time and summed attack model calls (forward +
    backward) per sample over distinct attack runs, median floor share, and the execution
    paths its runs took (``fast_path``, recorded, never split on). Where a row's target is
    randomised or certified, the runner's own passes per sample beside (``runner_calls``:
    judging draws, a smoothed classifier's PREDICT, CERTIFY), summed over its cells."""
    runs = group.drop_duplicates([*BOARD_ROW, "attack_run"])
    runs = runs.assign(calls=(runs["n_forward"] + runs["n_backward"]) / runs["n_samples"])
    by_row = runs.groupby(BOARD_ROW, dropna=False)
    out = pd.DataFrame({"img/s": by_row["img_per_s"].median(), "attack s": by_row["wall_s"].sum(),
                        "calls/sample": by_row["calls"].sum()})
    if (group["draws"].fillna(1) > 1).any() or group["certify_n_forward"].notna().any():
        cells = group.assign(runner=group["runner_calls"] / group["n_samples"])
        out["runner calls/sample"] = cells.groupby(BOARD_ROW, dropna=False)["runner"].sum(
            min_count=1)
    if group["floor_fraction"].notna().any():
        out["floor %"] = by_row["floor_fraction"].median()
    out["fast_path"] = by_row["fast_path"].agg(lambda v: ", ".join(sorted(set(v) - {""})))
    return out


def _gradients(group: pd.DataFrame, by_row: DataFrameGroupBy) -> pd.DataFrame:
    """Per row of a discriminator board: its clean pass's median margin-gradient norms (one
    population, one clean pass); empty for classifiers and rows that did not record them."""
    cols = list(GRAD_COLUMNS)
    if (group["target_kind"] != "discriminator").any() or group[cols].isna().all().all():
        return pd.DataFrame()
    return by_row[cols].first().rename(columns=GRAD_COLUMNS)


def _flags(group: pd.DataFrame, sanity: dict[str, list[str]]) -> pd.DataFrame:
    """Per row: its cells' sanity flags (:func:`leaderboards.compare.eps_flags`), each naming
    its column; an empty frame when no cell has one."""
    texts = group.assign(flag=[
        "; ".join(f"{col}: {f}" for f in sanity.get(cid, []))
        for cid, col in zip(group["cell_id"], group["column"])])
    flagged = texts[texts["flag"] != ""]
    if flagged.empty:
        return pd.DataFrame()
    return flagged.groupby(BOARD_ROW, dropna=False)["flag"].agg("; ".join).rename(
        "flags").to_frame()


def _with_worst_case(table: pd.DataFrame, worst: pd.DataFrame, key: Any
                     ) -> tuple[pd.DataFrame, list[str]]:
    """``table`` with the board's per-sample worst case at each eps (``worst@eps``, from
    :func:`worst_case`) and its Wilson 95% interval; and those columns, by eps."""
    if worst.empty:
        return table, []
    mask = (worst[GROUP_KEYS] == pd.Series(key, index=GROUP_KEYS)).all(axis=1)
    wide = worst[mask].sort_values("eps").pivot_table(
        index=BOARD_ROW, columns="eps_display", values="worst_case", sort=False, dropna=False)
    wide.columns = [f"worst@{c}" for c in wide.columns]
    table = table.join(wide)
    n = table.index.get_level_values("n_samples")
    for col in wide.columns:
        bounds = [wilson(round(v * n_), int(n_)) if pd.notna(v) else (None, None)
                  for v, n_ in zip(table[col], n)]
        table[f"{col} lo"] = [b[0] for b in bounds]
        table[f"{col} hi"] = [b[1] for b in bounds]
    return table, list(wide.columns)


def leaderboards(summary: pd.DataFrame, samples: pd.DataFrame,
                 rank_by: str | None = None) -> list[Board]:
    """Build every leaderboard table from summary and per-sample rows. Rows are ranked by
    ``rank_by`` (an accuracy column such as ``"standard@0.3"``, ``"worst@0.3"`` or
    ``"clean"``) on the boards that have it, else by the worst case at the largest eps (clean
    accuracy where no worst case exists); :class:`BadInput` when no board has ``rank_by``."""
    if summary.empty:
        return []
    summary = _normalised(summary)
    if summary.empty:
        return []
    summary["column"] = column_labels(summary)
    worst = worst_case(summary, samples) if not samples.empty else pd.DataFrame()
    sanity = eps_flags(summary)
    boards = []
    for key, group in summary.groupby(GROUP_KEYS, sort=True):
        _check_one_cell_each(group)
        by_row = group.groupby(BOARD_ROW, dropna=False)
        clean = by_row["clean_acc"].first().rename("clean")
        robust = group.pivot_table(index=BOARD_ROW, columns="column", values="robust_acc",
                                   aggfunc="first", dropna=False)
        order = (group.sort_values(["eps", "attack", "column"])
                 .drop_duplicates("column")["column"].tolist())
        # pivot_table(dropna=False) crosses the index levels: keep the rows that exist
        grads = _gradients(group, by_row)
        table = pd.concat([clean, *([grads] if not grads.empty else []),
                           robust[order].reindex(clean.index),
                           *_beside(group, order, clean.index)], axis=1)
        table, worst_cols = _with_worst_case(table, worst, key)
        rank_col = worst_cols[-1] if worst_cols else "clean"
        table = table.join(_throughput(group))
        flags = _flags(group, sanity)
        if not flags.empty:
            table = table.join(flags)
        if rank_by is not None and rank_by in table.columns:
            rank_col = rank_by
        table = table.sort_values([rank_col, "clean"], ascending=False).reset_index()
        table = table.rename(columns={"n_samples": "n"})
        if not table["direction"].astype(bool).any():
            table = table.drop(columns="direction")  # classifiers have no direction
        dataset, target_kind, threat, norm = (str(k) for k in key)
        boards.append(Board(dataset, target_kind, threat, norm, table,
                            _seed_spread(table, rank_col), rank_col))
    if rank_by is not None and not any(b.ranked_by == rank_by for b in boards):
        columns = sorted({c for b in boards for c in accuracy_columns(b.table)})
        raise BadInput(f"no leaderboard has the column {rank_by!r} to rank by; columns: "
                       f"{', '.join(columns)}")
    return boards


BESIDE = {"certified_acc": " certified", "robust_acc_one_draw": " one draw"}
"""Numbers a board shows beside a cell's robust accuracy, and the suffix of their columns: a
certificate's certified accuracy at the cell's eps, in a column of its own named with its
method (``pgd@0.1 certified (crown-ibp)``): a deterministic network's bound (IBP, CROWN) is a
lower bound of the attacked number; randomized smoothing's CERTIFY (Cohen et al. 2019) bounds
the smoothed classifier while the attacked accuracy is PREDICT's, which may abstain, right on
every judged draw, so neither bounds the other there; and a randomised target's first-draw
robust accuracy (beside the number, in brackets)."""


def _beside(group: pd.DataFrame, order: list[str], index: pd.Index) -> list[pd.DataFrame]:
    """The hidden columns of :data:`BESIDE` for the cells that have them (certified accuracy
    once per certify method)."""
    frames = []
    for value, suffix in BESIDE.items():
        if value not in group.columns or group[value].isna().all():
            continue
        parts = [(suffix, group)]
        if value == "certified_acc" and "certify_method" in group.columns:
            parts = [(f"{suffix} ({method})", part) for method, part in
                     group.dropna(subset=[value]).groupby("certify_method", sort=True)]
        for name, part in parts:
            wide = part.pivot_table(index=BOARD_ROW, columns="column", values=value,
                                    aggfunc="first", dropna=False)
            kept = [c for c in order if c in wide.columns]
            frames.append(wide[kept].reindex(index).rename(
                columns=lambda c, name=name: f"{c}{name}"))
    return frames


def _is_beside(col: str) -> bool:
    return col.endswith(" one draw") or " certified" in col


def accuracy_columns(table: pd.DataFrame) -> list[str]:
    """A board table's accuracy columns: clean, each attack@eps and each worst case."""
    rest = {*BOARD_ROW, *GRAD_COLUMNS.values(), "n", "img/s", "attack s", "floor %", "flags",
            "fast_path", "calls/sample", "runner calls/sample"}
    return [c for c in table.columns if c not in rest
            and not c.endswith((" lo", " hi")) and not _is_beside(c)]


def _seed_spread(table: pd.DataFrame, rank_col: str) -> pd.DataFrame:
    """The board's rows that differ only in their seed, summarised over the seeds."""
    keys = [k if k != "n_samples" else "n" for k in BOARD_ROW if k not in SEED_VARYING]
    spread = over_seeds(table, [k for k in keys if k in table.columns],
                        accuracy_columns(table))
    if spread.empty:
        return spread
    return spread.sort_values([rank_col, "clean"], ascending=False).reset_index(drop=True)


def display_table(board: Board) -> pd.DataFrame:
    """The board as strings for people: accuracies in percent with one decimal, each worst
    case with its interval ("69.2 [66.3, 72.0]"), throughput rounded; of the population keys,
    only those that vary on the board."""
    table = board.table
    shown = pd.DataFrame(index=table.index)
    pct = lambda v: "" if pd.isna(v) else f"{100 * v:.1f}"  # noqa: E731
    keys = board.key_columns
    for col in table.columns:
        if col.endswith((" lo", " hi")) or _is_beside(col) or (
                col in POPULATION_COLUMNS and col not in keys):
            continue
        if col == "fast_path" and table[col].nunique() < 2:
            continue  # recorded in every row; shown where the board's rows took different paths
        if col == "weights_sha256" and col in keys:
            shown[col] = table[col].astype(str).str[:12]  # enough to tell weights apart
        elif col in (*keys, "n", "fast_path"):
            shown[col] = table[col].astype(str)
        elif col == "img/s":
            shown[col] = table[col].map(lambda v: "" if pd.isna(v) else f"{v:,.0f}")
        elif col == "floor %":
            shown[col] = table[col].map(lambda v: "" if pd.isna(v) else f"{100 * v:.0f}")
        elif col == "flags":
            shown[col] = table[col].fillna("")
        elif col in GRAD_COLUMNS.values():
            shown[col] = table[col].map(lambda v: "" if pd.isna(v) else f"{v:.3g}")
        elif col == "attack s":
            shown[col] = table[col].map(lambda v: "" if pd.isna(v) else f"{v:.1f}")
        elif col in ("calls/sample", "runner calls/sample"):
            shown[col] = table[col].map(lambda v: "" if pd.isna(v) else f"{v:,.0f}")
        elif f"{col} lo" in table.columns:
            shown[col] = [f"{pct(v)} [{pct(lo)}, {pct(hi)}]" if pd.notna(v) else ""
                          for v, lo, hi in zip(table[col], table[f"{col} lo"],
                                               table[f"{col} hi"])]
        else:
            shown[col] = [_with_beside(table, col, i, pct) for i in table.index]
            for certified in [c for c in table.columns if c.startswith(f"{col} certified")]:
                if table[certified].notna().any():
                    shown[certified] = table[certified].map(pct)
    return shown


def _with_beside(table: pd.DataFrame, col: str, i: Any, pct: Callable[[Any], str]) -> str:
    """A robust accuracy as shown, with the first draw's accuracy beside it for a randomised
    target."""
    text = pct(table.at[i, col])
    one = table.at[i, f"{col} one draw"] if f"{col} one draw" in table.columns else None
    if text and one is not None and pd.notna(one):
        text = f"{text} (one draw {pct(one)})"
    return text


def display_spread(board: Board) -> pd.DataFrame:
    """The spread over seeds for people: the key columns that vary (the seed and weights
    aside), the seeds, then each accuracy as ``mean [min–max]`` in percent."""
    spread = board.spread
    shown = pd.DataFrame(index=spread.index)
    for key in board.key_columns:
        if key not in SEED_VARYING and key in spread.columns:
            shown[key] = spread[key].astype(str)
    shown["n"] = spread["n"].astype(str)
    shown["seeds"] = spread["seeds"]
    if "fast_path" in spread.columns and spread["fast_path"].str.contains(",").any():
        shown["fast_path"] = spread["fast_path"]  # the seeds' runs took different paths
    for col in accuracy_columns(board.table):
        shown[col] = [spread_text(m, lo, hi) for m, lo, hi in
                      zip(spread[col], spread[f"{col} min"], spread[f"{col} max"])]
    return shown


def to_markdown(board: Board) -> str:
    """A Markdown table (see :func:`display_table`), and under it the spread over seeds when
    the board holds rows that differ only in their seed."""
    text = (f"### {board.title}\n\n{board.ranking}\n\n"
            + display_table(board).to_markdown(index=False, disable_numparse=True) + "\n")
    if not board.spread.empty:
        text += (f"\n{SPREAD_CAPTION}\n\n"
                 + display_spread(board).to_markdown(index=False, disable_numparse=True) + "\n")
    return text


def to_csv(board: Board) -> str:
    """CSV with the board's keys as leading columns and raw fractions; the spread over seeds
    follows as rows whose ``statistic`` is ``mean``, ``min`` or ``max`` (``seed`` lists the
    seeds)."""
    out = board.table.copy()
    if not board.spread.empty:
        out.insert(0, "statistic", "")
        values = accuracy_columns(board.table)
        for stat, suffix in (("mean", ""), ("min", " min"), ("max", " max")):
            rows = board.spread[[c for c in board.spread.columns
                                 if c not in values and not c.endswith((" min", " max"))]].copy()
            rows = rows.rename(columns={"seeds": "seed"})
            for col in values:
                rows[col] = board.spread[f"{col}{suffix}"]
            rows.insert(0, "statistic", stat)
            out = pd.concat([out, rows], ignore_index=True)
    for i, name in enumerate(GROUP_KEYS):
        out.insert(i, name, getattr(board, name))
    return out.to_csv(index=False)
