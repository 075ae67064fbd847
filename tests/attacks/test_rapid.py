"""``rapid``'s parts checked on their own: MALT's target order against the exact boundary
distances of a linear classifier, the Square probe as the first queries of one Square search
that the full budget continues, the budgets it refuses, and a decision that does not depend on
the scale of the logits."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from attacks import run_attack
from attacks.apgd import malt_order
from attacks.cascade import StandardParams, decision, members
from bench.core.attack import Attack
from bench.core.calls import ModelCalls
from bench.core.errors import BadInput
from bench.core.indicators import BLACK_BOX_CLOSER, BLACK_BOX_WINS
from bench.core.members import MemberStats
from bench.core.norms import Norm
from bench.core.target import Target
from tests.linear import linear_target
from tests.masking import Quantised


@pytest.mark.parametrize("norm,dual", [(Norm.LINF, 1.0), (Norm.L2, 2.0)])
def test_malt_orders_targets_by_the_exact_distance_to_each_boundary(norm: Norm, dual: float
                                                                    ) -> None:
    """On a linear classifier the distance from x to the boundary z_t = z_y is exactly
    |(w_t − w_y)·x + b_t − b_y| / ||w_t − w_y||_* (dual norm: l1 for Linf, l2 for L2), computed
    here from the weights; MALT's order must be the order of those distances, which differs
    from the logit order on most samples. One forward and C − 1 backward passes per image."""
    target = linear_target()
    w, b = target.model[1].weight.detach(), target.model[1].bias.detach()
    x = torch.rand(200, 1, 4, 5, generator=torch.Generator().manual_seed(1))
    y = target.predict_logits(x).argmax(1)
    calls = ModelCalls(target)
    order = malt_order(calls, x, y, norm, rows=64)
    gap = (x.flatten(1) @ w.T + b) - (x.flatten(1) @ w.T + b).gather(1, y[:, None])
    length = torch.linalg.vector_norm(w[None, :, :] - w[y][:, None, :], ord=dual, dim=2)
    distance = gap.abs() / length
    distance.scatter_(1, y[:, None], float("inf"))
    exact = distance.argsort(dim=1)[:, :-1]
    assert torch.equal(order, exact)
    logit_order = target.predict_logits(x).argsort(dim=1, descending=True)[:, 1:]
    assert int((order[:, 0] != logit_order[:, 0]).sum()) >= 50  # the test can tell them apart
    assert (calls.n_forward, calls.n_backward) == (200, 200 * 5)


def test_malt_target_order_adds_its_jacobian_to_apgd_ts_calls() -> None:
    """APGD-T with MALT's order costs what it costs with the logit order plus C − 1 backward
    passes per image (the one forward of each order's clean pass is the same; a budget that
    fools nothing, so both run every step)."""
    target = linear_target()
    x = torch.rand(30, 1, 4, 5, generator=torch.Generator().manual_seed(2))
    y = target.predict_logits(x).argmax(1)
    params = {"steps": 4, "target_classes": 2}
    runs = {order: run_attack("apgd_t", target, x, y, eps=1e-6, params={
        **params, "target_order": order}) for order in ("logits", "malt")}
    assert not bool(runs["malt"].success.any())
    assert runs["malt"].n_forward == runs["logits"].n_forward
    assert runs["malt"].n_backward - runs["logits"].n_backward == 30 * 5


@pytest.mark.parametrize("norm,eps", [("linf", 0.15), ("l2", 2.0)])
def test_a_square_search_in_two_parts_takes_the_steps_of_one_run(norm: str, eps: float,
                                                                 lenet: Target,
                                                                 mnist5k: Any) -> None:
    """Square stopped after 30 of 120 queries and continued from its points with the same
    generator returns exactly the adversarials of one uninterrupted 120-query run; the parts
    spend the run's queries and one more per continued sample (its starting point's
    evaluation)."""
    x, y = mnist5k.test.x[:30], mnist5k.test.y[:30]
    whole = run_attack("square", lenet, x, y, eps=eps, norm=norm, params={"queries": 120},
                       generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    first = run_attack("square", lenet, x, y, eps=eps, norm=norm,
                       params={"queries": 120, "stop_query": 30}, generator=g)
    left = torch.nonzero(~first.success).flatten()
    assert 0 < left.numel() and int(whole.success.sum()) > int(first.success.sum())
    rest = run_attack("square", lenet, x[left], y[left], eps=eps, norm=norm,
                      params={"queries": 120, "start_query": 30}, generator=g,
                      x_init=first.artifacts["search"][left])
    x_adv, success = first.x_adv.clone(), first.success.clone()
    x_adv[left], success[left] = rest.x_adv, rest.success
    assert torch.equal(x_adv, whole.x_adv) and torch.equal(success, whole.success)
    spent = first.artifacts["queries"].clone()
    spent[left] += rest.artifacts["queries"]
    extra = torch.zeros_like(spent)
    extra[left] = 1
    assert torch.equal(spent, whole.artifacts["queries"] + extra)


def test_square_refuses_parts_that_do_not_fit_its_budget() -> None:
    for params in ({"queries": 100, "stop_query": 150}, {"queries": 100, "start_query": 100},
                   {"queries": 100, "start_query": 50, "stop_query": 40},
                   {"queries": 100, "stop_query": 50, "restarts": 2}):
        with pytest.raises(BadInput, match="start_query|restart"):
            Attack.create("square", eps=0.1, params=params)


def test_only_an_attack_that_takes_starting_points_gets_them() -> None:
    target = linear_target()
    x = torch.rand(4, 1, 4, 5)
    y = target.predict_logits(x).argmax(1)
    with pytest.raises(BadInput, match="takes no starting points"):
        run_attack("pgd", target, x, y, eps=0.1, x_init=x)
    with pytest.raises(BadInput, match="x_init must have the inputs' shape"):
        run_attack("square", target, x, y, eps=0.1, x_init=x[:2])


@pytest.mark.parametrize("probe,queries", [(500, 200), (200, 200)])
def test_rapid_refuses_a_probe_as_large_as_squares_budget(probe: int, queries: int) -> None:
    with pytest.raises(BadInput, match=r"probe_queries \(\d+\) must be below queries"):
        StandardParams(version="rapid", probe_queries=probe, queries=queries)


def test_only_rapid_takes_a_probe() -> None:
    with pytest.raises(BadInput, match="rapid version only"):
        StandardParams(version="standard", probe_queries=20)


class Scaled(nn.Module):
    """A model's logits multiplied by ``factor``: the same classifier."""

    def __init__(self, model: nn.Module, factor: float) -> None:
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * self.factor


def test_rapids_decision_does_not_depend_on_the_logit_scale(lenet: Target, mnist5k: Any
                                                           ) -> None:
    """The quantised LeNet (zero gradients) with its logits multiplied by 100 or by 0.01 is
    the same classifier: every member's samples, what it fooled, how often the probe got
    closer to the boundary than the white-box members, and so the decision are the same."""
    x, y = mnist5k.test.x[:30], mnist5k.test.y[:30]
    params = {"version": "rapid", "steps": 5, "queries": 200, "probe_queries": 40}
    said, spent = {}, []
    for scale in (1.0, 100.0, 0.01):
        target = Target.from_module(Scaled(Quantised(lenet.model), scale),
                                    input_shape=(1, 28, 28), num_classes=10)
        res = run_attack("standard", target, x, y, eps=0.25, params=params,
                         generator=torch.Generator().manual_seed(0))
        stats = MemberStats.read(res.artifacts["members"])
        said[scale] = ([(s.given, s.fooled, s.beat_white_box, s.skipped) for s in stats],
                       decision(members(StandardParams(**params)), stats))
        spent.append(stats)
    assert said[1.0] == said[100.0] == said[0.01]
    # zero gradients: Square's budget ran, probe and continuation one search of 200 queries
    # (each part's clean check and the continuation's re-evaluation of its start aside)
    probe, rest = spent[0][2], spent[0][3]
    assert rest.given > 0 and rest.skipped == 0
    assert probe.n_forward <= probe.given * (40 + 1)
    assert rest.n_forward <= rest.given * (200 - 40 + 2)
    assert said[1.0][0][2][2] > 0  # the probe got closer on some samples: the test compares


def test_a_probe_that_only_got_closer_is_not_called_a_black_box_win() -> None:
    """``black-box-wins`` says a black-box member fooled something; a probe that only got
    closer raises ``black-box-closer``."""
    from attacks.cascade import failure_reasons

    chosen = members(StandardParams(version="rapid"))
    white = [MemberStats(50, 0, 500, 500, 1.0), MemberStats(50, 0, 500, 500, 1.0)]
    closer = failure_reasons(chosen, white + [MemberStats(50, 0, 500, 0, 1.0,
                                                          beat_white_box=10)])
    assert [code for code, _ in closer] == [BLACK_BOX_CLOSER]
    fooled = failure_reasons(chosen, white + [MemberStats(50, 2, 500, 0, 1.0)])
    assert [code for code, _ in fooled] == [BLACK_BOX_WINS]
