"""The per-sample call budget (AttackBench's protocol) and ``advbench attackbench``: no
implementation spends more than the budget, the distance is the smallest adversarial queried,
and the board ranks the entries by optimality."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bench.attackbench import attack_bench, entries, write
from bench.core.budget import CallBudget
from bench.core.norms import Norm
from bench.core.target import Target
from leaderboards.security import board_from_distances, optimality
from tests.conftest import advbench
from tests.linear import linear_target


def test_no_sample_gets_more_than_its_budget(lenet: Target,
                                             digits: tuple[torch.Tensor, torch.Tensor]
                                             ) -> None:
    """A peer's 60-step DDN (120 calls a sample) under a budget of 30: every sample spends
    exactly 30, and the gradient of a sample past its budget is zero."""
    from adv_lib.attacks import ddn

    x, y = digits[0][:12], digits[1][:12]
    wrapper = CallBudget(lenet, x, y, norm=Norm.L2, budget=30, num_classes=10)
    ddn(wrapper, x, y, steps=60)
    assert wrapper.used.tolist() == [30] * 12
    probe = x.clone().requires_grad_(True)
    wrapper(probe).sum().backward()
    assert probe.grad is not None and float(probe.grad.abs().sum()) == 0.0


def test_images_of_one_sample_in_one_call_spend_its_budget_in_order() -> None:
    target = linear_target()
    x = torch.rand(3, 1, 4, 5, generator=torch.Generator().manual_seed(0))
    y = target.predict_logits(x).argmax(1)
    wrapper = CallBudget(target, x, y, norm=Norm.L2, budget=2, num_classes=6)
    batch = torch.cat([x[[0, 0, 0, 1]]])
    out = wrapper(batch)
    assert wrapper.used.tolist() == [2, 1, 0]
    assert torch.equal(out[2], torch.nn.functional.one_hot(y[0], 6).float() * 1e3)
    assert not torch.equal(out[1], out[2])


def test_the_distance_is_the_smallest_adversarial_queried() -> None:
    """Points along a line from each input towards a boundary, queried farthest first: the
    wrapper's distance is the smallest of those the classifier misclassifies (computed here
    from the logits), not the last one queried. (784 features: the inputs lie far enough
    apart that every point is matched to the input it perturbs.)"""
    target = linear_target(classes=6, features=784, shape=(1, 28, 28))
    x = 0.3 + 0.4 * torch.rand(20, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    y = target.predict_logits(x).argmax(1)
    w = target.model[1].weight.detach()
    runner_up = target.predict_logits(x).topk(2, dim=1).indices[:, 1]
    direction = (w[runner_up] - w[y]).view(x.shape)  # towards the runner-up's boundary
    direction = direction / direction.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    wrapper = CallBudget(target, x, y, norm=Norm.L2, budget=10_000, num_classes=6)
    steps = torch.linspace(0.05, 3.0, 30)
    expected = torch.full((20,), math.inf)
    for t in steps.flip(0):  # farthest first: the tracked minimum must not be the last seen
        point = (x + t * direction).clamp(0, 1)
        wrapper(point)
        wrong = target.predict_logits(point).argmax(1) != y
        dist = (point - x).flatten(1).norm(dim=1)
        expected = torch.where(wrong, torch.minimum(expected, dist), expected)
    assert int(torch.isfinite(expected).sum()) >= 10
    torch.testing.assert_close(wrapper.best, expected)


def test_board_optimality_is_attackbenchs(lenet: Target,
                                          digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    """advbench's FMN and DDN beside adv-lib's under a 60-call budget on 16 digits: every
    entry spent at most the budget, the board's optimality of each entry equals AttackBench's
    ``compute_local_optimality`` on the same distances, the best known row is 1, and the
    distances survive Parquet."""
    from attackbench.metrics.optimality import compute_local_optimality

    x, y = digits[0][::12][:16], digits[1][::12][:16]
    table = attack_bench(lenet, x, y, norm=Norm.L2, budget=60,
                         libraries=("advbench", "adv-lib"), attacks=("fmn", "ddn"))
    assert int(table["calls"].max()) <= 60
    board = board_from_distances(table)
    assert board.iloc[0]["attack"] == "best known" or board.iloc[0]["optimality"] == 1.0
    results = {key: {"distances": {"l2": g.sort_values("sample_idx")["distance"].tolist()},
                     "correct": g.sort_values("sample_idx")["clean_correct"].tolist()}
               for key, g in table.groupby(["attack", "library"])}
    for _, row in board[board["attack"] != "best known"].iterrows():
        theirs = compute_local_optimality(results[(row["attack"], row["library"])],
                                          reference_results=list(results.values()),
                                          threat_model="l2", use_wandb=False)
        assert row["optimality"] == pytest.approx(theirs["optimality"], abs=1e-9)
    assert {("fmn", "advbench"), ("ddn", "advbench"), ("fmn", "adv-lib"),
            ("ddn", "adv-lib"), ("best known", "")} == \
        set(zip(board["attack"], board["library"], strict=True))


def test_written_distances_read_back(tmp_path: Path) -> None:
    table = pd.DataFrame({"attack": "fmn", "library": "advbench", "norm": "l2", "budget": 10,
                          "sample_idx": [0, 1], "clean_correct": [True, True],
                          "distance": [0.5, math.inf], "calls": [10, 10],
                          "seconds_per_sample": [0.1, 0.1]})
    write(table, tmp_path / "d.parquet")
    back = pd.read_parquet(tmp_path / "d.parquet")
    assert back["distance"].iloc[0] == 0.5 and pd.isna(back["distance"].iloc[1])
    d = np.array([0.25, 0.5, math.inf])
    assert optimality(d, d, 1.0) == 1.0


def test_every_norm_has_advbench_and_peer_entries() -> None:
    for norm in (Norm.L0, Norm.L1, Norm.L2, Norm.LINF):
        libraries = {e.library for e in entries(norm)}
        assert {"advbench", "adv-lib"} <= libraries, norm


def test_cli_rejects_a_bad_budget(tmp_path: Path, cache_dir: Path) -> None:
    out = advbench("attackbench", "--n", "4", "--budget", "1", cwd=tmp_path, cache=cache_dir)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == \
        "advbench: error: budget must be >= 2 calls per sample, got 1"
