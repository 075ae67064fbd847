"""One registry-driven contract every registered attack must pass, on a trained classifier and
on a discriminator target (DESIGN.md "Attack" / "AttackResult")."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from attacks import ATTACKS, AttackSpec, run_attack
from bench.core.errors import BadInput
from bench.core.norms import Norm, norm_of
from bench.core.target import Target
from defenses import DEFENSES
from tests.conftest import make_tiny_target, small_params

EPS = {Norm.LINF: 0.2, Norm.L2: 2.0, Norm.L1: 10.0, Norm.L0: 3.0}
CASES = [(name, norm) for name in ATTACKS.names() for norm in ATTACKS.get(name).norms]
FIT = torch.Generator().manual_seed(5)


def behind_its_defense(name: str, target: Target) -> Target:
    """``target`` itself, or for an attack of one defense (SmoothAdv) ``target`` behind that
    defense, untrained (its defaults; a certificate of 100 draws)."""
    only_on = ATTACKS.get(name).only_on
    if not only_on:
        return target
    spec = DEFENSES.get(only_on[0])
    return spec.build(target, spec.make_params({"n": 100}))


def attack(name: str, target: Target, x: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> Any:
    """run_attack (on the target behind the attack's own defense, if it has one), with fitting
    data (other images than x) for attacks that need it."""
    if ATTACKS.get(name).needs_fit_data:
        kwargs["fit_data"] = (x.flip(0).roll(3, dims=2), y.flip(0))
    return run_attack(name, behind_its_defense(name, target), x, y, **kwargs)


@pytest.fixture(params=["classifier", "discriminator", "dcgan", "wgan_gp"])
def target_and_data(request: pytest.FixtureRequest, lenet: Target,
                    digits: tuple[torch.Tensor, torch.Tensor]) -> tuple[Target, torch.Tensor,
                                                                         torch.Tensor]:
    x, y = digits
    x, y = x[::6], y[::6]  # 34 digits, every class
    if request.param == "classifier":
        return lenet, x, y
    if request.param in ("dcgan", "wgan_gp"):
        # a trained discriminator (the DCGAN's) or critic (at its calibrated threshold): real
        # digits (class 1) and its own generator's samples (class 0)
        gan = request.getfixturevalue("trained_dcgan") if request.param == "dcgan" else \
            request.getfixturevalue("trained_wgan_gp")
        fakes = gan.sample(len(x) // 2, seed=11)
        x = torch.cat([x[: len(x) - len(fakes)], fakes])
        real = (torch.arange(len(x)) < len(x) - len(fakes)).long()
        return gan.target, x, real
    target = make_tiny_target("discriminator")  # a tiny untrained one with dropout and BN
    real = torch.arange(len(x)) % 2  # half "real", half "fake"
    return target, x, real


def _eps(spec: AttackSpec, norm: Norm, value: float | None = None) -> float | None:
    if spec.minimal:
        return None
    return EPS[norm] if value is None else value


@pytest.mark.parametrize("name,norm", CASES)
def test_inside_bounds_and_eps_ball(name: str, norm: Norm, target_and_data: Any) -> None:
    target, x, y = target_and_data
    spec = ATTACKS.get(name)
    eps = _eps(spec, norm)
    res = attack(name, target, x, y, norm=norm, eps=eps, params=small_params(spec),
                     generator=torch.Generator().manual_seed(0))
    lo, hi = target.bounds
    assert res.x_adv.shape == x.shape
    assert float(res.x_adv.min()) >= lo and float(res.x_adv.max()) <= hi
    dist = norm_of(res.x_adv - x, norm)
    if eps is not None:
        assert float(dist.max()) <= eps * (1 + 1e-5) + 1e-6
    # the reported norms, against a direct computation from the returned images
    delta = (res.x_adv - x).double()
    torch.testing.assert_close(res.l2.double(), delta.flatten(1).pow(2).sum(1).sqrt(),
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(res.linf.double(), delta.flatten(1).abs().max(1).values)
    changed_pixels = (delta != 0).any(dim=1).flatten(1).sum(1)  # a pixel counts once
    assert torch.equal(res.l0.long(), changed_pixels)
    assert res.n_forward >= len(x) and res.n_backward >= 0


# UAP's ξ and one-pixel's k must be > 0; see test_positive_budgets_are_enforced.
@pytest.mark.parametrize("name,norm", [c for c in CASES if not ATTACKS.get(c[0]).minimal
                                       and not ATTACKS.get(c[0]).positive_budget])
def test_eps_zero_reproduces_clean_predictions(name: str, norm: Norm,
                                               target_and_data: Any) -> None:
    target, x, y = target_and_data
    spec = ATTACKS.get(name)
    res = attack(name, target, x, y, norm=norm, eps=0.0, params=small_params(spec))
    assert torch.equal(res.x_adv, x)
    if behind_its_defense(name, target).randomised:
        return  # its success is one draw's; the runner judges over draws (tests/defenses)
    clean_wrong = target.predict_logits(x).argmax(1) != y
    if not getattr(spec.make_params(small_params(spec)), "targeted", False):
        assert torch.equal(res.success, clean_wrong)


@pytest.mark.parametrize("name", [n for n in ATTACKS.names() if ATTACKS.get(n).positive_budget])
def test_positive_budgets_are_enforced(name: str, lenet: Target,
                                       digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = digits[0][:2], digits[1][:2]
    norm = ATTACKS.get(name).norms[0]
    for eps in (0, -1):
        with pytest.raises(BadInput, match="eps"):
            attack(name, lenet, x, y, norm=norm, eps=eps)


@pytest.mark.parametrize("name", [n for n in ATTACKS.names() if Norm.L0 in ATTACKS.get(n).norms])
def test_l0_budget_is_a_count(name: str, lenet: Target,
                              digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = digits[0][:2], digits[1][:2]
    for eps in (1.5, 785):
        with pytest.raises(BadInput, match="pixel|exceeds"):
            attack(name, lenet, x, y, norm="l0", eps=eps)


@pytest.mark.parametrize("name,norm", CASES)
def test_training_flags_restored(name: str, norm: Norm, lenet: Target,
                                 digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    target = make_tiny_target()
    target.train()
    target.model.body[1].eval()  # a mixed state: the exact flags must come back
    before = [m.training for m in target.modules()]
    x, y = digits[0][:16], digits[1][:16]
    spec = ATTACKS.get(name)
    attack(name, target, x, y, norm=norm, eps=_eps(spec, norm), params=small_params(spec))
    assert [m.training for m in target.modules()] == before


@pytest.mark.parametrize("name,norm", CASES)
def test_same_seed_same_output(name: str, norm: Norm, target_and_data: Any) -> None:
    target, x, y = target_and_data
    spec = ATTACKS.get(name)
    runs = [attack(name, target, x, y, norm=norm, eps=_eps(spec, norm),
                       params=small_params(spec), generator=torch.Generator().manual_seed(7))
            for _ in range(2)]
    assert torch.equal(runs[0].x_adv, runs[1].x_adv)
    assert torch.equal(runs[0].success, runs[1].success)


def _has_targeted_mode(name: str) -> bool:
    return "targeted" in {f.name for f in dataclasses.fields(ATTACKS.get(name).params_cls)}


@pytest.mark.parametrize("name,norm,targeted", [
    (name, norm, targeted) for name, norm in CASES
    for targeted in ((False, True) if _has_targeted_mode(name) else (False,))])
def test_success_equals_fresh_fp32_evaluation(name: str, norm: Norm, targeted: bool,
                                              target_and_data: Any) -> None:
    target, x, y = target_and_data
    spec = ATTACKS.get(name)
    params = small_params(spec) | ({"targeted": True} if targeted else {})
    res = attack(name, target, x, y, norm=norm, eps=_eps(spec, norm), params=params)
    assert res.success.dtype == torch.bool and res.success.shape == y.shape
    if behind_its_defense(name, target).randomised:
        return  # its success is one draw's; the runner judges over draws (tests/defenses)
    pred = target.predict_logits(res.x_adv).argmax(1)
    if targeted:
        assert res.y_target is not None
        assert torch.equal(res.success, pred == res.y_target)
    else:
        assert torch.equal(res.success, pred != y)
    assert res.success.dtype == torch.bool and res.success.shape == y.shape


@pytest.mark.parametrize("name,norm", CASES)
def test_dtype_and_device_preserved(name: str, norm: Norm, target_and_data: Any) -> None:
    target, x, y = target_and_data
    spec = ATTACKS.get(name)
    res = attack(name, target, x, y, norm=norm, eps=_eps(spec, norm), params=small_params(spec))
    assert res.x_adv.dtype == x.dtype and res.x_adv.device == x.device
    assert res.success.device == x.device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name,norm", CASES)
def test_runs_on_cuda(name: str, norm: Norm, lenet: Target,
                      digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    import copy

    target = copy.deepcopy(lenet).cuda()
    x, y = digits[0][:32].cuda(), digits[1][:32].cuda()
    spec = ATTACKS.get(name)
    res = attack(name, target, x, y, norm=norm, eps=_eps(spec, norm), params=small_params(spec),
                     generator=torch.Generator("cuda").manual_seed(0))
    assert res.x_adv.device == x.device and res.x_adv.dtype == x.dtype
    assert torch.equal(res.success, target.predict_logits(res.x_adv).argmax(1) != y)
