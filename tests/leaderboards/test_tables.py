from __future__ import annotations

from pathlib import Path

import pytest

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
    assert cells[6:] == ["40", "0.1"]  # median img/s, attack seconds
    text = render(tmp_path)
    assert "pgd@1" in text and "pgd@0.1" in text
    csv = render(tmp_path, "csv")
    assert csv.splitlines()[0].startswith("dataset,target_kind,threat,norm,model,defense,n,clean")


def test_render_errors(tmp_path: Path) -> None:
    from bench.core.errors import BadInput

    with pytest.raises(BadInput, match="no results"):
        render(tmp_path)
