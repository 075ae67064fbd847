"""``advbench publish``: Markdown, CSV, LaTeX and the static HTML site, rendered in a real
headless Chromium (Debian's chromium + chromedriver, which .ci/run installs)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

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
            "comparison.md", "comparison.csv", f"{page}.html", f"{page}.png"} <= names
    assert Image.open(site / f"{page}.png").size == (800, 400)
    tex = (site / "leaderboard.tex").read_text()
    assert r"\toprule" in tex and "worst@0.3" in tex
    md = (site / "leaderboard.md").read_text()
    assert "| big" in md and "worst@0.3" in md
    html = (site / f"{page}.html").read_text()
    assert 'href="index.html"' in html and f'src="{page}.png"' in html
    # publishing again replaces the site; a folder that is not one is refused
    assert main(["publish", str(results), "--out", str(site)]) == 0
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert main(["publish", str(results), "--out", str(other)]) == 2
    assert "is not a site advbench published" in capsys.readouterr().err
    assert (other / "notes.txt").read_text() == "keep me"


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


def test_site_renders_and_sorts_in_headless_chromium(results: Path, tmp_path: Path) -> None:
    _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    site = tmp_path / "site"
    assert main(["publish", str(results), "--out", str(site)]) == 0
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get((site / "index.html").as_uri())
        assert driver.title == "advbench leaderboards"
        links = driver.find_elements(By.CSS_SELECTOR, "#boards a")
        assert [a.text for a in links] == ["mnist5k · classifier · adaptive · linf"]
        links[0].click()
        assert driver.title == "mnist5k · classifier · adaptive · linf"
        image = driver.find_element(By.TAG_NAME, "img")
        assert driver.execute_script("return arguments[0].complete && "
                                     "arguments[0].naturalWidth", image) == 800
        headers = [th.text for th in driver.find_elements(By.CSS_SELECTOR, "th")]
        assert headers[:4] == ["model", "defense", "n", "clean"]

        def models() -> list[str]:
            return [r.find_elements(By.TAG_NAME, "td")[0].text
                    for r in driver.find_elements(By.CSS_SELECTOR, "tbody tr")]

        assert models() == ["big", "lenet"]  # ranked by worst case at the largest eps
        clean = driver.find_elements(By.CSS_SELECTOR, "th")[3]
        clean.click()
        assert models() == ["big", "lenet"]  # ascending clean: 75.0 < 100.0
        clean.click()
        assert models() == ["lenet", "big"]
        worst = next(th for th in driver.find_elements(By.CSS_SELECTOR, "th")
                     if th.text.startswith("worst@0.3"))
        worst.click()  # "0.0 [...]" vs "50.0 [...]" sort by their leading numbers
        assert models() == ["lenet", "big"]
        assert worst.get_attribute("aria-sort") == "ascending"
        driver.find_element(By.LINK_TEXT, "index").click()
        assert driver.title == "advbench leaderboards"
    finally:
        driver.quit()
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)


def test_published_board_shows_the_spread_over_seeds(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "results")
    for seed, adv in ((0, (True, False, False, False)), (5, (True, True, True, False))):
        store.write_cell(row(f"s{seed}", seed=seed, weights_sha256=f"w{seed}",
                             robust_acc=sum(adv) / 4), samples(f"s{seed}", adv))
    site = tmp_path / "site"
    assert main(["publish", str(tmp_path / "results"), "--out", str(site)]) == 0
    page = (site / "mnist5k-classifier-adaptive-linf.html").read_text()
    assert "Over seeds" in page and "50.0 [25.0–75.0]" in page
    assert "50.0 [25.0–75.0]" in (site / "leaderboard.md").read_text()
    tex = (site / "leaderboard.tex").read_text()
    assert "% over seeds" in tex and r"50.0 [25.0–75.0]" in tex
