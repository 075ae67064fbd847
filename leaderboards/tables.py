"""Leaderboard tables: pure functions of the stored rows.

One table per (dataset, target kind, threat model, norm). A row is a (model, defense) pair (and,
for GAN discriminators, a direction: ``real->fake`` attacks real images, ``fake->real`` generator
samples, so the discriminator section sets DCGAN beside SN-DCGAN per direction); the columns are
clean accuracy, robust accuracy per attack and eps, and the per-eps *worst case*: a sample counts
as robust only if it was classified correctly and no attack at that eps fooled it (as AutoAttack
reports). Rows are ranked by the worst case at the largest eps.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

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
            rank_col = wide.columns[-1] if len(wide.columns) else "clean"
        else:
            rank_col = "clean"
        table = table.sort_values([rank_col, "clean"], ascending=False).reset_index()
        if not table["direction"].astype(bool).any():
            table = table.drop(columns="direction")  # classifiers have no direction
        boards.append(Board(*key, table=table))
    return boards


def to_markdown(board: Board) -> str:
    """A Markdown table, accuracies in percent with one decimal."""
    shown = board.table.copy()
    for col in shown.columns:
        if col not in (*ROW_KEYS, "n"):
            shown[col] = (shown[col] * 100).map(lambda v: "" if pd.isna(v) else f"{v:.1f}")
    return f"### {board.title}\n\n" + shown.to_markdown(index=False, disable_numparse=True) + "\n"


def to_csv(board: Board) -> str:
    """CSV with the board's keys as leading columns and raw fractions."""
    out = board.table.copy()
    for i, name in enumerate(GROUP_KEYS):
        out.insert(i, name, getattr(board, name))
    return out.to_csv(index=False)
