"""Decision-based attacks as a benchmark (with ``--benchmark-enable``): HopSkipJump (L2, Linf)
and the Boundary attack (L2) against foolbox 3.3's and ART's implementations on the zoo LeNet,
50 mnist5k test digits of classes uniform noise is not classified as (every start needs noise of
another class). Each peer runs at a fixed iteration budget; its label queries per sample are
counted on the model, and advbench's attack runs capped at that count. Printed per pair: the
queries, both median distances over the samples both fooled, and both wall times.

Goal checked: advbench's median distance at most each peer's + 2% at that peer's query count
(so at most the better peer's + 2%). Speed is reported as the ratio of wall times on the same digits and model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from attacks.boundary import BoundaryParams, boundary_core
from attacks.hopskipjump import HopSkipJumpParams, hopskipjump_core
from bench.core.calls import ModelCalls
from bench.core.norms import Norm
from bench.core.target import Target

N = 50


@pytest.fixture(scope="module")
def case(request: pytest.FixtureRequest, lenet: Target, mnist5k: Any
         ) -> tuple[torch.Tensor, torch.Tensor]:
    if not request.config.getoption("benchmark_enable"):
        pytest.skip("the peers' decision-based attacks at thousands of queries per digit: run "
                    "with --benchmark-enable")
    x, y = mnist5k.test.x, mnist5k.test.y
    with lenet.evaluating():
        noise = lenet.predict_logits(torch.rand(500, 1, 28, 28,
                                                generator=torch.Generator().manual_seed(0)))
    keep = ~torch.isin(y, noise.argmax(1).unique())
    return x[keep][::7][:N], y[keep][::7][:N]


def _counted(target: Target, run: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, int, float]:
    counted = {"n": 0}

    def count(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        counted["n"] += inputs[0].shape[0]

    hook = target.register_forward_pre_hook(count)
    started = time.perf_counter()
    try:
        out = run()
    finally:
        hook.remove()
    return out, counted["n"], time.perf_counter() - started


def _peer(library: str, attack: str, norm: Norm, target: Target, x: torch.Tensor,
          y: torch.Tensor) -> Callable[[], torch.Tensor]:
    if library == "foolbox":
        import foolbox as fb

        model = fb.PyTorchModel(target, bounds=target.bounds)
        fb_attack = fb.attacks.HopSkipJumpAttack(
            steps=15, constraint="l2" if norm is Norm.L2 else "linf") if attack == \
            "hopskipjump" else fb.attacks.BoundaryAttack(steps=5000)
        return lambda: fb_attack.run(model, x, fb.criteria.Misclassification(y))
    from art.attacks.evasion import BoundaryAttack, HopSkipJump
    from art.estimators.classification import PyTorchClassifier

    class Float32(nn.Module):  # ART's decision-based attacks hand the model float64 arrays
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return target(z.float())

    classifier = PyTorchClassifier(Float32(), loss=nn.CrossEntropyLoss(),
                                   input_shape=(1, 28, 28), nb_classes=10,
                                   clip_values=target.bounds)
    art_attack = HopSkipJump(classifier, norm=2 if norm is Norm.L2 else np.inf, max_iter=15,
                             verbose=False) if attack == "hopskipjump" else \
        BoundaryAttack(classifier, targeted=False, max_iter=200, verbose=False)

    def run() -> torch.Tensor:
        return torch.from_numpy(art_attack.generate(x.numpy(), y=y.numpy()).astype(np.float32))
    return run


def _ours(attack: str, norm: Norm, target: Target, x: torch.Tensor, y: torch.Tensor,
          queries: int) -> Callable[[], torch.Tensor]:
    def run() -> torch.Tensor:
        calls, gen = ModelCalls(target), torch.Generator().manual_seed(0)
        if attack == "hopskipjump":
            best, _ = hopskipjump_core(calls, x, y, norm=norm, generator=gen,
                                       params=HopSkipJumpParams(steps=10_000,
                                                                max_queries=queries))
        else:
            best, _ = boundary_core(calls, x, y, generator=gen,
                                    params=BoundaryParams(max_queries=queries))
        return best
    return run


def _distance(x_adv: torch.Tensor, x: torch.Tensor, norm: Norm) -> torch.Tensor:
    delta = (x_adv - x).flatten(1)
    return delta.norm(dim=1) if norm is Norm.L2 else delta.abs().amax(1)


@pytest.mark.timeout(7200)
@pytest.mark.parametrize("attack,norm", [("hopskipjump", Norm.L2), ("hopskipjump", Norm.LINF),
                                         ("boundary", Norm.L2)])
def test_decision_based_against_peers(attack: str, norm: Norm, lenet: Target,
                                      case: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = case
    ratios = []
    print()
    with lenet.evaluating():
        for library in ("foolbox", "art"):
            torch.manual_seed(0)
            np.random.seed(0)
            theirs, calls, their_s = _counted(lenet, _peer(library, attack, norm, lenet, x, y))
            queries = calls // len(x)
            ours, our_calls, our_s = _counted(lenet, _ours(attack, norm, lenet, x, y, queries))
            pred = lenet.predict_logits(torch.cat([theirs, ours])).argmax(1)
            both = (pred[:len(x)] != y) & (pred[len(x):] != y)
            mine = float(_distance(ours, x, norm)[both].median())
            peer = float(_distance(theirs, x, norm)[both].median())
            ratios.append(mine / peer)
            print(f"{attack} {norm.value} vs {library}: {queries} queries/sample (ours "
                  f"{our_calls // len(x)}), median {mine:.4f} vs {peer:.4f} on {int(both.sum())} "
                  f"digits, {our_s:.1f} s vs {their_s:.1f} s ({their_s / our_s:.1f}x)")
            assert our_calls <= calls
    assert max(ratios) <= 1.02  # against each peer at its own query count
