"""Several processes on one results directory split a sweep: wall time of a 12-cell sweep run by
one process and by two started together (cells claimed as they start), each cell stored once.

Timed with ``pytest tests/benchmarks/test_sweep_concurrency.py --benchmark-enable`` (PGD-30 on
400 digits per cell); the default run is a smoke test on a small budget.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[2]
EPS = [round(0.02 * i, 2) for i in range(1, 13)]
CONFIG = """
[sweep]
name = "split"
dataset = "mnist5k"
n_eval = {n_eval}
batch_size = {n_eval}

[[targets]]
model = "lenet"

[[attacks]]
name = "pgd"
eps = {eps}
params = {{ steps = {steps}, step_size = 0.01, early_stop = false }}
"""
RUNS = itertools.count()


@pytest.mark.parametrize("processes", [1, 2])
def test_processes_split_a_sweep(processes: int, benchmark: Any, record: Any,
                                 trained_lenet: Any, cache_dir: Path, tmp_path: Path) -> None:
    n_eval, steps = (100, 3) if benchmark.disabled else (400, 30)
    config = tmp_path / "split.toml"
    config.write_text(CONFIG.format(n_eval=n_eval, eps=EPS, steps=steps))
    env = {**os.environ, "ADVBENCH_CACHE": str(cache_dir)}
    outs: list[Path] = []

    def sweep() -> None:
        out = tmp_path / f"results{next(RUNS)}"
        outs.append(out)
        procs = [subprocess.Popen([sys.executable, "-m", "bench", "run", str(config), "--out",
                                   str(out), "--no-progress"], cwd=ROOT, env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for _ in range(processes)]
        for proc in procs:
            _, err = proc.communicate(timeout=900)
            assert proc.returncode == 0, err

    benchmark.pedantic(sweep, rounds=1, iterations=1)
    for out in outs:
        assert pq.read_table(out / "summary").num_rows == len(EPS)  # each cell stored once
    record("sweep-12", f"{processes} process(es)", float(len(EPS)), len(EPS) * n_eval,
           metric="cells")
