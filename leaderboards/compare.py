"""The defense comparison: every defense against the undefended baseline, per attack and eps.

For each (dataset, model, attack, params, norm, eps, seed) a row per defense and threat with
clean and robust accuracy (Wilson 95% interval), the difference to the undefended model (``none``)
under the same attack with a paired 95% interval over the same samples, and flags that point at
gradient masking (Athalye, Carlini, Wagner, "Obfuscated Gradients Give a False Sense of
Security", ICML 2018; Carlini et al., "On Evaluating Adversarial Robustness", 2019):

- ``transfer-wins (a% > t%)``: the defense is *more* robust to white-box attacks through it
  than to the same attack crafted on the undefended model;
- ``black-box-wins (N inside <norm> <eps>)`` (on a black-box row): a black-box attack
  (transfer, or a gradient-free one such as one-pixel) fooled samples whose perturbation lies
  inside a white-box ball that all white-box attacks at that norm and eps failed to break.
  Decided per sample from the stored perturbation norms, so a one-pixel (l0) adversarial counts
  against an linf ball when its pixel change is within eps.

and the failure indicators a run stored in its row (:mod:`bench.core.indicators`), with
``eps-rises`` (robust accuracy that rises as eps grows on one curve, :func:`eps_flags`) and a
discriminator's ``near-chance`` (:func:`chance_flags`). A cascade member's row is compared as
``standard/<member>``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from bench.core import indicators
from bench.core.norms import eps_limit
from leaderboards.population import ATTACK, CURVE, PAIRING, POPULATION, SPREAD, keyed, present
from leaderboards.security import median_interval
from leaderboards.seeds import SPREAD_CAPTION, over_seeds, spread_text

Z95 = 1.959963984540054
COMPARED = (*POPULATION, "base_weights_sha256", "threat", *ATTACK)
"""The keys every comparison row carries: its population, its threat and its attack."""

LEADING = ("dataset", "model", "direction", "seed", "attack", "norm", "eps", "eps_display",
           "defense", "threat", "source_model")
"""The comparison's first columns, what a reader scans by; the other keys follow."""


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default)."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def paired_difference(a: np.ndarray, b: np.ndarray, z: float = Z95) -> tuple[float, float, float]:
    """Mean of ``a - b`` over paired 0/1 outcomes and its normal-approximation interval."""
    d = a.astype(float) - b.astype(float)
    n = len(d)
    if n == 0:
        return (math.nan, math.nan, math.nan)
    mean = float(d.mean())
    half = z * float(d.std(ddof=1)) / math.sqrt(n) if n > 1 else math.inf
    return (mean, mean - half, mean + half)


def _is_black_box(row: pd.Series) -> bool:
    """Crafted without the evaluated model's gradients: a transfer attack or a black-box one."""
    return row["threat"] == "transfer" or bool(row["black_box"])


def _inside(samples: pd.DataFrame, own_norm: str, norm: str, eps: float) -> pd.Series:
    """Which perturbations of a cell (attacked in ``own_norm``) lie inside a ``norm`` ball of
    radius ``eps``. Samples store their L2, Linf and L0 sizes, and their size in the cell's
    own norm (``distance``); a size stored in neither (an L1 ball beside an L2 attack) is
    unknown, and no sample counts as inside."""
    if norm in samples.columns:
        size = samples[norm]
    elif norm == own_norm:
        size = samples["distance"]
    else:
        return pd.Series(False, index=samples.index)
    return size.fillna(math.inf) <= eps_limit(norm, eps)


def with_member_names(summary: pd.DataFrame) -> pd.DataFrame:
    """A cascade member's row named ``<cascade>/<member>`` in ``attack``."""
    out = summary.copy()
    if "cascade_member" in out.columns:
        member = out["cascade_member"].fillna("")
        out["attack"] = out["attack"] + member.map(lambda m: f"/{m}" if m else "")
    return out


def eps_flags(summary: pd.DataFrame) -> dict[str, list[str]]:
    """Per cell_id: the failure indicators' codes (:mod:`bench.core.indicators`) its run stored
    in the row, ``eps-rises`` where its robust accuracy is above that of a smaller eps on the
    same curve (:data:`leaderboards.population.CURVE`), and ``near-chance`` where its target's
    clean accuracy is (:func:`chance_flags`)."""
    flags: dict[str, list[str]] = {cid: [] for cid in summary["cell_id"]}
    for cid, stored in zip(summary["cell_id"], summary.get("flags", pd.Series(dtype=object))):
        flags[cid] += indicators.split(stored)
    rows = keyed(summary[summary["eps"].notna()])
    for _, curve in rows.groupby(present(CURVE, rows), dropna=False):
        curve = curve.sort_values("eps")
        lowest = math.inf
        for _, r in curve.iterrows():
            if r["robust_acc"] > lowest + 1e-12:
                flags[r["cell_id"]].append(indicators.EPS_RISES)
            lowest = min(lowest, r["robust_acc"])
    for cid in chance_flags(summary):
        flags[cid].append(indicators.NEAR_CHANCE)
    return {cid: indicators.split(indicators.join(codes)) for cid, codes in flags.items()}


def chance_flags(summary: pd.DataFrame) -> list[str]:
    """The cell_ids of discriminator rows whose balanced clean accuracy (the mean of its two
    directions', each of which holds one class only, over the rows of one population that
    differ only in direction) is near chance (:func:`bench.core.indicators.near_chance`). A
    classifier's row carries the code from its own run."""
    rows = keyed(summary[summary["target_kind"] == "discriminator"])
    out: list[str] = []
    if rows.empty:
        return out
    by = [k for k in present(POPULATION, rows) if k != "direction"]
    for _, g in rows.groupby(by, dropna=False):
        per_direction = g.groupby("direction", dropna=False)["clean_acc"].first()
        if len(per_direction) == 2 and indicators.near_chance(float(per_direction.mean()), 2):
            out += list(g["cell_id"])
    return out


def compare(summary: pd.DataFrame, samples: pd.DataFrame) -> pd.DataFrame:
    """One row per defended cell (and the baseline rows), with intervals, deltas, model calls per
    sample (forward + backward per evaluated image) and flags; a
    defended row's Δ is against the baseline that agrees on
    :data:`leaderboards.population.PAIRING`."""
    rows = keyed(with_member_names(summary[summary["eps"].notna()]))
    if rows.empty:
        return pd.DataFrame()
    per_cell = {cid: g.set_index("sample_idx").sort_index()
                for cid, g in samples.groupby("cell_id")} if not samples.empty else {}
    pairing = present(PAIRING, rows)
    baseline = rows[rows["defense"] == "none"].set_index(pairing)
    out = []
    for _, r in rows.iterrows():
        n = int(r["n_samples"])
        robust_n = round(r["robust_acc"] * n)
        lo, hi = wilson(robust_n, n)
        rec = {k: r[k] for k in present(COMPARED, rows)}
        rec.update(fast_path=r.get("fast_path", ""), n=n, clean=r["clean_acc"],
                   robust=r["robust_acc"], robust_lo=lo, robust_hi=hi, delta=math.nan,
                   delta_lo=math.nan, delta_hi=math.nan,
                   calls_per_sample=(r["n_forward"] + r["n_backward"]) / n if n else math.nan,
                   flags="", **_median_distance(per_cell.get(r["cell_id"])))
        key = tuple(r[k] for k in pairing)
        if r["defense"] != "none" and key in baseline.index:
            base = baseline.loc[[key]].iloc[0]
            rec["delta"] = r["robust_acc"] - base["robust_acc"]
            mine, theirs = per_cell.get(r["cell_id"]), per_cell.get(base["cell_id"])
            if mine is not None and theirs is not None:
                common = mine.index.intersection(theirs.index)
                _, rec["delta_lo"], rec["delta_hi"] = paired_difference(
                    mine.loc[common, "adv_correct"].to_numpy(),
                    theirs.loc[common, "adv_correct"].to_numpy())
        rec["_cell_id"] = r["cell_id"]
        rec["_black_box"] = _is_black_box(r)
        out.append(rec)
    table = pd.DataFrame(out)
    _flag_masking(table, rows, per_cell, eps_flags(rows))
    table = table.drop(columns=["_cell_id", "_black_box"])
    lead = [c for c in LEADING if c in table.columns]
    table = table[lead + [c for c in table.columns if c not in lead]]
    return table.sort_values(["dataset", "model", "direction", "seed", "attack", "norm", "eps",
                              "defense",
                              "threat"]).reset_index(drop=True)


def _median_distance(samples: pd.DataFrame | None) -> dict[str, float]:
    """The median distance of a cell's clean-correct samples (inf where the attack fooled
    fewer than half) and its 95 % interval (:func:`leaderboards.security.median_interval`);
    NaN without per-sample distances."""
    keys = ("median_distance", "median_lo", "median_hi")
    if samples is None or "distance" not in samples.columns:
        return dict.fromkeys(keys, math.nan)
    correct = samples[samples["clean_correct"].astype(bool)]
    d = correct["distance"].astype(float).fillna(math.inf).to_numpy()
    return dict(zip(keys, median_interval(d), strict=True))


def _flag_masking(table: pd.DataFrame, rows: pd.DataFrame,
                  per_cell: dict[str, pd.DataFrame], sanity: dict[str, list[str]]) -> None:
    flags: dict[int, list[str]] = {i: list(sanity.get(cid, []))
                                   for i, cid in zip(table.index, table["_cell_id"])}
    by_cell = {cid: i for i, cid in zip(table.index, table["_cell_id"])}
    # 1. adaptive robust accuracy above transfer robust accuracy: one defended population,
    #    the same attack and eps (a transfer from another model counts too)
    defended = table[table["defense"] != "none"]
    same = [k for k in (*POPULATION, *ATTACK) if k != "source_model" and k in table.columns]
    for _, g in defended.groupby(same, dropna=False):
        adaptive = g[g["threat"] == "adaptive"]
        transfer = g[g["threat"] == "transfer"]
        for i, a in adaptive.iterrows():
            for _, t in transfer.iterrows():
                if a["robust"] > t["robust"]:
                    flags[i].append(f"{indicators.TRANSFER_WINS} ({a['robust']:.1%} > "
                                    f"{t['robust']:.1%})")
    # 2. per sample: a black-box attack fooled samples inside a white-box ball (norm, eps) that
    #    every white-box attack at that norm and eps missed. The flag goes on the black-box row.
    for _, g in rows.groupby(present(POPULATION, rows), dropna=False):
        cells = [(cid, table.loc[by_cell[cid]]) for cid in g["cell_id"]
                 if cid in by_cell and cid in per_cell]
        balls: dict[tuple[str, float, str], pd.Series] = {}
        for cid, t in cells:
            if not t["_black_box"]:
                s = per_cell[cid]
                ball = (str(t["norm"]), float(t["eps"]), str(t["eps_display"]))
                robust = s["clean_correct"] & s["adv_correct"]
                balls[ball] = balls[ball] & robust if ball in balls else robust
        for cid, b in cells:
            if not b["_black_box"]:
                continue
            bs = per_cell[cid]
            fooled = bs["clean_correct"] & ~bs["adv_correct"]
            for (norm, eps, shown), missed in sorted(balls.items()):
                common = missed.index.intersection(bs.index)
                found = fooled.loc[common] & missed.loc[common] & _inside(
                    bs.loc[common], str(b["norm"]), norm, eps)
                if int(found.sum()):
                    flags[by_cell[cid]].append(f"{indicators.BLACK_BOX_WINS} ({int(found.sum())} "
                                               f"inside {norm} {shown})")
    table["flags"] = [", ".join(dict.fromkeys(flags[i])) for i in table.index]


def seed_spread(table: pd.DataFrame) -> pd.DataFrame:
    """Comparison rows that differ only in their seed: mean and min–max over the seeds of clean,
    robust and Δ vs none (:func:`leaderboards.seeds.over_seeds`)."""
    if table.empty:
        return pd.DataFrame()
    return over_seeds(keyed(table), [*SPREAD, "threat", *ATTACK], ["clean", "robust", "delta"])


def _spread_markdown(spread: pd.DataFrame) -> str:
    shown = pd.DataFrame({
        "attack": spread["attack"] + spread["source_model"].map(
            lambda s: f" (from {s})" if s else ""),
        "norm": spread["norm"], "eps": spread["eps_display"], "seeds": spread["seeds"],
        "n": spread["n_samples"].astype(str), "defense": spread["defense"],
        "threat": spread["threat"],
        "clean": [spread_text(*v) for v in zip(spread["clean"], spread["clean min"],
                                                spread["clean max"])],
        "robust": [spread_text(*v) for v in zip(spread["robust"], spread["robust min"],
                                                 spread["robust max"])],
        "Δ vs none": [spread_text(*v, signed=True) for v in zip(
            spread["delta"], spread["delta min"], spread["delta max"])],
    })
    return (f"\n{SPREAD_CAPTION}\n\n"
            + shown.to_markdown(index=False, disable_numparse=True) + "\n")


def to_markdown(table: pd.DataFrame) -> str:
    """Percentages with intervals, one section per dataset and model, each followed by the
    spread over seeds of its rows that differ only in their seed."""
    if table.empty:
        return "no bounded-eps results to compare\n"
    parts = []
    spread = seed_spread(table)
    for (dataset, model, direction), g in table.groupby(["dataset", "model", "direction"],
                                                         sort=True):
        shown = pd.DataFrame({
            "attack": g["attack"] + g["source_model"].map(lambda s: f" (from {s})" if s else ""),
            "norm": g["norm"], "eps": g["eps_display"], "seed": g["seed"].astype(str),
            "n": g["n"].astype(str),
            "defense": g["defense"], "threat": g["threat"],
            "clean": g["clean"].map(_pct),
            "robust [95% CI]": [f"{_pct(r)} [{_pct(lo)}, {_pct(hi)}]"
                                for r, lo, hi in zip(g["robust"], g["robust_lo"], g["robust_hi"])],
            "Δ vs none [95% CI]": [_delta(d, lo, hi) for d, lo, hi in
                                   zip(g["delta"], g["delta_lo"], g["delta_hi"])],
            "median distance [95% CI]": [
                "" if pd.isna(m) else f"{m:.3g} [{lo:.3g}, {hi:.3g}]" for m, lo, hi in
                zip(g["median_distance"], g["median_lo"], g["median_hi"], strict=True)],
            "calls/sample": g["calls_per_sample"].map(
                lambda v: "" if pd.isna(v) else f"{v:,.0f}"),
            "flags": g["flags"],
        })
        title = f"{dataset} · {model}" + (f" · {direction}" if direction else "")
        parts.append(f"### {title}\n\n"
                     + shown.to_markdown(index=False, disable_numparse=True) + "\n")
        if not spread.empty:
            mine = spread[(spread["dataset"] == dataset) & (spread["model"] == model)
                          & (spread["direction"] == direction)]
            if not mine.empty:
                parts[-1] += _spread_markdown(mine)
    return "\n".join(parts)


def _pct(v: float) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def _delta(d: float, lo: float, hi: float) -> str:
    if math.isnan(d):
        return ""
    ci = f" [{100 * lo:+.1f}, {100 * hi:+.1f}]" if not math.isnan(lo) else ""
    return f"{100 * d:+.1f}{ci}"
