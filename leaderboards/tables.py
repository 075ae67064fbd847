"""Leaderboard tables: pure functions of the stored rows.

One table per (dataset, target kind, threat model, norm). A row is a (model, defense) pair (and,
for GAN discriminators, a direction: ``real->fake`` attacks real images, ``fake->real`` generator
samples, so the discriminator section sets DCGAN beside SN-DCGAN per direction); the columns are
clean accuracy, robust accuracy per attack and eps, and the per-eps *worst case*: a sample counts
as robust only if it was classified correctly and no attack at that eps fooled it (as AutoAttack
reports), with its Wilson 95% interval (``worst@eps lo`` / ``hi``). Rows are ranked by the
worst case at the largest eps. Throughput columns close each row: the median images/s of its
attack cells, their summed attack wall time, and the median share of the attacked model's
forward+backward floor their model calls reached.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from leaderboards.compare import wilson

GROUP_KEYS = ["dataset", "target_kind", "threat", "norm"]
ROW_KEYS = ["model", "defense", "direction"]


@dataclass(frozen=True)
class Board:
    """One leaderboard table with the keys that name it."""

    dataset: str
    target_kind: str
    threat: str
    norm: str
    table: pd.DataFrame

    @property
    def title(self) -> str:
        return f"{self.dataset} · {self.target_kind} · {self.threat} · {self.norm}"


def worst_case(summary: pd.DataFrame, samples: pd.DataFrame) -> pd.DataFrame:
    """Per (group, row, eps): the fraction of samples no attack fooled."""
    keyed = samples.merge(
        summary[["cell_id", *GROUP_KEYS, *ROW_KEYS, "seed", "eps", "eps_display", "split"]],
        on="cell_id",
    )
    keys = [*GROUP_KEYS, *ROW_KEYS, "split", "seed", "eps", "eps_display"]
    per_sample = keyed.groupby([*keys, "sample_idx"], dropna=False)["adv_correct"].all()
    per_eps = per_sample.groupby(level=keys, dropna=False).mean().rename("worst_case")
    return per_eps.reset_index()


def leaderboards(summary: pd.DataFrame, samples: pd.DataFrame) -> list[Board]:
    """Build every leaderboard table from summary and per-sample rows."""
    if summary.empty:
        return []
    summary = summary[summary["eps"].notna()].copy()
    summary["direction"] = summary["direction"].fillna("")
    summary["column"] = summary["attack"] + summary["targeted"].map({True: "-ll", False: ""}) \
        + "@" + summary["eps_display"]
    worst = worst_case(summary, samples) if not samples.empty else pd.DataFrame()
    boards = []
    for key, group in summary.groupby(GROUP_KEYS, sort=True):
        clean = group.groupby(ROW_KEYS)["clean_acc"].mean().rename("clean")
        n = group.groupby(ROW_KEYS)["n_samples"].max().rename("n")
        robust = group.pivot_table(index=ROW_KEYS, columns="column", values="robust_acc",
                                   aggfunc="mean")
        order = (group.sort_values(["eps", "attack"]).drop_duplicates("column")["column"].tolist())
        robust = robust[order]
        table = pd.concat([n, clean, robust], axis=1)
        if not worst.empty:
            mask = (worst[GROUP_KEYS] == pd.Series(key, index=GROUP_KEYS)).all(axis=1)
            w = worst[mask].groupby([*ROW_KEYS, "eps", "eps_display"])["worst_case"].mean()
            w = w.reset_index().sort_values("eps")
            wide = w.pivot_table(index=ROW_KEYS, columns="eps_display", values="worst_case",
                                 sort=False)
            wide.columns = [f"worst@{c}" for c in wide.columns]
            table = table.join(wide)
            for col in wide.columns:
                bounds = [wilson(round(w * n_), int(n_)) if pd.notna(w) else (None, None)
                          for w, n_ in zip(table[col], table["n"])]
                table[f"{col} lo"] = [b[0] for b in bounds]
                table[f"{col} hi"] = [b[1] for b in bounds]
            rank_col = wide.columns[-1] if len(wide.columns) else "clean"
        else:
            rank_col = "clean"
        table["img/s"] = group.groupby(ROW_KEYS)["img_per_s"].median()
        table["attack s"] = group.groupby(ROW_KEYS)["wall_s"].sum()
        if group["floor_fraction"].notna().any():
            table["floor %"] = group.groupby(ROW_KEYS)["floor_fraction"].median()
        table = table.sort_values([rank_col, "clean"], ascending=False).reset_index()
        if not table["direction"].astype(bool).any():
            table = table.drop(columns="direction")  # classifiers have no direction
        dataset, target_kind, threat, norm = (str(k) for k in key)
        boards.append(Board(dataset, target_kind, threat, norm, table))
    return boards


def display_table(board: Board) -> pd.DataFrame:
    """The board as strings for people: accuracies in percent with one decimal, each worst
    case with its interval ("69.2 [66.3, 72.0]"), throughput rounded."""
    table = board.table
    shown = pd.DataFrame(index=table.index)
    pct = lambda v: "" if pd.isna(v) else f"{100 * v:.1f}"  # noqa: E731
    for col in table.columns:
        if col.endswith((" lo", " hi")):
            continue
        if col in (*ROW_KEYS, "n"):
            shown[col] = table[col].astype(str)
        elif col == "img/s":
            shown[col] = table[col].map(lambda v: "" if pd.isna(v) else f"{v:,.0f}")
        elif col == "floor %":
            shown[col] = table[col].map(lambda v: "" if pd.isna(v) else f"{100 * v:.0f}")
        elif col == "attack s":
            shown[col] = table[col].map(lambda v: "" if pd.isna(v) else f"{v:.1f}")
        elif f"{col} lo" in table.columns:
            shown[col] = [f"{pct(v)} [{pct(lo)}, {pct(hi)}]" if pd.notna(v) else ""
                          for v, lo, hi in zip(table[col], table[f"{col} lo"],
                                               table[f"{col} hi"])]
        else:
            shown[col] = table[col].map(pct)
    return shown


def to_markdown(board: Board) -> str:
    """A Markdown table (see :func:`display_table`)."""
    return (f"### {board.title}\n\n"
            + display_table(board).to_markdown(index=False, disable_numparse=True) + "\n")


def to_csv(board: Board) -> str:
    """CSV with the board's keys as leading columns and raw fractions."""
    out = board.table.copy()
    for i, name in enumerate(GROUP_KEYS):
        out.insert(i, name, getattr(board, name))
    return out.to_csv(index=False)
