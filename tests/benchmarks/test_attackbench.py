"""The attack board at AttackBench's budget: advbench's minimum-norm attacks beside the peers'
implementations of the same attacks (adv-lib, foolbox), every one under 2,000 forward +
backward passes per sample (:class:`bench.core.budget.CallBudget`), on the zoo LeNet and the
PGD-AT LeNet, in L0, L1, L2 and Linf.

``pytest tests/benchmarks/test_attackbench.py --benchmark-enable -s`` runs it on
``ADVBENCH_ATTACKBENCH_N`` digits (default 100, ten per class) and prints each board; the
default test run smokes it on 4 digits at a budget of 20, advbench's and adv-lib's entries. Asserted when timed: each advbench
attack's optimality at least the best peer implementation's of the same attack (less 0.01:
the same algorithm ties up to float rounding), and advbench's best attack per norm at least
0.95 of the best known.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from bench.attackbench import attack_bench
from bench.core.norms import Norm
from bench.core.target import Target
from leaderboards.security import board_from_distances
from tests.benchmarks.conftest import adversarially_trained, spread_over_classes

MODELS = ["lenet", "pgd_at_lenet"]
NORMS = [Norm.L0, Norm.L1, Norm.L2, Norm.LINF]


@pytest.fixture(scope="module")
def pgd_at_lenet(lenet: Target, mnist5k: Any, cache_dir: Any, request: pytest.FixtureRequest
                 ) -> Target:
    return adversarially_trained("pgd_at", lenet, mnist5k, cache_dir, request)


@pytest.mark.parametrize("norm", NORMS, ids=[n.value for n in NORMS])
@pytest.mark.parametrize("model_name", MODELS)
def test_attack_board(model_name: str, norm: Norm, mnist5k: Any,
                      request: pytest.FixtureRequest) -> None:
    full = bool(request.config.getoption("benchmark_enable"))
    n, budget = (int(os.environ.get("ADVBENCH_ATTACKBENCH_N", "100")), 2000) if full else (4, 20)
    target = request.getfixturevalue(model_name)
    x, y = spread_over_classes(mnist5k.test, n)
    table = attack_bench(target, x, y, norm=norm, budget=budget,
                         libraries=None if full else ("advbench", "adv-lib"))
    board = board_from_distances(table)
    print(f"\n{model_name}, {norm.value}, {n} digits, {budget} calls per sample\n"
          + board.to_markdown(index=False, floatfmt=".4g"))
    assert int(table["calls"].max()) <= budget
    ours = board[board["library"] == "advbench"]
    assert not ours.empty
    if not full:
        return
    for _, row in ours.iterrows():
        peers = board[(board["attack"] == row["attack"]) & (board["library"] != "advbench")]
        if not peers.empty:
            assert row["optimality"] >= peers["optimality"].max() - 0.01, row["attack"]
    assert ours["optimality"].max() >= 0.95
