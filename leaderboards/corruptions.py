"""The common-corruptions board (RobustBench's third threat model; MNIST-C, Mu & Gilmer 2019;
CIFAR-10-C, Hendrycks & Dietterich 2019): per target, its clean accuracy, the mean accuracy over
the corruptions and severities (RobustBench's number), the worst corruption and each
corruption's accuracy; for sets with several severities, a corruption × severity grid per
target.

One table per evaluation (data set, split, samples, seed): a row per target (model, defense,
its weights), every number one stored row. A target with two stored rows for one corruption
that disagree (a rerun with other weights into the same directory) is refused, never pooled;
a target missing some corruption gets no mean or worst (they would not be comparable).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from bench.core.errors import BadInput

EVALUATION = ("dataset", "split", "n_samples", "seed", "precision", "corruption_set")
TARGET = ("model", "defense", "defense_params", "weights_sha256")


def load_corruptions(results: Path, without: Path | None = None) -> pd.DataFrame:
    """Every corruption row stored under ``results/corruptions/`` (empty if none), except the
    file ``without`` (one about to be replaced); a file that does not read as Parquet is named
    in a :class:`BadInput`."""
    folder = Path(results) / "corruptions"
    files = sorted(p for p in folder.glob("*.parquet")
                   if not p.name.startswith(".") and p != without) if folder.is_dir() else []
    tables = []
    for path in files:
        try:
            tables.append(pq.read_table(path).to_pandas())
        except Exception as exc:  # noqa: BLE001  (any unreadable file is named, not raised raw)
            raise BadInput(f"{path}: not a corruption results file advbench wrote ({exc}); "
                           f"move it out of {folder}") from None
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def _levels(group: pd.DataFrame) -> pd.DataFrame:
    """A row per target, a column per (corruption, severity) in stored order: accuracy in %."""
    order = list(dict.fromkeys(zip(group["corruption"], group["severity"], strict=True)))
    wide = group.pivot_table(index=list(TARGET), columns=["corruption", "severity"],
                             values="accuracy", aggfunc="first") * 100
    return wide[pd.MultiIndex.from_tuples(order, names=["corruption", "severity"])]


def _graded(group: pd.DataFrame) -> bool:
    """Whether some corruption in ``group`` was evaluated at more than one severity (CIFAR-10-C;
    MNIST-C fixes one per corruption)."""
    return bool(group.groupby("corruption")["severity"].nunique().max() > 1)


def _title(fields: dict[str, object], group: pd.DataFrame) -> str:
    severities = sorted(set(group["severity"]))
    levels = (f"severities {severities[0]}–{severities[-1]}" if _graded(group)
              else "the benchmark's severities")
    return (f"{fields['dataset']} ({fields['split']}, {fields['n_samples']} samples, "
            f"seed {fields['seed']}), {fields['corruption_set']}: "
            f"{group['corruption'].nunique()} corruptions at {levels}")


def _checked(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with repeats of one stored number dropped; two that disagree are refused."""
    rows = rows.assign(weights_sha256=rows["weights_sha256"].fillna(""))
    keys = [*EVALUATION, *TARGET, "corruption", "severity"]
    clash = rows[rows.duplicated(keys, keep=False)]
    if not clash.groupby(keys)["accuracy"].nunique().le(1).all():
        first = clash.iloc[0]
        raise BadInput(f"two stored evaluations of {first['model']}/{first['defense']} under "
                       f"{first['corruption']} disagree; keep their results in separate "
                       f"directories (--out)")
    return rows.drop_duplicates(keys)


def boards(rows: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(title, table) per evaluation: a row per target with clean, mean over every corruption
    and severity, the worst corruption (its accuracy averaged over its severities, and which)
    and each corruption's accuracy averaged over its severities, in %, best mean first. A
    target missing a level gets no mean or worst, and no number for that corruption (they would
    not be comparable)."""
    if rows.empty:
        return []
    rows = _checked(rows)
    out = []
    for key, group in rows.groupby(list(EVALUATION), sort=True):
        fields = dict(zip(EVALUATION, key, strict=True))
        levels = _levels(group)
        whole = levels.notna().all(axis=1)
        names = list(dict.fromkeys(levels.columns.get_level_values("corruption")))
        per = pd.DataFrame({name: levels[name].mean(axis=1).where(levels[name].notna().all(
            axis=1)) for name in names})
        clean = group.groupby(list(TARGET))["clean_acc"].first() * 100
        table = pd.DataFrame({
            "clean": clean, "mean": levels.mean(axis=1).where(whole),
            "worst": per.min(axis=1).where(whole),
            "worst corruption": [row.idxmin() if complete else ""
                                 for (_, row), complete in zip(per.iterrows(), whole,
                                                               strict=True)],
        }).join(per).reset_index()
        table = table.drop(columns=["defense_params", "weights_sha256"]).sort_values(
            "mean", ascending=False, na_position="last")
        out.append((_title(fields, group), table))
    return out


def severity_grids(rows: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(title, table) per evaluation with several severities and target in it: accuracy in %,
    a row per corruption and a column per severity (the board's numbers before the average
    over severities)."""
    if rows.empty:
        return []
    rows = _checked(rows)
    out = []
    for key, group in rows.groupby([*EVALUATION, *TARGET], sort=True):
        if not _graded(group):
            continue
        fields = dict(zip([*EVALUATION, *TARGET], key, strict=True))
        grid = group.pivot_table(index="corruption", columns="severity", values="accuracy",
                                 aggfunc="first") * 100
        grid = grid.loc[list(dict.fromkeys(group["corruption"]))]
        grid.columns = [f"severity {s}" for s in grid.columns]
        out.append((f"{fields['model']}/{fields['defense']}, {_title(fields, group)}",
                    grid.reset_index()))
    return out


def to_markdown(rows: pd.DataFrame) -> str:
    """The boards, then any corruption × severity grids, as Markdown (accuracy in %)."""
    found = boards(rows)
    if not found:
        return "no corruption evaluations in these results (run: advbench corruptions CONFIG)"
    parts = [f"### {title}\n\naccuracy (%) under each corruption (the mean over its "
             f"severities where it has several); mean over every corruption and severity; "
             f"worst corruption\n\n"
             + table.to_markdown(index=False, floatfmt=".1f") for title, table in found]
    parts += [f"#### {title}\n\n" + grid.to_markdown(index=False, floatfmt=".1f")
              for title, grid in severity_grids(rows)]
    return "\n\n".join(parts)
