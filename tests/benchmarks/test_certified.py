"""Certified bounds as a benchmark.

- ``test_certified_sweep`` (with ``--benchmark-enable``; needs the official MNIST test set,
  ``../shared/data/mnist`` or ``ADVBENCH_MNIST_DIR``): ``certified_sweep.toml`` — the zoo
  LeNet, the IBP-trained LeNet and the PGD-AT LeNet, trained on mnist5k's 4,000 digits;
  PGD-40 at Linf 0 to 0.2 and the ``rapid`` cascade at 0.1 on 500 official test digits,
  CROWN-IBP certificates beside every row. Goals: the IBP-trained LeNet certified ≥ 80% at 0.1; on every
  row certified ≤ attacked ≤ clean, and no certified sample fooled.
- ``test_certify_throughput``: one certification pass at Linf 0.1 (no digit certified) and
  0.005 (about a third certified) of the zoo LeNet over 256 digits (16 in the default run's
  smoke pass) per method, in samples per second, printed beside PGD-40's images per second on
  the same digits at the same eps.
"""

from __future__ import annotations

import os
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
import torch

from attacks import Attack
from bench.config import parse_config
from bench.core.bounds import BoundCertifier
from bench.core.datasets import Dataset
from bench.core.network import network_of
from bench.core.norms import Norm
from bench.core.target import Target
from bench.runner import RunOptions
from bench.sweep import run_sweep
from leaderboards.store import ResultStore

MNIST_DIR = Path(os.environ.get("ADVBENCH_MNIST_DIR",
                                Path(__file__).resolve().parents[3] / "shared/data/mnist"))
SWEEP = Path(__file__).with_name("certified_sweep.toml")
GOAL = 0.80


@pytest.mark.timeout(7200)
def test_certified_sweep(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if not request.config.getoption("benchmark_enable"):
        pytest.skip("two defense fits and a 500-digit sweep (about an hour on 2 CPU cores): "
                    "run with --benchmark-enable")
    if not MNIST_DIR.is_dir():
        pytest.skip(f"the official MNIST test set is not at {MNIST_DIR} (set ADVBENCH_MNIST_DIR)")
    raw = tomllib.loads(SWEEP.read_text())
    raw["sweep"]["dataset"] = f"idx:{MNIST_DIR}"
    from bench.core.checkpoints import resolve_cache_dir
    run_sweep(parse_config(raw, source=SWEEP.name),
              RunOptions(out=tmp_path, cache_dir=resolve_cache_dir(None), progress=False))
    rows = ResultStore(tmp_path).summary()
    rows = rows[rows["cascade_member"].isna()]
    print()
    for _, r in rows.sort_values(["defense", "attack", "eps"]).iterrows():
        print(f"{r['defense']:8} {r['attack']:9} eps {r['eps_display']:5} clean "
              f"{r['clean_acc']:.3f} attacked {r['robust_acc']:.3f} certified "
              f"{r['certified_acc']:.3f} ({r['certify_method']}, {r['certify_s']:.0f} s)")
        assert r["certified_acc"] <= r["robust_acc"] <= r["clean_acc"]
        assert r["certified_fooled"] == 0
    trained = rows[(rows["defense"] == "ibp") & (rows["eps"] == 0.1)]
    assert float(trained["certified_acc"].max()) >= GOAL


@pytest.mark.parametrize("eps", [0.1, 0.005])
@pytest.mark.parametrize("method", ["ibp", "crown-ibp"])
def test_certify_throughput(method: str, eps: float, lenet: Target, mnist5k: Dataset,
                            benchmark: Any, request: pytest.FixtureRequest) -> None:
    n = 256 if request.config.getoption("benchmark_enable") else 16
    test = mnist5k.split("test")
    idx = torch.linspace(0, len(test) - 1, n).round().long()
    x, y = test.x[idx], test.y[idx]
    certifier = BoundCertifier(network_of(lenet.eval()), Norm.LINF, method,  # type: ignore
                               lenet.bounds, batch_size=64)
    started = time.perf_counter()
    certified = benchmark.pedantic(certifier.certify, args=(x, eps), rounds=1, iterations=1)
    seconds = time.perf_counter() - started
    pgd = Attack.create("pgd", norm="linf", eps=eps, params={"steps": 40})
    started = time.perf_counter()
    x_adv = pgd(lenet, x, y, generator=torch.Generator().manual_seed(0)).x_adv
    pgd_s = time.perf_counter() - started
    with torch.no_grad():
        robust = lenet(x_adv).argmax(1) == y
    print(f"\n{method}: {n / seconds:.0f} certified samples/s ({int(certified.sum())}/{n} "
          f"certified at Linf {eps}); PGD-40: {n / pgd_s:.0f} images/s "
          f"({int(robust.sum())}/{n} robust)")
    assert not bool((certified & ~robust & (lenet(x).argmax(1) == y)).any())
