"""The transfer matrix: the robust accuracy of each target under adversarials crafted on each
source model (Papernot et al. 2016; Liu et al., ICLR 2017; Dong et al., CVPR 2018), beside the
white-box attack on the target itself.

One matrix per evaluation (data set, split, samples, seed, precision) and attack (name, params,
norm, eps): a row per source (``white-box``: crafted on the target itself; ``undefended``:
crafted on a defended target's undefended model; else the ``source`` model or ensemble ``a+b``),
a column per target (model, its defense, a discriminator's direction), and the targets' clean
accuracy on top. Every number is one stored cell: two cells that would fill one place are
refused, never averaged.
"""

from __future__ import annotations

import pandas as pd

from bench.core.errors import BadInput
from leaderboards.population import keyed, present

EVALUATION = ("dataset", "train_dataset", "split", "n_samples", "seed", "precision")
"""What must agree for two targets' numbers to sit in one matrix: the same evaluated samples."""

ATTACK = ("attack", "attack_params", "targeted", "norm", "eps", "eps_display")
"""One matrix's attack and budget."""

WHITE_BOX, UNDEFENDED = "white-box", "undefended"


def _source(row: pd.Series) -> str:
    if row["source_model"]:
        return str(row["source_model"])
    return WHITE_BOX if row["threat"] == "adaptive" else UNDEFENDED


def _target(row: pd.Series) -> str:
    label = str(row["model"]) if row["defense"] == "none" else f"{row['model']}/{row['defense']}"
    return f"{label} {row['direction']}" if row["direction"] else label


def transfer_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per (evaluation, attack, source, target) of the attacks that some row ran from a
    ``source`` model, with ``robust_acc`` and ``clean_acc``; empty without transfer sources."""
    rows = keyed(summary)
    rows = rows[rows["cascade_member"] == ""]
    keys = [*present(EVALUATION, rows), *ATTACK]
    sourced = rows.loc[rows["source_model"] != "", keys].drop_duplicates()
    if sourced.empty:
        return pd.DataFrame()
    rows = rows.merge(sourced, on=keys)
    rows["source"] = rows.apply(_source, axis=1)
    rows["target"] = rows.apply(_target, axis=1)
    clash = rows[rows.duplicated([*keys, "source", "target"], keep=False)]
    if not clash.empty:
        a, b = clash.iloc[0], clash.iloc[1]
        raise BadInput(f"stored cells {a['cell_id'][:10]} and {b['cell_id'][:10]} would both "
                       f"fill the transfer matrix at {a['source']} -> {a['target']} "
                       f"({a['attack']}@{a['eps_display']}); keep their results in separate "
                       f"directories (--out)")
    return rows[[*keys, "source", "target", "robust_acc", "clean_acc", "cell_id"]]


def matrices(rows: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Each matrix as (title, table of robust accuracy in %: sources down, targets across,
    the targets' clean accuracy first), white-box first, then the sources by name."""
    if rows.empty:
        return []
    keys = [k for k in (*EVALUATION, *ATTACK) if k in rows.columns]
    out = []
    for key, group in rows.groupby(keys, dropna=False, sort=True):
        fields = dict(zip(keys, key, strict=True))
        title = (f"{fields['attack']} {fields['norm']}@{fields['eps_display']} on "
                 f"{fields['dataset']} ({fields['n_samples']} samples, seed {fields['seed']})")
        table = group.pivot(index="source", columns="target", values="robust_acc") * 100
        clean = group.groupby("target")["clean_acc"].first() * 100
        order = sorted(table.index, key=lambda s: (s != WHITE_BOX, s != UNDEFENDED, s))
        table = pd.concat([clean.to_frame("clean").T, table.loc[order]])
        table.index.name = "source \\ target"
        out.append((title, table))
    return out


def to_markdown(rows: pd.DataFrame) -> str:
    """The matrices as Markdown (robust accuracy, %: lower means the source transfers
    better)."""
    found = matrices(rows)
    if not found:
        return "no transfer attacks (an [[attacks]] entry with a 'source') in these results"
    return "\n\n".join(f"### {title}\n\nrobust accuracy (%) of each target (across) under "
                       f"adversarials crafted on each source (down)\n\n"
                       + table.to_markdown(floatfmt=".1f") for title, table in found)
