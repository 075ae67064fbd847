"""Security curves and the attacks measured against each other (AttackBench: Cinà et al.,
"AttackBench: Evaluating Gradient-based Attacks for Adversarial Examples", AAAI 2025).

Every sample row holds the distance of the adversarial its attack reached (``distance``: 0 where
the clean input is already wrong, null where nothing was fooled). Per population and norm
(:data:`CURVE_KEY`: the same weights, samples and precision), the *best known* distance of a
sample is the smallest any attack run reached; robust accuracy at eps under an attack is the
share of samples whose distance exceeds eps. An attack's **optimality** (AttackBench Eq. 5) is

    LO = (ρ ε₀ − AUREC_attack) / (ρ ε₀ − AUREC_best)

with ρ the clean accuracy, ε₀ the largest finite best-known distance and AUREC the area under
the robust-accuracy curve on [0, ε₀]: 1 for an attack that reaches the best known distance on
every sample, 0 for one that fools nothing.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from leaderboards.population import POPULATION, keyed, present

CURVE_KEY = (*POPULATION, "norm")
"""Rows whose distances may be compared sample by sample: one population, one norm."""

RUN_KEY = ("attack", "attack_params", "targeted", "budget", "attack_run")
"""One attack run: a minimal attack's eps rows share it (and its distances)."""


def run_distances(summary: pd.DataFrame, samples: pd.DataFrame) -> pd.DataFrame:
    """One row per (attack run, sample): its distance, inf where it fooled nothing. A minimal
    attack's eps rows are one run; an eps-bounded attack's rows at several eps are one run
    each, and its distance is the smallest any of them reached. Cascade members' rows are
    their cascade's run."""
    rows = keyed(summary)
    rows = rows[rows["cascade_member"].fillna("") == ""].copy()
    rows["budget"] = np.where(rows["attack_run"] == rows["cell_id"], rows["eps_display"], "min")
    keys = [*present(CURVE_KEY, rows), *RUN_KEY]
    merged = samples[["cell_id", "sample_idx", "distance", "clean_correct", "success"]].merge(
        rows[["cell_id", *keys]], on="cell_id")
    # a cell stored before distances were recorded (schema < 14) has fooled samples without
    # one: it has no distances to give, and is left out rather than read as "not fooled"
    unrecorded = merged["success"].astype(bool) & merged["clean_correct"].astype(bool) & \
        merged["distance"].isna()
    merged = merged[~merged["cell_id"].isin(merged.loc[unrecorded, "cell_id"])]
    merged["distance"] = merged["distance"].astype(float).fillna(math.inf)
    return merged.groupby([*keys, "sample_idx"], dropna=False).agg(
        distance=("distance", "min"), clean_correct=("clean_correct", "first"),
        cells=("cell_id", "nunique")).reset_index()


def best_known(distances: pd.DataFrame) -> pd.DataFrame:
    """Per (population, norm, sample): the smallest distance any attack run reached and how
    many runs measured the sample."""
    keys = [k for k in CURVE_KEY if k in distances.columns]
    return distances.groupby([*keys, "sample_idx"], dropna=False).agg(
        best=("distance", "min"), runs=("attack_run", "nunique")).reset_index()


def robust_curve(distances: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """Robust accuracy at each eps: the share of samples whose distance exceeds it."""
    d = np.sort(np.asarray(distances, dtype=float))
    return 1.0 - np.searchsorted(d, np.asarray(eps, dtype=float), side="right") / len(d)


def aurec(distances: np.ndarray, eps_max: float) -> float:
    """The exact area under the robust-accuracy step curve on [0, eps_max] (AttackBench Eq. 4):
    ∫ P(d > ε) dε = mean(min(d, eps_max))."""
    d = np.asarray(distances, dtype=float)
    return float(np.minimum(d, eps_max).mean()) if len(d) else math.nan


def optimality(distances: np.ndarray, best: np.ndarray, clean_acc: float) -> float:
    """AttackBench's local optimality (Eq. 5) of an attack's per-sample distances against the
    best-known ones on the same samples: NaN where the best known curve has no area to close
    (nothing fooled, or every sample at distance 0)."""
    d, b = np.asarray(distances, dtype=float), np.asarray(best, dtype=float)
    if d.shape != b.shape:
        raise ValueError(f"{len(d)} distances against {len(b)} best-known ones")
    finite = b[np.isfinite(b)]
    if not len(finite):
        return math.nan
    eps_0 = float(finite.max())
    gap = clean_acc * eps_0 - aurec(b, eps_0)
    if gap <= 0:
        return math.nan
    return float(np.clip((clean_acc * eps_0 - aurec(d, eps_0)) / gap, 0.0, 1.0))


def median_interval(distances: np.ndarray, z: float = 1.96) -> tuple[float, float, float]:
    """The median distance and its distribution-free 95 % interval (order statistics of the
    binomial around n/2): inf where more than half were not fooled."""
    d = np.sort(np.asarray(distances, dtype=float))
    n = len(d)
    if n == 0:
        return math.nan, math.nan, math.nan
    half = z * math.sqrt(n) / 2
    lo = max(0, int(math.floor(n / 2 - half)))
    hi = min(n - 1, int(math.ceil(n / 2 + half)))
    return float(np.median(d)), float(d[lo]), float(d[hi])


def attack_board(summary: pd.DataFrame, samples: pd.DataFrame) -> pd.DataFrame:
    """Per population and norm, one row per attack run over the samples every run measured:
    success rate, median distance with its interval, optimality against the best known
    distances, model calls per sample and seconds per sample; and a ``best known`` row.
    Populations where the runs measured different samples use only the common ones."""
    dist = run_distances(summary, samples)
    if dist.empty:
        return pd.DataFrame()
    costs = _run_costs(summary)
    keys = [k for k in CURVE_KEY if k in dist.columns]
    out = []
    for key, group in dist.groupby(keys, dropna=False):
        runs = group.groupby("attack_run")["sample_idx"].apply(frozenset)
        common = frozenset.intersection(*runs) if len(runs) else frozenset()
        group = group[group["sample_idx"].isin(common)]
        if group.empty:
            continue
        wide = group.pivot_table(index="sample_idx", columns="attack_run", values="distance",
                                 aggfunc="min")
        best = wide.min(axis=1).to_numpy()
        clean = group.groupby("sample_idx")["clean_correct"].first().loc[wide.index]
        clean_acc = float(clean.mean())
        base = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        for run in wide.columns:
            d = wide[run].to_numpy()
            info = group[group["attack_run"] == run].iloc[0]
            out.append(_board_row(base, str(info["attack"]), str(info["budget"]),
                                  str(info["attack_params"]), run, d, best, clean, clean_acc,
                                  costs.get(run)))
        out.append(_board_row(base, "best known", "", "", "", best, best, clean, clean_acc,
                              None))
    board = pd.DataFrame(out)
    return board.sort_values([*keys, "optimality"], ascending=[True] * len(keys) + [False],
                             na_position="last").reset_index(drop=True)


def board_from_distances(table: pd.DataFrame) -> pd.DataFrame:
    """The attack board of one population and norm from per-(entry, sample) distances
    (``attack``, ``library``, ``sample_idx``, ``distance`` (null or inf: not found),
    ``clean_correct``, ``calls``, ``seconds_per_sample``; ``advbench attackbench`` writes
    them): one row per entry and a ``best known`` row, ranked by optimality."""
    table = table.assign(distance=table["distance"].astype(float).fillna(math.inf))
    wide = table.pivot_table(index="sample_idx", columns=["attack", "library"],
                             values="distance", aggfunc="min")
    best = wide.min(axis=1).to_numpy()
    clean = table.groupby("sample_idx")["clean_correct"].first().loc[wide.index]
    clean_acc = float(clean.mean())
    out = []
    for attack, library in wide.columns:
        rows = table[(table["attack"] == attack) & (table["library"] == library)]
        cost = (float(rows["calls"].mean()), float(rows["seconds_per_sample"].iloc[0]))
        row = _board_row({}, attack, "", "", "", wide[(attack, library)].to_numpy(), best,
                         clean, clean_acc, cost)
        out.append({"library": library, **row})
    out.append({"library": "", **_board_row({}, "best known", "", "", "", best, best, clean,
                                            clean_acc, None)})
    board = pd.DataFrame(out).drop(columns=["budget", "attack_params", "attack_run"])
    return board.sort_values("optimality", ascending=False, na_position="last"
                             ).reset_index(drop=True)


def _board_row(base: dict[str, object], attack: str, budget: str, params: str, run: str,
               d: np.ndarray,
               best: np.ndarray, clean: pd.Series, clean_acc: float,
               cost: tuple[float, float] | None) -> dict[str, object]:
    correct = clean.to_numpy().astype(bool)
    fooled = np.isfinite(d[correct])
    median, lo, hi = median_interval(d[correct])
    return {**base, "attack": attack, "budget": budget, "attack_params": params,
            "attack_run": run,
            "n": len(d), "clean_acc": clean_acc,
            "success_rate": float(fooled.mean()) if len(fooled) else math.nan,
            "median_distance": median, "median_lo": lo, "median_hi": hi,
            "optimality": optimality(d, best, clean_acc),
            "calls_per_sample": cost[0] if cost else math.nan,
            "s_per_sample": cost[1] if cost else math.nan}


def _run_costs(summary: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """Per attack run: model calls per sample and seconds per sample (every row of a run
    reports the run's own)."""
    first = summary.drop_duplicates("attack_run")
    n = first["n_samples"].astype(float).replace(0.0, math.nan)
    calls = (first["n_forward"] + first["n_backward"]) / n
    return {str(r): (float(c), float(w)) for r, c, w in
            zip(first["attack_run"], calls, first["wall_s"] / n, strict=True)}


TITLE_KEYS = ("dataset", "model", "defense", "norm", "n_samples", "seed", "precision")
"""The population keys a board's title names (the others are recorded in the rows)."""


def groups(board: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The board's (title, rows) per population and norm, in the board's order."""
    keys = [k for k in TITLE_KEYS if k in board.columns]
    return [(", ".join(f"{k} {v}" for k, v in zip(keys, key, strict=True)), group)
            for key, group in board.groupby(keys, dropna=False, sort=False)]


def curves_svg(summary: pd.DataFrame, samples: pd.DataFrame, group: pd.DataFrame,
               path: Path) -> None:
    """Robust accuracy against eps (0 to the largest finite distance) under each attack run of
    ``group`` (one board group) and under the best known attack, as an SVG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = summary[summary["attack_run"].isin(group["attack_run"])]
    dist = run_distances(runs, samples)
    wide = dist.pivot_table(index="sample_idx", columns="attack_run", values="distance",
                            aggfunc="min").dropna()
    finite = wide.to_numpy()[np.isfinite(wide.to_numpy())]
    top = float(finite.max()) * 1.05 if finite.size and finite.max() > 0 else 1.0
    eps = np.linspace(0, top, 200)
    labels = dict(zip(group["attack_run"], group["attack"] + "@" + group["budget"],
                      strict=False))
    fig, ax = plt.subplots(figsize=(7.5, 3.8), dpi=100)
    for run in wide.columns:
        ax.step(eps, 100 * robust_curve(wide[run].to_numpy(), eps), where="post",
                label=labels.get(run, run), linewidth=1.2)
    ax.step(eps, 100 * robust_curve(wide.min(axis=1).to_numpy(), eps), where="post",
            label="best known", color="black", linewidth=2.5)
    ax.set_xlabel(f"eps ({group['norm'].iloc[0]})")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_xlim(0, top)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    fig.savefig(path, format="svg", metadata={"Date": None})
    plt.close(fig)


BOARD_COLUMNS = {"attack": "attack", "budget": "eps", "n": "n", "success_rate": "success",
                 "median_distance": "median distance", "optimality": "optimality",
                 "calls_per_sample": "calls/sample", "s_per_sample": "s/sample"}


def to_markdown(board: pd.DataFrame) -> str:
    """The attack board as Markdown: one table per population and norm (model, defense,
    samples, seed), the median distance with its 95 % interval."""
    if board.empty:
        return "no attack runs with per-sample distances in these results"
    parts = []
    for title, group in groups(board):
        table = group[list(BOARD_COLUMNS)].rename(columns=BOARD_COLUMNS).copy()
        table["median distance"] = [
            f"{m:.4g} [{lo:.4g}, {hi:.4g}]" for m, lo, hi in
            zip(group["median_distance"], group["median_lo"], group["median_hi"], strict=True)]
        parts.append(f"### {title}\n\n" + table.to_markdown(index=False, floatfmt=".3g"))
    return "\n\n".join(parts)


def security_curves(summary: pd.DataFrame, samples: pd.DataFrame,
                    eps: np.ndarray) -> pd.DataFrame:
    """Robust accuracy at each of ``eps`` per population, norm and attack run, and under the
    best known attack (``attack`` = "best known"), over each population's common samples."""
    dist = run_distances(summary, samples)
    keys = [k for k in CURVE_KEY if k in dist.columns]
    out = []
    for key, group in dist.groupby(keys, dropna=False):
        wide = group.pivot_table(index="sample_idx", columns="attack_run", values="distance",
                                 aggfunc="min").dropna()
        names = group.drop_duplicates("attack_run").set_index("attack_run")["attack"]
        base = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        curves = {**{(str(names[r]), r): wide[r].to_numpy() for r in wide.columns},
                  ("best known", ""): wide.min(axis=1).to_numpy()}
        for (attack, run), d in curves.items():
            for e, acc in zip(eps, robust_curve(d, eps), strict=True):
                out.append({**base, "attack": attack, "attack_run": run, "eps": float(e),
                            "robust_acc": float(acc)})
    return pd.DataFrame(out)


__all__ = ["CURVE_KEY", "attack_board", "aurec", "best_known", "median_interval", "optimality",
           "board_from_distances", "curves_svg", "groups", "robust_curve", "run_distances", "security_curves",
           "to_markdown"]
