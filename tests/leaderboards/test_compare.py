"""The defense comparison: intervals, deltas against the undefended baseline, and the
gradient-masking flags, on hand-made rows whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from leaderboards.compare import compare, paired_difference, to_markdown, wilson
from tests.conftest import summary_values as row


def cell(cell_id: str, defense: str, threat: str, adv: list[bool], *, attack: str = "pgd",
         norm: str = "linf", eps: float = 0.3, linf: float = 0.3, l2: float = 3.0,
         distance: float | None = None) -> tuple[dict, pd.DataFrame]:
    n = len(adv)
    summary = row(cell_id, defense=defense, threat=threat, attack=attack,
                  black_box=attack in ("onepixel", "square"), norm=norm, eps=eps,
                  eps_display=f"{eps:g}", n_samples=n, clean_acc=1.0,
                  robust_acc=sum(adv) / n)
    samples = pd.DataFrame({
        "cell_id": cell_id, "sample_idx": np.arange(n), "label": 0, "clean_correct": True,
        "adv_correct": adv, "success": [not a for a in adv], "l2": l2, "linf": linf,
        "l0": 1.0, "distance": [None if a else distance for a in adv], "fooled_by": None,
        "queries": None})
    return summary, samples


def build(*cells: tuple[dict, pd.DataFrame]) -> pd.DataFrame:
    return compare(pd.DataFrame([c[0] for c in cells]), pd.concat([c[1] for c in cells]))


def test_wilson_matches_the_textbook_interval() -> None:
    lo, hi = wilson(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == pytest.approx(1.0)


def test_paired_difference() -> None:
    a, b = np.array([1, 1, 1, 0] * 25), np.array([1, 0, 0, 0] * 25)
    mean, lo, hi = paired_difference(a, b)
    d = a - b
    half = 1.959963984540054 * d.std(ddof=1) / 10
    assert mean == pytest.approx(0.5) and (lo, hi) == pytest.approx((0.5 - half, 0.5 + half))


def test_delta_against_the_undefended_baseline() -> None:
    table = build(cell("b", "none", "adaptive", [False] * 8 + [True] * 2),
                  cell("d", "at", "adaptive", [True] * 6 + [False] * 4))
    d = table[table["defense"] == "at"].iloc[0]
    assert d["delta"] == pytest.approx(0.4)
    assert d["delta_lo"] < 0.4 < d["delta_hi"]
    assert d["flags"] == ""
    assert math.isnan(table[table["defense"] == "none"].iloc[0]["delta"])
    assert "+40.0" in to_markdown(table)


def test_delta_uses_the_baseline_of_the_same_population() -> None:
    """A baseline evaluated on 20 samples is not the baseline of a defense evaluated on 10."""
    table = build(cell("b20", "none", "adaptive", [True] * 20),
                  cell("b10", "none", "adaptive", [False] * 10),
                  cell("d", "at", "adaptive", [True] * 6 + [False] * 4))
    d = table[table["defense"] == "at"].iloc[0]
    assert d["delta"] == pytest.approx(0.6)


def test_adaptive_weaker_than_transfer_is_flagged() -> None:
    table = build(cell("b", "none", "adaptive", [False] * 10),
                  cell("a", "hgd", "adaptive", [True] * 7 + [False] * 3),
                  cell("t", "hgd", "transfer", [True] * 2 + [False] * 8))
    adaptive = table[table["threat"] == "adaptive"].set_index("defense")
    assert adaptive.loc["hgd", "flags"] == "transfer-wins (70.0% > 20.0%)"
    assert adaptive.loc["none", "flags"] == ""
    # and per sample: the transfer attack fooled 5 samples the white-box attack missed
    transfer = table[table["threat"] == "transfer"].iloc[0]
    assert transfer["flags"] == "black-box-wins (5 inside linf 0.3)"


def test_black_box_counts_only_inside_the_white_box_ball() -> None:
    """One-pixel perturbations larger than the Linf budget do not count against PGD; smaller
    ones do, unless another white-box attack at that eps already found them."""
    white = cell("w", "d", "adaptive", [True] * 10)
    big = cell("p", "d", "adaptive", [False] * 10, attack="onepixel", norm="l0", eps=1,
               linf=0.9)
    assert build(white, big).set_index("attack").loc["onepixel", "flags"] == ""
    small = cell("p", "d", "adaptive", [False] * 4 + [True] * 6, attack="onepixel", norm="l0",
                 eps=1, linf=0.25)
    flags = build(white, small).set_index("attack").loc["onepixel", "flags"]
    assert flags == "black-box-wins (4 inside linf 0.3)"
    other = cell("f", "d", "adaptive", [False] * 3 + [True] * 7, attack="fgsm")
    flags = build(white, other, small).set_index("attack").loc["onepixel", "flags"]
    assert flags == "black-box-wins (1 inside linf 0.3)"


def test_black_box_in_l1_counts_by_its_own_distance() -> None:
    """Samples store no L1 column: an L1 black-box row's fooled samples are placed in the L1
    ball by their ``distance``; an L2 black-box row beside an L1 ball has no L1 size and counts
    nothing there."""
    white = cell("w", "d", "adaptive", [True] * 10, attack="apgd", norm="l1", eps=10)
    inside = cell("s", "d", "adaptive", [False] * 3 + [True] * 7, attack="square", norm="l1",
                  eps=10, distance=9.5)
    assert build(white, inside).set_index("attack").loc["square", "flags"] == \
        "black-box-wins (3 inside l1 10)"
    outside = cell("s", "d", "adaptive", [False] * 3 + [True] * 7, attack="square", norm="l1",
                   eps=12, distance=11.0)
    assert build(white, outside).set_index("attack").loc["square", "flags"] == ""
    l2 = cell("s", "d", "adaptive", [False] * 3 + [True] * 7, attack="square", norm="l2",
              eps=1.0, l2=0.5, distance=0.5)
    assert build(white, l2).set_index("attack").loc["square", "flags"] == ""


def test_spread_over_seeds_of_each_defense() -> None:
    """Each seed keeps its row with its own baseline; the spread gives mean and min–max of
    clean, robust and Δ over the seeds, and leaves out a defense measured at one seed."""
    rows, sample_frames = [], []
    outcomes = {0: ([True, True, False, False], [False] * 4),
                5: ([True, False, False, False], [False] * 4),
                11: ([True, True, True, False], [True, False, False, False])}
    for seed, (defended, undefended) in outcomes.items():
        for defense, adv in (("fgsm_rs", defended), ("none", undefended)):
            s, f = cell(f"{defense}{seed}", defense, "adaptive", adv)
            s.update(seed=seed, weights_sha256=f"w{seed}")
            f["cell_id"] = s["cell_id"]
            rows.append(s)
            sample_frames.append(f)
    s, f = cell("hgd0", "hgd", "adaptive", [True] * 4)
    rows.append(s)
    sample_frames.append(f)
    table = compare(pd.DataFrame(rows), pd.concat(sample_frames, ignore_index=True))
    assert len(table) == 7
    from leaderboards.compare import seed_spread

    spread = seed_spread(table).set_index("defense")
    assert set(spread.index) == {"fgsm_rs", "none"}
    fgsm = spread.loc["fgsm_rs"]
    assert fgsm["seeds"] == "0, 5, 11"
    assert fgsm["robust"] == pytest.approx(0.5)
    assert (fgsm["robust min"], fgsm["robust max"]) == (0.25, 0.75)
    assert fgsm["delta"] == pytest.approx((0.5 + 0.25 + 0.5) / 3)
    assert (fgsm["delta min"], fgsm["delta max"]) == (0.25, 0.5)
    md = to_markdown(table)
    assert "Over seeds" in md and "50.0 [25.0–75.0]" in md and "+41.7 [+25.0–+50.0]" in md
