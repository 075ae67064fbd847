"""Security curves, best-known distances and AttackBench's optimality: the optimality against
``attackbenchlib``'s own computation, the best-known curve against every single attack's, and a
sweep's stored distances against its own eps rows."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.api import benchmark
from bench.core.target import Target
from leaderboards.security import (
    attack_board,
    median_interval,
    optimality,
    robust_curve,
    security_curves,
)
from leaderboards.store import ResultStore


def _distances(rng: np.random.Generator, n: int, wrong: int) -> np.ndarray:
    d = rng.exponential(1.0, n)
    d[rng.random(n) < 0.15] = math.inf  # not fooled
    d[:wrong] = 0.0  # misclassified from the start
    return d


@pytest.mark.parametrize("seed", range(6))
def test_optimality_equals_attackbenchlibs(seed: int) -> None:
    """On the same per-sample distances (zeros for misclassified inputs, inf for failures)
    advbench's optimality equals AttackBench's ``compute_local_optimality`` with the lower
    envelope of the attacks as its reference."""
    from attackbench.metrics.optimality import compute_local_optimality

    rng = np.random.default_rng(seed)
    n, wrong = 200, int(rng.integers(0, 20))
    runs = [_distances(rng, n, wrong) for _ in range(4)]
    runs[0] = np.minimum(runs[0], runs[1]) * 1.01  # a strong one, not the best everywhere
    correct = [True] * (n - wrong)
    correct = [False] * wrong + correct
    as_results = [{"distances": {"l2": r.tolist()}, "correct": correct} for r in runs]
    best = np.minimum.reduce(runs)
    clean_acc = 1 - wrong / n
    for result, d in zip(as_results, runs, strict=True):
        theirs = compute_local_optimality(result, reference_results=as_results,
                                          threat_model="l2", use_wandb=False)["optimality"]
        assert optimality(d, best, clean_acc) == pytest.approx(theirs, abs=1e-12)
    assert optimality(best, best, clean_acc) == pytest.approx(1.0)
    assert optimality(np.full(n, math.inf), best, clean_acc) == 0.0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.one_of(st.floats(0, 5), st.just(math.inf)), min_size=12,
                         max_size=12), min_size=1, max_size=5))
def test_best_known_curve_is_never_above_any_attacks(runs: list[list[float]]) -> None:
    """Through the stored-rows path: the best-known robust accuracy is at most every attack
    run's, at every eps."""
    summary, samples = _stored(runs)
    eps = np.linspace(0, 5, 21)
    curves = security_curves(summary, samples, eps)
    best = curves[curves["attack"] == "best known"].set_index("eps")["robust_acc"]
    for _, curve in curves[curves["attack"] != "best known"].groupby("attack_run"):
        assert bool((best <= curve.set_index("eps")["robust_acc"] + 1e-12).all())


def _stored(runs: list[list[float]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Summary and sample rows of minimal attack runs on one population (distances given)."""
    from tests.conftest import sample_values, summary_values

    summaries, samples = [], []
    for i, d in enumerate(runs):
        cid = f"c{i}"
        summaries.append(summary_values(cid, attack=f"a{i}", attack_run=f"run{i}", eps=None,
                                        norm="l2", n_samples=len(d)))
        cols = sample_values(cid, adv=tuple(math.isinf(v) for v in d))
        cols["distance"] = [None if math.isinf(v) else v for v in d]
        samples.append(pd.DataFrame(cols))
    return pd.DataFrame(summaries), pd.concat(samples, ignore_index=True)


def test_median_interval_covers_the_median() -> None:
    d = np.random.default_rng(0).exponential(1.0, 500)
    median, lo, hi = median_interval(d)
    assert lo < median < hi
    assert (d <= lo).mean() < 0.5 < (d <= hi).mean()


@pytest.fixture(scope="module")
def minimal_sweep(tmp_path_factory: pytest.TempPathFactory, lenet: Target
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """FMN and DDN (minimal, L2) and PGD at two eps on the LeNet, 40 digits, one results
    directory."""
    out = tmp_path_factory.mktemp("security")
    benchmark(lenet.model, attacks=[
        {"name": "fmn", "eps": [1.0, 2.0], "params": {"steps": 40}},
        {"name": "ddn", "eps": [1.0, 2.0], "params": {"steps": 40}},
        {"name": "pgd", "eps": [1.0, 2.0], "params": {"steps": 10}}],
        norm="l2", name="my_lenet", n_eval=40, out=out, progress=False)
    store = ResultStore(Path(out))
    summary = store.summary()
    return summary, store.samples(summary)


def test_stored_distances_agree_with_the_eps_rows(
        minimal_sweep: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    """A minimal attack's eps row is robust exactly where its run's distance exceeds eps (or
    nothing was found); an eps-bounded row's fooled samples have a distance within eps."""
    summary, samples = minimal_sweep
    rows = summary.set_index("cell_id")
    for cid, s in samples.groupby("cell_id"):
        row = rows.loc[cid]
        d = s["distance"].astype(float).fillna(math.inf).to_numpy()
        if row["attack"] in ("fmn", "ddn"):
            assert np.array_equal(s["adv_correct"].to_numpy(), d > row["eps"] * (1 + 1e-5))
        else:
            fooled = s["success"].to_numpy() & s["clean_correct"].to_numpy()
            assert bool((d[fooled] <= row["eps"] * (1 + 1e-5)).all())
            assert bool(np.isinf(d[~fooled & s["clean_correct"].to_numpy()]).all())


def test_the_attack_board_ranks_the_runs(minimal_sweep: tuple[pd.DataFrame, pd.DataFrame]
                                         ) -> None:
    """One row per attack run and a best-known row per population: optimalities in [0, 1],
    the best known row at 1 with the smallest median; FMN's and DDN's runs (one each, not one
    per eps) measured with their calls; robust accuracy under the best known attack at each
    eps at most every row's."""
    summary, samples = minimal_sweep
    board = attack_board(summary, samples)
    assert sorted(board["attack"]) == ["best known", "ddn", "fmn", "pgd", "pgd"]
    best = board[board["attack"] == "best known"].iloc[0]
    assert best["optimality"] == pytest.approx(1.0)
    runs = board[board["attack"] != "best known"]
    assert bool(runs["optimality"].between(0, 1).all())
    assert bool((runs["median_distance"] >= best["median_distance"]).all())
    minimal = runs[runs["attack"].isin(["fmn", "ddn"])]
    assert set(minimal["budget"]) == {"min"} and bool((minimal["calls_per_sample"] > 0).all())
    curves = security_curves(summary, samples, np.array([1.0, 2.0]))
    for eps, at in curves.groupby("eps"):
        best_acc = at.loc[at["attack"] == "best known", "robust_acc"].iloc[0]
        assert best_acc <= at["robust_acc"].min() + 1e-12
        stored = summary[(summary["eps"] == eps) & summary["attack"].isin(["fmn", "ddn"])]
        assert best_acc <= stored["robust_acc"].min() + 1e-12


def test_robust_curve_counts_distances_above_eps() -> None:
    d = np.array([0.0, 0.5, 1.0, math.inf])
    assert robust_curve(d, np.array([0.0, 0.5, 0.99, 1.0, 10.0])).tolist() == \
        [0.75, 0.5, 0.5, 0.25, 0.25]


def test_published_site_has_the_attack_board_and_best_known_curves(
        minimal_sweep: tuple[pd.DataFrame, pd.DataFrame], tmp_path: Path) -> None:
    """``publish`` writes the attack board (a row per run, the security curves' SVG) and the
    boards' best-known column, which is at most every attack's robust accuracy."""
    from leaderboards.publish import publish
    from leaderboards.site import entries

    summary, samples = minimal_sweep
    publish(summary, samples, tmp_path / "site")
    page = (tmp_path / "site" / "attacks.html").read_text()
    assert page.count("<tr><td class=\"key\">") == 5  # fmn, ddn, pgd@1, pgd@2, best known
    assert (tmp_path / "site" / "attacks-0.svg").is_file()
    (entry,) = entries(summary, samples)
    for eps, _ in entry.eps_values():
        best = entry.best_known(eps)
        assert best is not None
        for attack in entry.attacks():
            assert best.mean <= entry.robust(attack, eps).mean + 1e-12


def test_compare_gives_each_rows_median_distance(
        minimal_sweep: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    """``compare``'s median distance of a row is the median of its clean-correct samples'
    distances (not fooled: inf), inside its interval."""
    from leaderboards.compare import compare

    summary, samples = minimal_sweep
    table = compare(summary, samples)
    for _, row in table.iterrows():
        cell = summary[(summary["attack"] == row["attack"]) & (summary["eps"] == row["eps"])]
        mine = samples[(samples["cell_id"] == cell["cell_id"].iloc[0])
                       & samples["clean_correct"]]
        d = mine["distance"].astype(float).fillna(math.inf).to_numpy()
        assert row["median_distance"] == pytest.approx(float(np.median(d)))
        assert row["median_lo"] <= row["median_distance"] <= row["median_hi"]


def test_cells_stored_without_distances_are_left_out(
        minimal_sweep: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    """A cell written before distances were recorded (its fooled samples' distances null, as a
    migrated schema-13 file reads) gives no distances: no attack-board row, and it does not
    raise the best known curve above the attacks'."""
    summary, samples = minimal_sweep
    pgd = summary[summary["attack"] == "pgd"]["cell_id"]
    old = samples.copy()
    old.loc[old["cell_id"].isin(pgd), "distance"] = None
    board = attack_board(summary, old)
    assert "pgd" not in set(board["attack"]) and {"fmn", "ddn"} <= set(board["attack"])
