from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from bench.core.errors import BadInput
from leaderboards import ResultStore, leaderboards, render, to_markdown
from tests.conftest import sample_values as samples
from tests.conftest import summary_values as row


def test_worst_case_is_computed_per_sample(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    # Two attacks at eps 0.1, each fooling a different half: each alone 50 %, together 0 %.
    store.write_cell(row("a", attack="fgsm", robust_acc=0.5), samples("a", (True, False, True, False)))
    store.write_cell(row("b", attack="pgd", robust_acc=0.5), samples("b", (False, True, False, True)))
    # A second model that resists better, to check the ranking.
    store.write_cell(row("c", model="big", attack="pgd", robust_acc=0.75),
                     samples("c", (True, True, True, False)))
    boards = leaderboards(store.summary(), store.samples())
    assert len(boards) == 1
    table = boards[0].table.set_index("model")
    assert table.loc["lenet", "fgsm@0.1"] == 0.5 and table.loc["lenet", "pgd@0.1"] == 0.5
    assert table.loc["lenet", "worst@0.1"] == 0.0
    assert table.loc["big", "worst@0.1"] == 0.75
    assert table.loc["big", "worst@0.1 lo"] < 0.75 < table.loc["big", "worst@0.1 hi"]
    assert list(boards[0].table["model"]) == ["big", "lenet"]  # ranked by worst case


def test_the_user_picks_the_column_a_board_ranks_by(tmp_path: Path) -> None:
    """Default: the worst case at the largest eps; ``rank_by``: any accuracy column, named in
    the header; a column no board has is refused with the columns there are."""
    store = ResultStore(tmp_path)
    store.write_cell(row("a", attack="fgsm", robust_acc=0.25), samples("a", (True, False, False, False)))
    store.write_cell(row("b", attack="pgd", robust_acc=0.75), samples("b", (True, True, True, False)))
    store.write_cell(row("c", model="big", attack="fgsm", robust_acc=0.5),
                     samples("c", (True, True, False, False)))
    store.write_cell(row("d", model="big", attack="pgd", robust_acc=0.5),
                     samples("d", (True, True, False, False)))
    summary, per_sample = store.summary(), store.samples()
    (default,) = leaderboards(summary, per_sample)
    assert default.ranked_by == "worst@0.1" and list(default.table["model"]) == ["big", "lenet"]
    (by_pgd,) = leaderboards(summary, per_sample, rank_by="pgd@0.1")
    assert list(by_pgd.table["model"]) == ["lenet", "big"]
    assert "Ranked by pgd@0.1, highest first." in to_markdown(by_pgd)
    with pytest.raises(BadInput, match="no leaderboard has the column 'pgd@0.3'.*pgd@0.1"):
        leaderboards(summary, per_sample, rank_by="pgd@0.3")


def test_boards_split_by_norm_and_render(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.write_cell(row("a"), samples("a"))
    store.write_cell(row("b", norm="l2", eps=1.0, eps_display="1"), samples("b"))
    boards = leaderboards(store.summary(), store.samples())
    assert [b.norm for b in boards] == ["l2", "linf"]
    md = to_markdown(boards[1])
    assert md.startswith("### mnist5k · classifier · adaptive · linf")
    cells = [c.strip() for c in md.splitlines()[-1].split("|")[1:-1]]
    assert cells[:5] == ["lenet", "none", "4", "100.0", "50.0"]
    assert cells[5] == "50.0 [15.0, 85.0]"  # Wilson 95% for 2 of 4
    assert cells[6:] == ["40", "0.1", "3"]  # median img/s, attack seconds, calls per sample
    assert "Ranked by worst@0.1, highest first." in md
    text = render(tmp_path)
    assert "pgd@1" in text and "pgd@0.1" in text
    csv = render(tmp_path, "csv")
    assert csv.splitlines()[0].startswith(
        "dataset,target_kind,threat,norm,model,defense,defense_params,model_source,"
        "weights_sha256,train_dataset,split,n,seed,precision,draws,clean")
    assert csv.splitlines()[0].endswith(",fast_path")  # recorded, listed, never a key


def _population(n: int, seed: int = 0, adv: tuple[bool, ...] = ()) -> tuple[dict, dict]:
    """A cell of n samples (sample_idx 0..n-1)."""
    import numpy as np

    adv = adv or tuple(bool(i % 2) for i in range(n))
    s = samples(f"n{n}s{seed}", adv)
    s["sample_idx"] = np.arange(n)
    return row(f"n{n}s{seed}", attack="fgsm", n_samples=n, seed=seed,
               robust_acc=sum(adv) / n), s


def test_cells_of_different_populations_are_separate_rows(tmp_path: Path) -> None:
    """The quick preset (n_eval 1000) and a sweep with n_eval 100 in one results directory:
    two rows with their own n and interval, never their mean."""
    store = ResultStore(tmp_path)
    store.write_cell(*_population(1000, adv=tuple(i < 811 for i in range(1000))))
    store.write_cell(*_population(100, adv=tuple(i < 80 for i in range(100))))
    (board,) = leaderboards(store.summary(), store.samples())
    table = board.table.set_index("n")
    assert len(table) == 2
    assert table.loc[1000, "fgsm@0.1"] == 0.811 and table.loc[100, "fgsm@0.1"] == 0.80
    assert table.loc[1000, "worst@0.1"] == 0.811 and table.loc[100, "worst@0.1"] == 0.80
    assert table.loc[100, "worst@0.1 hi"] - table.loc[100, "worst@0.1 lo"] > \
        table.loc[1000, "worst@0.1 hi"] - table.loc[1000, "worst@0.1 lo"]
    md = to_markdown(board)
    assert "81.1" in md and "80.0" in md and "80.6" not in md


def test_seeds_are_rows_and_differing_params_are_columns(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.write_cell(*_population(4, seed=0))
    store.write_cell(*_population(4, seed=5))
    store.write_cell(row("p10", attack="pgd", attack_params='{"steps": 10}', robust_acc=0.75),
                     samples("p10", (True, True, True, False)))
    store.write_cell(row("p40", attack="pgd", attack_params='{"steps": 40}', robust_acc=0.25),
                     samples("p40", (True, False, False, False)))
    (board,) = leaderboards(store.summary(), store.samples())
    assert "seed" in board.key_columns and "n" not in board.key_columns
    table = board.table.set_index("seed")
    assert table.loc[5, "fgsm@0.1"] == 0.5 and pd.isna(table.loc[5, "pgd (steps=10)@0.1"])
    assert table.loc[0, "pgd (steps=10)@0.1"] == 0.75
    assert table.loc[0, "pgd (steps=40)@0.1"] == 0.25
    assert "| seed" in to_markdown(board)


def test_worst_case_needs_the_same_samples(tmp_path: Path) -> None:
    """Two cells of one row whose sample sets differ (a foreign or hand-edited store) leave
    the worst case blank instead of mixing two populations."""
    store = ResultStore(tmp_path)
    store.write_cell(row("a", attack="fgsm"), samples("a"))
    other = samples("b")
    other["sample_idx"] = other["sample_idx"] + 2
    store.write_cell(row("b", attack="pgd"), other)
    (board,) = leaderboards(store.summary(), store.samples())
    assert pd.isna(board.table.loc[0, "worst@0.1"])
    assert board.table.loc[0, "fgsm@0.1"] == 0.5


def test_cells_that_would_share_a_table_cell_are_refused(tmp_path: Path) -> None:
    from bench.core.errors import BadInput

    store = ResultStore(tmp_path)
    store.write_cell(row("a", torch_version="2.4"), samples("a"))
    store.write_cell(row("b", torch_version="2.5"), samples("b"))
    with pytest.raises(BadInput, match="differ in torch_version"):
        leaderboards(store.summary(), store.samples())


def test_derived_rows_count_their_run_once(tmp_path: Path) -> None:
    """DeepFool's per-eps rows come from one run: its time is counted once."""
    store = ResultStore(tmp_path)
    for eps in (0.1, 0.2):
        cid = f"df{eps}"
        store.write_cell(row(cid, attack="deepfool", eps=eps, eps_display=str(eps),
                             attack_run="df", wall_s=218.0), samples(cid))
    store.write_cell(row("f", attack="fgsm", wall_s=1.0), samples("f"))
    (board,) = leaderboards(store.summary(), store.samples())
    assert board.table.loc[0, "attack s"] == 219.0


def test_render_errors(tmp_path: Path) -> None:
    from bench.core.errors import BadInput

    with pytest.raises(BadInput, match="no results"):
        render(tmp_path)


def test_rows_differing_in_two_keys_make_no_phantom_rows(tmp_path: Path) -> None:
    """An undefended row on one execution path and a defended one on another: two rows, not
    the four combinations of their keys."""
    store = ResultStore(tmp_path)
    store.write_cell(row("a", defense="none", fast_path="channels_last"),
                     samples("a", (True, False, True, False)))
    store.write_cell(row("b", defense="fgsm_rs", defense_params='{"eps": 0.3}',
                         fast_path="eager"), samples("b", (True, True, True, False)))
    (board,) = leaderboards(store.summary(), store.samples())
    assert sorted(board.table["defense"]) == ["fgsm_rs", "none"]
    assert board.table["clean"].notna().all() and board.table["pgd@0.1"].notna().all()


def _seeded(defense: str, seed: int, adv: tuple[bool, ...], **fields: object) -> tuple[dict, dict]:
    cid = f"{defense}-{seed}-{fields.get('n_samples', 4)}"
    return (row(cid, defense=defense, seed=seed, weights_sha256=f"w{seed}",
                robust_acc=sum(adv) / len(adv), **fields), samples(cid, adv))


def test_seed_spread_is_mean_and_range_beside_each_seeds_row(tmp_path: Path) -> None:
    """Three seeds of one defense keep their rows; under them the mean and min–max over the
    seeds, computed from those rows (0.25, 0.5, 1.0 → mean 0.583). A row of another population
    (other n) and a single-seed defense are not summarised with them."""
    store = ResultStore(tmp_path)
    for seed, adv in ((0, (True, False, False, False)), (5, (True, True, False, False)),
                      (11, (True, True, True, True))):
        store.write_cell(*_seeded("fgsm_rs", seed, adv))
    store.write_cell(*_seeded("fgsm_rs", 0, (True,) * 8, n_samples=8))
    store.write_cell(*_seeded("none", 0, (False,) * 4))
    (board,) = leaderboards(store.summary(), store.samples())
    assert len(board.table) == 5  # every seed's row stays
    spread = board.spread
    assert len(spread) == 1
    (s,) = spread.to_dict("records")
    assert s["defense"] == "fgsm_rs" and s["seeds"] == "0, 5, 11" and s["n"] == 4
    assert s["pgd@0.1"] == pytest.approx((0.25 + 0.5 + 1.0) / 3)
    assert (s["pgd@0.1 min"], s["pgd@0.1 max"]) == (0.25, 1.0)
    assert (s["worst@0.1 min"], s["worst@0.1 max"]) == (0.25, 1.0)
    md = to_markdown(board)
    assert "Over seeds" in md and "58.3 [25.0–100.0]" in md
    csv = render(tmp_path, "csv")
    stats = [line.split(",")[4] for line in csv.splitlines()[1:]]
    assert stats.count("mean") == stats.count("min") == stats.count("max") == 1


def test_spread_lists_the_timed_fast_paths_but_splits_on_precision(tmp_path: Path) -> None:
    """The runner times ``channels_last`` per prepared model, so seeds may run on different
    paths: the spread still covers every seed and names the paths. A precision the user chose
    is a different measurement and gets its own spread."""
    store = ResultStore(tmp_path)
    for seed, path in ((0, "eager"), (5, "channels_last"), (11, "eager")):
        store.write_cell(*_seeded("fgsm_rs", seed, (True, seed > 0, False, False),
                                  fast_path=path))
        store.write_cell(*_seeded("pgd_at", seed, (True, True, seed > 0, False),
                                  fast_path=path, precision="bf16" if seed == 11 else "fp32"))
    (board,) = leaderboards(store.summary(), store.samples())
    assert len(board.table) == 6
    by_defense = {s["defense"]: s for s in board.spread.to_dict("records")}
    assert by_defense["fgsm_rs"]["seeds"] == "0, 5, 11"
    assert by_defense["fgsm_rs"]["fast_path"] == "channels_last, eager"
    assert by_defense["fgsm_rs"]["pgd@0.1"] == pytest.approx((0.25 + 0.5 + 0.5) / 3)
    assert by_defense["pgd_at"]["seeds"] == "0, 5"  # seed 11 ran at bf16
    assert "channels_last, eager" in to_markdown(board)


def test_no_spread_without_two_seeds(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.write_cell(*_seeded("fgsm_rs", 0, (True, False, False, False)))
    store.write_cell(*_seeded("fgsm_rs", 0, (True,) * 8, n_samples=8))
    (board,) = leaderboards(store.summary(), store.samples())
    assert board.spread.empty and "Over seeds" not in to_markdown(board)
    assert "statistic" not in render(tmp_path, "csv").splitlines()[0]


def test_a_cascade_in_another_version_says_so_in_its_column(tmp_path: Path) -> None:
    """``standard`` in its ``rapid`` or ``rand`` version is another attack on the board: its
    column names the version, beside the standard version's own."""
    store = ResultStore(tmp_path)
    for cell, version in (("a", "standard"), ("b", "rapid"), ("c", "rand")):
        store.write_cell(row(cell, attack="standard",
                             attack_params=f'{{"steps": 100, "version": "{version}"}}'),
                         samples(cell))
    (board,) = leaderboards(store.summary(), store.samples())
    assert {"standard@0.1", "standard-rapid@0.1", "standard-rand@0.1"} <= set(board.table)


def test_a_label_only_attack_says_so_in_its_column(tmp_path: Path) -> None:
    """A number reached from the target's labels alone is another threat than one reached
    with its scores or gradients: the column says which."""
    store = ResultStore(tmp_path)
    store.write_cell(row("a", attack="pgd", norm="l2", eps=2.0, eps_display="2"), samples("a"))
    store.write_cell(row("b", attack="hopskipjump", black_box=True, label_only=True, norm="l2",
                         eps=2.0, eps_display="2"), samples("b"))
    store.write_cell(row("c", attack="square", black_box=True, norm="l2", eps=2.0,
                         eps_display="2"), samples("c"))
    (board,) = leaderboards(store.summary(), store.samples())
    assert {"pgd@2", "hopskipjump (label-only)@2", "square@2"} <= set(board.table)
    assert "hopskipjump (label-only)@2" in to_markdown(board)
