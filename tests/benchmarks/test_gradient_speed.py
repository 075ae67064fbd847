"""FGSM and PGD-10 (Linf, eps 0.2): advbench vs foolbox vs torchattacks on the trained LeNet;
and PGD-40 robust-accuracy evaluation with per-sample early stop (128 rows refilled from the
queue of 512 digits) vs the same attack at full budget."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from attacks import run_attack
from bench import peers
from bench.core.target import Target
from tests.benchmarks.conftest import spread_over_classes

EPS, STEP, STEPS, N = 0.2, 0.05, 10, 512


@pytest.fixture(scope="module")
def batch(mnist5k: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = spread_over_classes(mnist5k.test, N)
    return x.to(device), y.to(device)


def _acc(target: Target, x_adv: torch.Tensor, y: torch.Tensor) -> float:
    return float((target.predict_logits(x_adv).argmax(1) == y).float().mean())


def _ours(name: str, params: dict[str, Any], batch_size: int | None = None) -> Any:
    def attack(target: Target, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return run_attack(name, target, x, y, eps=EPS, params=params, batch_size=batch_size,
                          generator=torch.Generator(x.device).manual_seed(0)).x_adv
    return attack


def _peer(kind: str, library: str) -> Any:
    def run(target: Target, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if kind == "fgsm":
            return peers.fgsm(library, target, x, y, EPS)()
        return peers.pgd(library, target, x, y, EPS, STEP, STEPS)()
    return run


CASES = {
    ("fgsm", "advbench"): _ours("fgsm", {}),
    ("fgsm", "foolbox"): _peer("fgsm", "foolbox"),
    ("fgsm", "torchattacks"): _peer("fgsm", "torchattacks"),
    ("pgd10", "advbench"): _ours("pgd", {"steps": STEPS, "step_size": STEP}),
    ("pgd10", "foolbox"): _peer("pgd", "foolbox"),
    ("pgd10", "torchattacks"): _peer("pgd", "torchattacks"),
    ("pgd40-eval", "advbench"): _ours("pgd", {"steps": 40, "step_size": EPS / 10}, 128),
    ("pgd40-eval", "advbench-full-budget"): _ours(
        "pgd", {"steps": 40, "step_size": EPS / 10, "early_stop": False}, 128),
}


@pytest.mark.parametrize("group,library", sorted(CASES))
def test_gradient_attack_speed(group: str, library: str, model: Target, batch: Any,
                               benchmark: Any, record: Any) -> None:
    benchmark.group = group
    x, y = batch
    run = CASES[(group, library)]
    with model.evaluating():
        x_adv = benchmark.pedantic(run, args=(model, x, y), rounds=5, warmup_rounds=1)
    acc = _acc(model, x_adv, y)
    assert float((x_adv - x).abs().max()) <= EPS + 1e-5
    record(group, library, acc, N)
