"""The decision-based attacks (HopSkipJump, the Boundary attack): labels only (a model that
exposes nothing but its label gives the same result), their query caps, and their distances
against foolbox's HopSkipJumpAttack and BoundaryAttack at the same number of queries per
sample."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from attacks import run_attack
from attacks.boundary import BoundaryParams, boundary_core
from attacks.hopskipjump import HopSkipJumpParams, hopskipjump_core
from bench.core.calls import ModelCalls
from bench.core.norms import Norm
from bench.core.target import Target


class OneHot(nn.Module):
    """The model's label as a one-hot vector: all a label-only API shows."""

    def __init__(self, target: Target) -> None:
        super().__init__()
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(self.target(x).argmax(1), 10).float() * 7.0


def queries_per_sample(target: Target, n: int, run: Callable[[], torch.Tensor]
                       ) -> tuple[torch.Tensor, int]:
    """What ``run`` (a peer's attack on ``n`` images) returns, and the images per sample it
    passed through ``target``'s forward."""
    counted = {"n": 0}

    def count(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        counted["n"] += inputs[0].shape[0]

    hook = target.register_forward_pre_hook(count)
    try:
        out = run()
    finally:
        hook.remove()
    return out, counted["n"] // n


@pytest.fixture(scope="module")
def startable(lenet: Target, digits: tuple[torch.Tensor, torch.Tensor]
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """12 digits of classes that uniform noise is not classified as (foolbox's start needs
    noise of another class)."""
    x, y = digits
    with lenet.evaluating():
        noise_class = lenet.predict_logits(torch.rand(200, 1, 28, 28,
                                                      generator=torch.Generator().manual_seed(0)))
    keep = ~torch.isin(y, noise_class.argmax(1).unique())
    return x[keep][::9][:12], y[keep][::9][:12]


def _run(target: Target, x: torch.Tensor, y: torch.Tensor, norm: Norm, **params: int
         ) -> tuple[torch.Tensor, ModelCalls]:
    calls = ModelCalls(target)
    _, dist = hopskipjump_core(calls, x, y, norm=norm, params=HopSkipJumpParams(**params),
                               generator=torch.Generator().manual_seed(0))
    return dist, calls


@pytest.mark.parametrize("norm", [Norm.L2, Norm.LINF])
def test_reads_labels_only(norm: Norm, lenet: Target,
                           startable: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = startable[0][:6], startable[1][:6]
    label_only = Target(OneHot(lenet), num_classes=10, input_shape=(1, 28, 28), name="api")
    with lenet.evaluating():
        plain, _ = _run(lenet, x, y, norm, steps=3, initial_evals=30)
        api, _ = _run(label_only, x, y, norm, steps=3, initial_evals=30)
    assert torch.isfinite(plain).all()
    assert torch.equal(plain, api)


def test_query_cap_is_kept_and_more_queries_get_closer(
        lenet: Target, startable: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = startable
    with lenet.evaluating():
        few, calls = _run(lenet, x, y, Norm.L2, steps=100, max_queries=400)
        many, _ = _run(lenet, x, y, Norm.L2, steps=100, max_queries=2000)
    assert calls.n_forward <= 400 * len(x) and calls.n_backward == 0
    assert float(many.median()) < float(few.median())
    assert bool((many <= few * 1.05).all())


@pytest.mark.parametrize("norm", [Norm.L2, Norm.LINF])
def test_as_close_as_foolbox_at_its_query_count(norm: Norm, lenet: Target,
                                                startable: tuple[torch.Tensor, torch.Tensor]
                                                ) -> None:
    """foolbox 3's HopSkipJumpAttack (5 iterations, its defaults otherwise) and ours under a
    cap of the queries foolbox made per sample: our median distance over the samples both
    fooled is at most foolbox's + 10% (a 12-digit check; the benchmark's goal is 2%)."""
    import foolbox as fb

    x, y = startable
    with lenet.evaluating():
        torch.manual_seed(0)
        np.random.seed(0)
        theirs, queries = queries_per_sample(lenet, len(x), lambda: fb.attacks.HopSkipJumpAttack(
            steps=5, constraint="l2" if norm is Norm.L2 else "linf").run(
            fb.PyTorchModel(lenet, bounds=(0, 1)), x, fb.criteria.Misclassification(y)))
        ours, calls = _run(lenet, x, y, norm, steps=1000, max_queries=queries)
        fooled = lenet.predict_logits(theirs).argmax(1) != y
    delta = (theirs - x).flatten(1)
    their_dist = delta.norm(dim=1) if norm is Norm.L2 else delta.abs().amax(1)
    both = fooled & torch.isfinite(ours)
    assert int(both.sum()) >= len(x) - 1
    assert calls.n_forward <= queries * len(x)
    assert float(ours[both].median()) <= 1.10 * float(their_dist[both].median()), (
        float(ours[both].median()), float(their_dist[both].median()), queries)


def test_eps_given_stops_a_sample_inside_it(lenet: Target,
                                            startable: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = startable
    budget = {"steps": 30, "max_queries": 1500, "initial_evals": 50}
    with lenet.evaluating():
        res = run_attack("hopskipjump", lenet, x, y, norm="l2", eps=3.0, params=budget)
        free = run_attack("hopskipjump", lenet, x, y, norm="l2", eps=None, params=budget)
    assert res.n_forward < free.n_forward  # samples inside 3.0 stopped querying
    inside = int((res.l2[res.success] <= 3.0 + 1e-3).sum())
    assert inside >= int((free.l2[free.success] <= 3.0 + 1e-3).sum()) - 1 and inside > 0


def _boundary(target: Target, x: torch.Tensor, y: torch.Tensor, **params: int
              ) -> tuple[torch.Tensor, ModelCalls]:
    calls = ModelCalls(target)
    _, dist = boundary_core(calls, x, y, params=BoundaryParams(**params),
                            generator=torch.Generator().manual_seed(0))
    return dist, calls


def test_boundary_reads_labels_only_and_keeps_its_cap(
        lenet: Target, startable: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = startable[0][:6], startable[1][:6]
    label_only = Target(OneHot(lenet), num_classes=10, input_shape=(1, 28, 28), name="api")
    with lenet.evaluating():
        plain, calls = _boundary(lenet, x, y, max_queries=300)
        api, _ = _boundary(label_only, x, y, max_queries=300)
        longer, _ = _boundary(lenet, x, y, max_queries=1200)
    assert torch.isfinite(plain).all() and torch.equal(plain, api)
    assert calls.n_forward <= 300 * len(x) and calls.n_backward == 0
    assert float(longer.median()) < float(plain.median())


def test_boundary_as_close_as_foolbox_at_its_query_count(
        lenet: Target, startable: tuple[torch.Tensor, torch.Tensor]) -> None:
    """foolbox 3's BoundaryAttack (800 steps, its defaults otherwise) and ours capped at the
    queries foolbox made per sample: our median L2 distance at most foolbox's + 10%."""
    import foolbox as fb

    x, y = startable
    with lenet.evaluating():
        torch.manual_seed(0)
        theirs, queries = queries_per_sample(lenet, len(x), lambda: fb.attacks.BoundaryAttack(
            steps=800).run(fb.PyTorchModel(lenet, bounds=(0, 1)), x,
                           fb.criteria.Misclassification(y)))
        ours, calls = _boundary(lenet, x, y, max_queries=queries)
    their_dist = (theirs - x).flatten(1).norm(dim=1)
    assert calls.n_forward <= queries * len(x) and torch.isfinite(ours).all()
    assert float(ours.median()) <= 1.10 * float(their_dist.median()), (
        float(ours.median()), float(their_dist.median()), queries)
