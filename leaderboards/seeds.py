"""The spread over seeds: mean and min–max of rows that differ only in their seed.

A sweep with ``seed = [0, 5, 11]`` trains (and fits each defense) once per seed, so each seed is
its own population and keeps its own row. Next to those rows, the boards and ``advbench compare``
show, per target and column, the mean over the seeds and the smallest and largest seed's value:
said as such (``mean [min–max] over seeds 0, 5, 11``), never one pooled number in place of the
seeds' rows. Rows whose other keys differ (samples, precision, defense params...) are never
summarised together.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from leaderboards.population import RECORDED, SEED_VARYING

SPREAD_CAPTION = ("Over seeds: mean [min–max] of the rows above that differ only in their seed "
                  "(each seed trains its own zoo models and fits its own defenses; a user's "
                  "own weights stay the same, so there the seed changes the defense fits and "
                  "the attacks' random draws)")
"""What every spread table says above it, in every format."""


def over_seeds(table: pd.DataFrame, keys: Sequence[str], values: Sequence[str]) -> pd.DataFrame:
    """Per group of ``table`` rows agreeing on ``keys`` (the seed and the weights left out) and
    holding at least two seeds: ``seeds`` (the seeds, ascending, as text), and for each of
    ``values`` its mean over the seeds, ``<value> min`` and ``<value> max``; the recorded
    columns (:data:`leaderboards.population.RECORDED`, such as the execution path the runner
    chose by timing) list the values the seeds' runs took. A group whose rows
    miss a value at some seed gets no figure for it (the mean would not be over the same seeds).
    Empty when no group has two seeds."""
    keys = [k for k in keys if k not in (*SEED_VARYING, *RECORDED) and k in table.columns]
    if table.empty or "seed" not in table.columns:
        return pd.DataFrame()
    out = []
    for key, group in table.groupby(keys, dropna=False, sort=False):
        seeds = sorted(int(s) for s in group["seed"].unique())
        if len(seeds) < 2:
            continue
        rec: dict[str, object] = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        rec["seeds"] = ", ".join(str(s) for s in seeds)
        for choice in RECORDED:
            if choice in group.columns:
                rec[choice] = ", ".join(sorted({str(v) for v in group[choice] if pd.notna(v)}))
        for value in values:
            column = pd.to_numeric(group[value], errors="coerce")
            complete = column.notna().all() and len(group) == len(seeds)
            rec[value] = float(column.mean()) if complete else math.nan
            rec[f"{value} min"] = float(column.min()) if complete else math.nan
            rec[f"{value} max"] = float(column.max()) if complete else math.nan
        out.append(rec)
    return pd.DataFrame(out)


def spread_text(mean: float, low: float, high: float, signed: bool = False) -> str:
    """``"79.4 [75.2–83.0]"``: a fraction's mean and range over seeds, in percent (with a sign
    on every figure when ``signed``, for differences)."""
    if any(pd.isna(v) for v in (mean, low, high)):
        return ""
    f = "+.1f" if signed else ".1f"
    return f"{100 * mean:{f}} [{100 * low:{f}}–{100 * high:{f}}]"
