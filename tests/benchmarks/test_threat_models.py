"""Threat models beyond the Lp ball as a benchmark (with ``--benchmark-enable``; needs the
official MNIST test set, ``../shared/data/mnist`` or ``ADVBENCH_MNIST_DIR``):
``threat_sweep.toml`` on 500 official test digits.

- Transfer: the source → target matrices of MI-FGSM and DI-FGSM at Linf 0.1–0.3 beside
  PGD-40 white-box. Checks: no transfer beats the white-box PGD-40 on the target it was not
  crafted on by more than 2 digits (white-box is the stronger threat), and a source crafted on
  the target's own weights matches the white-box MI-FGSM row exactly.
- Corruptions: ``advbench corruptions`` on the same targets; every target's mean accuracy over
  the 15 corruptions is below its clean accuracy. The matrices and the board are printed.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from bench.cli import main
from bench.config import parse_config
from bench.core.checkpoints import resolve_cache_dir
from bench.runner import RunOptions
from bench.sweep import run_sweep
from leaderboards.corruptions import boards, load_corruptions
from leaderboards.store import ResultStore
from leaderboards.transfer import matrices, transfer_rows

MNIST_DIR = Path(os.environ.get("ADVBENCH_MNIST_DIR",
                                Path(__file__).resolve().parents[3] / "shared/data/mnist"))
SWEEP = Path(__file__).with_name("threat_sweep.toml")


@pytest.fixture
def sweep_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    if not request.config.getoption("benchmark_enable"):
        pytest.skip("a 500-digit sweep with an FGSM-RS fit: run with --benchmark-enable")
    if not MNIST_DIR.is_dir():
        pytest.skip(f"the official MNIST test set is not at {MNIST_DIR} (set ADVBENCH_MNIST_DIR)")
    path = tmp_path / SWEEP.name
    path.write_text(SWEEP.read_text().replace("idx:../shared/data/mnist", f"idx:{MNIST_DIR}"))
    return path


@pytest.mark.timeout(3600)
def test_transfer_and_corruptions(sweep_file: Path, tmp_path: Path) -> None:
    config = parse_config(tomllib.loads(sweep_file.read_text()), source=sweep_file.name)
    out = tmp_path / "results"
    run_sweep(config, RunOptions(out=out, cache_dir=resolve_cache_dir(None), progress=False))
    rows = ResultStore(out).summary()
    print()
    for title, table in matrices(transfer_rows(rows)):
        print(f"{title}\n{table.round(1).to_string()}\n")
        target_of = {c: c for c in table.columns}
        for source in table.index:
            for target in table.columns:
                if source in ("clean", "white-box") or source == target_of[target]:
                    continue
                pgd = rows[(rows["attack"] == "pgd") & (rows["source_model"].isna())
                           & (rows["eps_display"] == title.split("@")[1].split()[0])
                           & ((rows["model"] + "/" + rows["defense"]).str.replace("/none", "")
                              == target)]
                assert table.loc[source, target] >= 100 * pgd["robust_acc"].min() - 0.4, (
                    title, source, target)
        for model in ("lenet", "mlp"):
            assert table.loc[model, model] == pytest.approx(table.loc["white-box", model])
    assert main(["corruptions", str(sweep_file), "--out", str(out), "--no-progress"]) == 0
    for title, board in boards(load_corruptions(out)):
        print(f"{title}\n{board.round(1).to_string()}\n")
        assert (board["mean"] < board["clean"]).all()
