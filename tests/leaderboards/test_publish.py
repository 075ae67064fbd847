"""``advbench publish``: Markdown, CSV, LaTeX and the static HTML site, rendered in a real
headless Chromium (Debian's chromium + chromedriver, which .ci/run installs)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.cli import main
from leaderboards import ResultStore
from tests.conftest import sample_values as samples
from tests.conftest import summary_values as row

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """Two models, two eps, two attacks; 'big' is more robust, 'lenet' has the higher clean."""
    store = ResultStore(tmp_path / "results")
    for i, (model, eps, attack, adv) in enumerate([
            ("lenet", 0.1, "fgsm", (True, True, False, True)),
            ("lenet", 0.1, "pgd", (True, False, False, True)),
            ("lenet", 0.3, "pgd", (False, False, False, False)),
            ("big", 0.1, "pgd", (True, True, True, False)),
            ("big", 0.3, "pgd", (True, True, False, False))]):
        robust = sum(adv) / 4
        store.write_cell(row(f"c{i}", model=model, eps=eps, eps_display=str(eps), attack=attack,
                             robust_acc=robust, clean_acc=1.0 if model == "lenet" else 0.75,
                             img_per_s=100.0 * (i + 1)),
                         samples(f"c{i}", adv))
    return tmp_path / "results"


def test_publish_writes_every_format(results: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    site = tmp_path / "site"
    assert main(["publish", str(results), "--out", str(site)]) == 0
    assert "open" in capsys.readouterr().out
    names = {p.name for p in site.iterdir()}
    page = "mnist5k-classifier-adaptive-linf"
    assert {"index.html", "leaderboard.md", "leaderboard.csv", "leaderboard.tex",
            "comparison.md", "comparison.csv", f"{page}.html"} <= names
    entry_pages = sorted(n for n in names if n.startswith(("lenet-none-", "big-none-")))
    assert [n.rsplit(".", 1)[1] for n in entry_pages] == ["html", "svg", "html", "svg"]
    tex = (site / "leaderboard.tex").read_text()
    assert r"\toprule" in tex and "worst@0.3" in tex
    md = (site / "leaderboard.md").read_text()
    assert "| big" in md and "worst@0.3" in md
    html = (site / f"{page}.html").read_text()
    assert 'href="index.html"' in html and 'id="eps-0-1"' in html and 'id="eps-0-3"' in html
    assert "by advbench" in (site / "index.html").read_text()
    # publishing again replaces the site; a folder that is not one is refused
    (site / "stale.html").write_text("from an older site")
    assert main(["publish", str(results), "--out", str(site), "--eps", "0.3"]) == 0
    assert not (site / "stale.html").exists()
    html = (site / f"{page}.html").read_text()
    assert 'id="eps-0-3"' in html and 'id="eps-0-1"' not in html
    assert main(["publish", str(results), "--out", str(site), "--eps", "0.2"]) == 2
    assert "no board has eps 0.2; eps there are: 0.1, 0.3" in capsys.readouterr().err
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert main(["publish", str(results), "--out", str(other)]) == 2
    assert "is not a site advbench published" in capsys.readouterr().err
    assert (other / "notes.txt").read_text() == "keep me"


def test_boards_and_the_markdown_rank_by_the_chosen_attack(results: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    """By the worst case at 0.1, big (75%) ranks above lenet (25%); by FGSM, which only lenet
    ran there, lenet ranks first and big is listed unranked."""
    site = tmp_path / "site"
    board = site / "mnist5k-classifier-adaptive-linf.html"
    assert main(["publish", str(results), "--out", str(site), "--eps", "0.1"]) == 0
    text = board.read_text()
    assert text.index("big-none") < text.index("lenet-none")
    assert main(["publish", str(results), "--out", str(site), "--eps", "0.1",
                 "--rank-by", "fgsm"]) == 0
    text = board.read_text()
    assert "robust (fgsm)" in text and text.index("lenet-none") < text.index("big-none")
    md = (site / "leaderboard.md").read_text()
    assert "Ranked by fgsm@0.1" in md
    assert main(["publish", str(results), "--out", str(site), "--rank-by", "cw"]) == 2
    assert "no leaderboard has the attack 'cw' to rank by; attacks: worst, fgsm, pgd" in \
        capsys.readouterr().err


def test_site_follows_the_umask_and_a_file_out_is_refused(
        results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = tmp_path / "site"
    old = os.umask(0o022)
    try:
        assert main(["publish", str(results), "--out", str(site)]) == 0
    finally:
        os.umask(old)
    assert site.stat().st_mode & 0o777 == 0o755  # readable by a web server's user
    assert (site / "index.html").stat().st_mode & 0o777 == 0o644
    capsys.readouterr()
    file_out = tmp_path / "site.txt"
    file_out.write_text("mine")
    assert main(["publish", str(results), "--out", str(file_out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "site.txt is a file" in err[0]
    assert file_out.read_text() == "mine"


def _browser_or_skip() -> None:
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        if os.environ.get("ADVBENCH_REQUIRE_BROWSER"):
            pytest.fail("ADVBENCH_REQUIRE_BROWSER is set but chromium/chromedriver are missing")
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    pytest.importorskip("selenium")


def test_published_board_shows_the_spread_over_seeds(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "results")
    for seed, adv in ((0, (True, False, False, False)), (5, (True, True, True, False))):
        store.write_cell(row(f"s{seed}", seed=seed, weights_sha256=f"w{seed}",
                             robust_acc=sum(adv) / 4), samples(f"s{seed}", adv))
    site = tmp_path / "site"
    assert main(["publish", str(tmp_path / "results"), "--out", str(site)]) == 0
    page = (site / "mnist5k-classifier-adaptive-linf.html").read_text()
    assert "(2 seeds)" in page and "50.0 [25.0–75.0]" in page  # mean [min–max]
    assert "50.0 [25.0–75.0]" in (site / "leaderboard.md").read_text()
    tex = (site / "leaderboard.tex").read_text()
    assert "% over seeds" in tex and r"50.0 [25.0–75.0]" in tex
