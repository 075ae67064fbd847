"""Properties that hold for every input (hypothesis): eps strings parse to the fraction they
spell, projections land in the eps ball, random starts and attacks stay inside the bounds and
the ball."""

from __future__ import annotations

import math
from fractions import Fraction

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attacks import Attack, ThreatModel
from bench.core.norms import Norm, norm_of, project, random_start
from tests.conftest import make_tiny_target

NORMS = st.sampled_from([Norm.LINF, Norm.L2])


@given(num=st.integers(0, 255), den=st.integers(1, 255))
def test_fraction_strings_parse_to_their_value(num: int, den: int) -> None:
    threat = ThreatModel.parse("linf", f"{num}/{den}")
    assert threat.eps == float(Fraction(num, den)) and threat.eps_display == f"{num}/{den}"


@given(eps=st.floats(0, 1e6, allow_nan=False))
def test_numbers_parse_to_themselves(eps: float) -> None:
    threat = ThreatModel.parse("l2", eps)
    assert threat.eps == eps and float(threat.eps_display) == float(f"{eps:g}")


@given(norm=NORMS, eps=st.floats(0, 4), seed=st.integers(0, 2**16), scale=st.floats(0, 10))
def test_projection_lands_in_the_ball_and_keeps_inner_points(norm: Norm, eps: float, seed: int,
                                                            scale: float) -> None:
    delta = scale * torch.randn(5, 1, 6, 6, generator=torch.Generator().manual_seed(seed))
    projected = project(delta, norm, eps)
    assert bool((norm_of(projected, norm) <= eps * (1 + 1e-5) + 1e-6).all())
    inside = norm_of(delta, norm) <= eps
    assert torch.allclose(projected[inside], delta[inside])


@given(norm=NORMS, eps=st.floats(0.01, 2), seed=st.integers(0, 2**16))
def test_random_starts_lie_in_the_ball(norm: Norm, eps: float, seed: int) -> None:
    x = torch.rand(4, 1, 6, 6)
    delta = random_start(x, norm, eps, torch.Generator().manual_seed(seed))
    assert bool((norm_of(delta, norm) <= eps * (1 + 1e-5)).all())


@settings(max_examples=15, deadline=None)
@given(name=st.sampled_from(["fgsm", "bim", "pgd"]), norm=NORMS,
       eps=st.floats(0, 1), lo=st.floats(-1, 0.4), span=st.floats(0.1, 2),
       seed=st.integers(0, 2**16))
def test_gradient_attacks_stay_in_the_bounds_and_the_ball(name: str, norm: Norm, eps: float,
                                                          lo: float, span: float,
                                                          seed: int) -> None:
    """Any bounds, any budget: every adversarial is inside both (eps = 0 changes nothing)."""
    target = make_tiny_target()
    target.bounds = (lo, lo + span)
    g = torch.Generator().manual_seed(seed)
    x = lo + span * torch.rand(6, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (6,), generator=g)
    budget = eps if norm is Norm.LINF else eps * math.sqrt(28 * 28) / 4
    budget = min(budget, span)
    res = Attack.create(name, norm=norm.value, eps=budget, params={"steps": 3} if name != "fgsm"
                        else None)(target, x, y, generator=g)
    assert float(res.x_adv.min()) >= lo - 1e-6 and float(res.x_adv.max()) <= lo + span + 1e-6
    assert bool((norm_of(res.x_adv - x, norm) <= budget * (1 + 1e-5) + 1e-6).all())
    if budget == 0:
        assert torch.equal(res.x_adv, x)
