"""The published site, checked in a real headless Chromium at 1280 × 800 (Debian's chromium and
chromedriver, which .ci/run installs), and its reproduction snippets run for real."""

from __future__ import annotations

import json
import os
import re
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest

import bench
from bench.cli import main
from bench.config import expand_cells, parse_config
from leaderboards import ResultStore
from leaderboards.site import entries, reproduce
from tests.conftest import sample_values as samples
from tests.conftest import summary_values as row
from tests.leaderboards.test_publish import CHROMEDRIVER, CHROMIUM, _browser_or_skip

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-output"
"""Where the browser test leaves its screenshots for a person to look at (ignored by git)."""


def _cells(store: ResultStore, prefix: str, eps_adv: dict[float, tuple[bool, ...]],
           **fields: Any) -> None:
    for eps, adv in eps_adv.items():
        for attack in ("fgsm", "pgd"):
            hit = adv if attack == "pgd" else tuple(True for _ in adv)
            cell = f"{prefix}-{attack}-{eps}"
            store.write_cell(row(cell, eps=eps, eps_display=str(eps), attack=attack,
                                 robust_acc=sum(hit) / len(hit), n_samples=len(hit),
                                 attack_run=cell, **fields), samples(cell, hit))


@pytest.fixture
def rich(tmp_path: Path) -> Path:
    """Entries with defenses, two seeds, a flagged cell, a certified defense (L2) and a
    discriminator board: synthetic rows written through the store (they pass its schema)."""
    store = ResultStore(tmp_path / "results")
    eps = {0.1: (True,) * 6 + (False,) * 2, 0.3: (True,) * 3 + (False,) * 5}
    for seed, shift in ((0, 0), (1, 1)):
        _cells(store, f"plain{seed}", {e: a[shift:] + a[:shift] for e, a in eps.items()},
               seed=seed, weights_sha256=f"{seed:064x}", base_weights_sha256=f"{seed:064x}",
               model_description="LeNet-style CNN", model_paper="https://doi.org/10.1109/5.726791")
    _cells(store, "advtrained", {0.1: (True,) * 7 + (False,), 0.3: (True,) * 5 + (False,) * 3},
           defense="fgsm_rs", weights_sha256="f" * 64,
           defense_params=json.dumps({"name": "fgsm_rs", "params": {"eps": 0.3}}))
    _cells(store, "masked", {0.1: (True,) * 8, 0.3: (True,) * 8}, defense="bit_depth",
           weights_sha256="e" * 64, flags="zero-grad",
           defense_params=json.dumps({"name": "bit_depth", "params": {"bits": 1}}))
    _cells(store, "smooth", {0.5: (True,) * 5 + (False,) * 3, 1.0: (True,) * 2 + (False,) * 6},
           norm="l2", defense="randomized_smoothing", weights_sha256="d" * 64,
           certified_acc=0.25, certified_fooled=0, abstain_rate=0.1)
    _cells(store, "disc", {0.1: (True,) * 4 + (False,) * 4}, target_kind="discriminator",
           direction="real->fake", model="dcgan", weights_sha256="c" * 64)
    return tmp_path / "results"


def _chromium(tmp_path: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1280,800",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def test_the_site_in_a_browser_fits_sorts_searches_and_links(rich: Path, tmp_path: Path) -> None:
    _browser_or_skip()
    site = tmp_path / "site"
    assert main(["publish", str(rich), "--out", str(site)]) == 0
    pages = sorted(site.glob("*.html"))
    boards = [p for p in pages if p.stem.startswith("mnist5k-")]
    assert {p.stem for p in boards} == {"mnist5k-classifier-adaptive-linf",
                                        "mnist5k-classifier-adaptive-l2",
                                        "mnist5k-discriminator-adaptive-linf"}
    driver = _chromium(tmp_path)
    try:
        driver.set_window_size(1280, 800)
        for page in pages:
            _check_page(driver, page, site)
        _use_the_board(driver, site / "mnist5k-classifier-adaptive-linf.html")
    finally:
        driver.quit()
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)


def _check_page(driver: Any, page: Path, site: Path) -> None:
    """The page fits 1280 px, its images load, its links stay on the site (or name a paper)
    and the browser logs no error."""
    from selenium.webdriver.common.by import By

    driver.get(page.as_uri())
    overflow = driver.execute_script(
        "const d = document.documentElement; return [d.scrollWidth, d.clientWidth]")
    assert overflow[0] <= overflow[1], (page.name, overflow)
    for image in driver.find_elements(By.TAG_NAME, "img"):
        size = driver.execute_script(
            "const r = arguments[0].getBoundingClientRect(); return [arguments[0]"
            ".complete && arguments[0].naturalWidth, r.width, r.height]", image)
        assert size[0] and size[1] > 0 and size[2] > 0, (page.name, size)
    for link in driver.find_elements(By.CSS_SELECTOR, "a[href]"):
        href = link.get_attribute("href")
        if href.startswith(("http://", "https://")):
            assert "doi.org" in href or "arxiv.org" in href, (page.name, href)
            continue  # a paper's link: never fetched by the site itself
        target = Path(href.removeprefix("file://").split("#", 1)[0])
        assert target.is_file() and site in target.parents, (page.name, href)
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, (page.name, errors)


def _use_the_board(driver: Any, board: Path) -> None:
    """On the board: the largest eps first, ranked; a click sorts; a flag explains itself;
    the search filters; tabs and row anchors work; an entry's link opens its page."""
    from selenium.webdriver.common.by import By

    driver.get(board.as_uri())
    SCREENSHOTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(SCREENSHOTS / "site-board.png"))
    panel = driver.find_element(By.CSS_SELECTOR, ".tab-panel:not([hidden])")
    assert panel.get_attribute("id") == "eps-0-3"  # the largest eps first

    def shown(column: int) -> list[Any]:
        return [r.find_elements(By.TAG_NAME, "td")[column]
                for r in panel.find_elements(By.CSS_SELECTOR, "tbody tr") if r.is_displayed()]

    def entries_shown() -> list[str]:
        return [cell.text for cell in shown(1)]

    def robust_shown() -> list[float]:
        return [float(cell.get_attribute("data-sort")) for cell in shown(3)]

    assert entries_shown()[0].startswith("lenet / bit_depth")  # ranked: 100% robust
    assert robust_shown() == sorted(robust_shown(), reverse=True)
    robust = panel.find_elements(By.CSS_SELECTOR, "th")[3]
    assert robust.text.startswith("robust (worst case)")
    robust.click()
    assert robust_shown() == sorted(robust_shown())
    assert robust.get_attribute("aria-sort") == "ascending"
    badge = panel.find_element(By.CSS_SELECTOR, ".badge")
    assert badge.text == "zero-grad" and "gradient" in badge.get_attribute("title")
    assert any("(2 seeds)" in text for text in entries_shown())
    search = driver.find_element(By.ID, "search")
    search.send_keys("fgsm_rs")
    assert entries_shown() == ["lenet / fgsm_rs"]
    search.clear()
    search.send_keys("x")  # clear() fires no input event: type, then erase
    search.send_keys("\b")
    assert len(entries_shown()) == 3
    driver.find_element(By.LINK_TEXT, "eps 0.1").click()
    panel = driver.find_element(By.CSS_SELECTOR, ".tab-panel:not([hidden])")
    assert panel.get_attribute("id") == "eps-0-1" and len(entries_shown()) == 3
    anchor = panel.find_element(By.CSS_SELECTOR, "tbody tr").get_attribute("id")
    driver.get(board.as_uri() + "#" + anchor)  # a row's anchor opens its tab
    assert driver.find_element(By.ID, anchor).is_displayed()
    driver.find_element(By.PARTIAL_LINK_TEXT, "lenet / none").click()
    assert driver.title == "lenet / none"
    driver.save_screenshot(str(SCREENSHOTS / "site-entry.png"))
    text = driver.find_element(By.TAG_NAME, "body").text
    assert "Each seed's own row" in text and "[advbench run entry.toml]" not in text
    assert "worst case" in text and "eps 0.3" in text


def test_the_certified_interval_and_the_discriminator_board(rich: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    assert main(["publish", str(rich), "--out", str(site)]) == 0
    l2 = (site / "mnist5k-classifier-adaptive-l2.html").read_text()
    assert "<th>certified</th>" in l2 and "25.0 [" in l2
    disc = (site / "mnist5k-discriminator-adaptive-linf.html").read_text()
    assert "dcgan / none / real-&gt;fake" in disc


def test_a_toml_snippet_gives_the_same_cells(trained_lenet: Any, cache_dir: Path,
                                             tmp_path: Path) -> None:
    config = parse_config(tomllib.loads("""
[sweep]
name = "snippet"
dataset = "mnist5k"
n_eval = 20

[[defenses]]
name = "bit_depth"
label = "bits4"
params = { bits = 4 }

[[targets]]
model = "lenet"
defenses = ["none", "bits4"]

[[attacks]]
name = "pgd"
eps = [0.1, 0.2]
params = { steps = 2 }

[[attacks]]
name = "fgsm"
eps = [0.1]
"""))
    from bench.runner import RunOptions
    from bench.sweep import run_sweep

    out = tmp_path / "results"
    run_sweep(config, RunOptions(out=out, cache_dir=cache_dir, progress=False, device="cpu"))
    store = ResultStore(out)
    summary = store.summary()
    found = entries(summary, store.samples(summary))
    assert len(found) == 2 and all(e.seeds == [0] for e in found)
    for e in found:
        language, snippet = reproduce(e)
        assert language == "toml"
        cells = {c.cell_id for c in expand_cells(parse_config(tomllib.loads(snippet)))}
        assert cells == set(e.rows["cell_id"]), snippet


def test_a_benchmark_snippet_run_again_gives_the_same_cells(
        lenet: Any, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    first = bench.benchmark(lenet.model, attacks=[{"name": "pgd", "eps": [0.1],
                                                   "params": {"steps": 2}}],
                            n_eval=10, name="mine", out="first",
                            cache_dir=cache_dir, progress=False, device="cpu")
    store = ResultStore("first")
    summary = store.summary()
    (e,) = entries(summary, store.samples(summary))
    language, snippet = reproduce(e)
    assert language == "python" and "bench.benchmark(" in snippet
    snippet = snippet.replace("\n)", f"\n    out='again', cache_dir={str(cache_dir)!r}, "
                                     f"progress=False, device='cpu',\n)")
    scope: dict[str, Any] = {"model": lenet.model}
    exec(snippet, scope)  # noqa: S102 - the published snippet, run as a user would
    assert set(scope["rows"]["cell_id"]) == set(first["cell_id"])
    assert re.search(r"attacks=\[\{'name': 'pgd'", snippet)
    assert os.path.isdir("again")
