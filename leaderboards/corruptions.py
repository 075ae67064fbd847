"""The common-corruptions board (RobustBench's third threat model; MNIST-C, Mu & Gilmer 2019):
per target, its clean accuracy, the mean accuracy over the corruptions (RobustBench's number),
the worst corruption and each corruption's accuracy.

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


def load_corruptions(results: Path) -> pd.DataFrame:
    """Every corruption row stored under ``results/corruptions/`` (empty if none); a file that
    does not read as Parquet is named in a :class:`BadInput`."""
    folder = Path(results) / "corruptions"
    files = sorted(p for p in folder.glob("*.parquet") if not p.name.startswith(".")) \
        if folder.is_dir() else []
    tables = []
    for path in files:
        try:
            tables.append(pq.read_table(path).to_pandas())
        except Exception as exc:  # noqa: BLE001  (any unreadable file is named, not raised raw)
            raise BadInput(f"{path}: not a corruption results file advbench wrote ({exc}); "
                           f"move it out of {folder}") from None
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def boards(rows: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(title, table) per evaluation: a row per target with clean, mean, worst (and which
    corruption) and each corruption's accuracy in %, best mean first."""
    if rows.empty:
        return []
    rows = rows.assign(weights_sha256=rows["weights_sha256"].fillna(""))
    keys = [*EVALUATION, *TARGET, "corruption"]
    clash = rows[rows.duplicated(keys, keep=False)]
    if not clash.groupby(keys)["accuracy"].nunique().le(1).all():
        first = clash.iloc[0]
        raise BadInput(f"two stored evaluations of {first['model']}/{first['defense']} under "
                       f"{first['corruption']} disagree; keep their results in separate "
                       f"directories (--out)")
    rows = rows.drop_duplicates(keys)
    order = list(dict.fromkeys(rows["corruption"]))
    out = []
    for key, group in rows.groupby(list(EVALUATION), sort=True):
        fields = dict(zip(EVALUATION, key, strict=True))
        wide = group.pivot_table(index=list(TARGET), columns="corruption", values="accuracy",
                                 aggfunc="first")[[c for c in order
                                                   if c in set(group["corruption"])]] * 100
        clean = group.groupby(list(TARGET))["clean_acc"].first() * 100
        whole = wide.notna().all(axis=1)
        table = pd.DataFrame({
            "clean": clean, "mean": wide.mean(axis=1).where(whole),
            "worst": wide.min(axis=1).where(whole),
            "worst corruption": wide.idxmin(axis=1).where(whole, ""),
        }).join(wide).reset_index()
        table = table.drop(columns=["defense_params", "weights_sha256"]).sort_values(
            "mean", ascending=False, na_position="last")
        title = (f"{fields['dataset']} ({fields['split']}, {fields['n_samples']} samples, "
                 f"seed {fields['seed']}), {fields['corruption_set']}")
        out.append((title, table))
    return out


def to_markdown(rows: pd.DataFrame) -> str:
    """The boards as Markdown (accuracy in %)."""
    found = boards(rows)
    if not found:
        return "no corruption evaluations in these results (run: advbench corruptions CONFIG)"
    return "\n\n".join(f"### {title}\n\naccuracy (%) under each corruption; mean and worst "
                       f"over them\n\n" + table.to_markdown(index=False, floatfmt=".1f")
                       for title, table in found)
