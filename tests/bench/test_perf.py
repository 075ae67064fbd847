"""`advbench perf` end to end on the CPU with tiny budgets: floors, every group, the peers at
identical budgets (equal strength where the attack is deterministic), Parquet output, and bad
input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from bench.cli import main
from bench.perf import PERF_SCHEMA

BATCH = 16
"""Images per attack call: small, so that every group and peer runs in CI."""


def test_perf_measures_floors_attacks_and_peers(trained_lenet: Any, cache_dir: Path,
                                                tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "perf"
    code = main(["perf", "--model", "lenet", "--device", "cpu", "--batch-size", str(BATCH),
                 "--eval-batches", "2", "--repeats", "1", "--uap-fit", "6", "--eps", "0.3",
                 "--out", str(out), "--no-progress", "--cache-dir", str(cache_dir)])
    printed = capsys.readouterr().out
    assert code == 0
    files = list(out.glob("perf-*.parquet"))
    assert len(files) == 1
    table = pq.read_table(files[0])
    assert table.schema.equals(PERF_SCHEMA, check_metadata=False)
    df = table.to_pandas()
    floors = df[df["group"] == "floor"]
    assert set(zip(floors["library"], floors["precision"])) == {
        (k, p) for k in ("forward", "forward+backward") for p in ("fp32", "bf16")}
    assert (floors["img_per_s"] > 0).all()
    ours = df[(df["library"] == "advbench") & (df["group"] != "fastpath")]
    assert set(ours["group"]) == {"fgsm", "pgd10", "pgd40-eval", "deepfool", "onepixel", "uap",
                                  "apgd", "standard", "rapid"}
    for group in ("apgd", "standard"):  # at most one image more robust than torchattacks'
        same = df[df["group"] == group].set_index("library")
        assert same.loc["advbench", "score"] <= same.loc["torchattacks", "score"] + 1 / BATCH
    # calls per image on both sides of the cascade: the peer's counted through a wrapper
    cascade = df[df["group"].isin(["standard", "rapid"])].set_index(["group", "library"])
    assert (cascade["calls_per_sample"] >= 1).all()
    peer = cascade.loc[("standard", "torchattacks")]
    assert peer["n_forward"] > 0 and peer["n_backward"] > 0
    rapid = cascade.loc[("rapid", "advbench")]
    assert rapid["calls_per_sample"] <= peer["calls_per_sample"]  # compared with standard's peer
    assert rapid["score"] <= peer["score"] + 1 / BATCH
    assert "calls/sample" in printed
    # the default: channels_last where measured faster, so either path may have been taken
    assert set(ours["fast_path"]) <= {"eager", "channels_last"} and ours["fast_path"].nunique() == 1
    paths = df[df["group"] == "fastpath"]
    assert {"channels_last", "compile", "channels_last+compile"} >= set(paths["fast_path"]) \
        >= {"channels_last"}
    assert (paths["img_per_s"] > 0).all() and (paths["score"] > 0).all()
    assert set(df["library"]) >= {"foolbox", "torchattacks", "art", "advbench-full-budget"}
    fgsm = df[(df["group"] == "fgsm") & (df["precision"] == "fp32")].set_index("library")
    # FGSM is deterministic: every library must land on the same robust accuracy.
    assert fgsm.loc["advbench", "score"] == fgsm.loc["torchattacks", "score"] \
        == fgsm.loc["foolbox", "score"] == fgsm.loc["art", "score"]
    assert (ours["floor_fraction"] > 0).all()
    early = df[(df["group"] == "pgd40-eval") & (df["library"] == "advbench")].iloc[0]
    full = df[(df["group"] == "pgd40-eval") & (df["library"] == "advbench-full-budget")].iloc[0]
    assert early["n_images"] == full["n_images"] == 2 * BATCH  # 2 batches through BATCH rows
    assert early["n_backward"] < full["n_backward"]
    assert early["score"] <= full["score"] + 1 / BATCH
    assert fgsm.loc["advbench", "n_forward"] == fgsm.loc["advbench", "n_backward"] == BATCH
    # UAP at equal strength: passes until advbench's fitting fooling reaches ART's held-out
    uap = df[df["group"] == "uap"].set_index("library")
    equal = uap.loc["advbench-equal-fooling"]
    assert equal["n_backward"] >= uap.loc["advbench", "n_backward"] > 0
    assert f"{uap.loc['art', 'score']:.3f} (ART's)" in equal["budget"]
    assert "floor" in printed and "speed-up" in printed and str(files[0]) in printed


@pytest.mark.parametrize("argv, message", [
    (["--groups", "pgd100"], "unknown perf group 'pgd100'"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--model", "lenett"], "unknown model 'lenett'"),
    (["--eps", "-1"], "--eps must be > 0"),
    (["--eval-batches", "0"], "--eval-batches must be >= 1"),
])
def test_perf_bad_input(argv: list[str], message: str, tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "perf"
    code = main(["perf", "--device", "cpu", "--out", str(out), "--no-progress",
                 "--cache-dir", str(tmp_path / "cache"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_speedups_are_over_the_fastest_fp32_peer_of_the_group() -> None:
    """advbench at 200 img/s against peers at 100 and 50 (fp32) and 400 (bf16, not a peer of
    record): 2x; early-stopped PGD-40 at 300 against itself at full budget (100): 3x."""
    import pandas as pd

    from bench.perf import _with_speedups

    rows = pd.DataFrame([
        ("floor", "advbench", "fp32", 1000.0), ("fgsm", "torchattacks", "fp32", 100.0),
        ("fgsm", "foolbox", "fp32", 50.0), ("fgsm", "torchattacks", "bf16", 400.0),
        ("fgsm", "advbench", "fp32", 200.0), ("pgd40-eval", "advbench", "fp32", 300.0),
        ("pgd40-eval", "advbench-full-budget", "fp32", 100.0)],
        columns=["group", "library", "precision", "img_per_s"])
    out = _with_speedups(rows)["speedup_vs_fastest_peer"].tolist()
    assert out[4] == 2.0 and out[5] == 3.0
    assert all(v != v for v in out[:4])  # NaN: the floor and the peers have none


def test_floor_fraction_is_the_share_of_the_matching_floor() -> None:
    """A gradient attack's backward passes per second over the forward+backward floor; a
    gradient-free one's forward passes over the forward floor; nothing for no time."""
    from bench.core.measure import floor_fraction

    floor = {("forward+backward", "fp32"): 100.0, ("forward", "fp32"): 400.0,
             ("forward+backward", "bf16"): 1000.0}
    assert floor_fraction(120, 50, 2.0, floor, "fp32") == 0.25  # 25 backward/s of 100
    assert floor_fraction(100, 0, 2.0, floor, "fp32") == 0.125  # 50 forward/s of 400
    assert floor_fraction(120, 50, 2.0, floor, "bf16") == 0.025
    assert floor_fraction(120, 50, 0.0, floor, "fp32") is None
