"""Randomised and non-differentiable defenses, attacked adaptively (Athalye, Carlini & Wagner,
ICML 2018): the preprocessing defenses, BPDA, EOT, the ``rand`` cascade, draws in the runner,
and randomized smoothing's certificate, checked against direct computations."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy.stats import norm as gaussian
from torch import nn

from bench.config import parse_config
from bench.core.attack import Attack, run_attack
from bench.core.calls import ModelCalls
from bench.core.errors import BadInput
from bench.core.losses import cross_entropy_loss
from bench.core.smoothing import SmoothedTarget
from bench.core.target import Target
from bench.runner import RunOptions
from bench.sweep import run_sweep
from defenses import DEFENSES, fitted_defense
from leaderboards.store import ResultStore


def defended(base: Target, name: str, **params: Any) -> Target:
    """``base`` behind the untrained defense ``name``, in eval mode (a copy: the session's
    LeNet keeps its mode)."""
    target = fitted_defense(DEFENSES.get(name), copy.deepcopy(base), None, params, seed=0,
                            cache=None)  # type: ignore[arg-type]
    return target.eval()


@pytest.fixture(scope="module")
def batch(digits: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return digits[0][:40], digits[1][:40]


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(cross_entropy_loss(model(x), y).sum(), x)
    return grad


def test_bit_depth_rounds_to_its_levels_and_bpda_passes_the_models_gradient_there(
        lenet: Target, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch
    target = defended(lenet, "bit_depth", bits=2)
    assert target.preprocess is not None
    squeezed = target.preprocess.transform(x, torch.Generator())
    levels = torch.unique(squeezed)
    assert len(levels) <= 4 and torch.allclose(levels * 3, (levels * 3).round())
    model = copy.deepcopy(lenet).eval()
    assert torch.equal(target(x), model(squeezed))
    # BPDA with the identity: d f(q(x)) / dx is taken as f's gradient at q(x)
    assert torch.allclose(input_gradient(target, x, y), input_gradient(model, squeezed, y))
    with target.adaptive(bpda=False):
        assert not input_gradient(target, x, y).any()


def test_jpeg_round_trips_through_the_codec_and_cuts_the_graph_without_bpda(
        lenet: Target, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch
    target = defended(lenet, "jpeg", quality=50)
    assert target.preprocess is not None
    out = target.preprocess.transform(x, torch.Generator())
    assert out.shape == x.shape and 0 < float((out - x).abs().mean()) < 0.05
    model = copy.deepcopy(lenet).eval()
    assert torch.allclose(input_gradient(target, x, y), input_gradient(model, out, y), atol=1e-6)
    with target.adaptive(bpda=False):
        assert not input_gradient(target, x, y).any()
    with pytest.raises(BadInput, match="grayscale or RGB"):
        defended(Target(nn.Flatten(), num_classes=784, input_shape=(784,)), "jpeg")


def test_random_resize_pad_draws_its_sizes_and_offsets_from_the_generator(lenet: Target) -> None:
    target = defended(lenet, "random_resize_pad")
    assert target.randomised and target.preprocess is not None
    ones = torch.ones(400, 1, 28, 28)
    out = target.preprocess.transform(ones, torch.Generator().manual_seed(3))
    again = target.preprocess.transform(ones, torch.Generator().manual_seed(3))
    other = target.preprocess.transform(ones, torch.Generator().manual_seed(4))
    assert torch.equal(out, again) and not torch.equal(out, other)
    # each image is a side × side block of ones (bilinear inside, exact) in a zero frame
    sides = (out[:, 0] > 0.5).sum((1, 2)).double().sqrt()
    assert set(sides.round().int().tolist()) == {24, 25, 26, 27, 28}
    assert torch.allclose(sides, sides.round())
    assert bool((out[:, 0, 0, 0] == 0).any()) and bool((out[:, 0, -1, -1] == 0).any())


def test_eot_averages_draws_in_one_batched_forward(
        lenet: Target, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    """The EOT gradient equals the mean of k single-draw gradients taken on the same draws,
    and counts k calls per image."""
    x, y = batch[0][:8], batch[1][:8]
    target = defended(lenet, "random_resize_pad")
    k = 5
    with target.drawing_from(torch.Generator().manual_seed(1)), target.adaptive(eot_iter=k):
        calls = ModelCalls(target)
        loss, _, grad = calls.loss_and_grad(x, y, cross_entropy_loss)
    assert calls.n_forward == calls.n_backward == k * len(x)
    # the same draws, one copy at a time: the batched forward drew for k·N images in order
    assert target.preprocess is not None
    inputs = x.repeat(k, 1, 1, 1).requires_grad_(True)
    moved = target.preprocess.transform(inputs, torch.Generator().manual_seed(1))
    single = cross_entropy_loss(copy.deepcopy(lenet).eval()(moved), y.repeat(k)).view(k, -1)
    (manual,) = torch.autograd.grad(single.mean(0).sum(), inputs)
    assert torch.allclose(loss, single.mean(0).detach(), atol=1e-5)
    assert torch.allclose(grad, manual.view(k, *x.shape).sum(0), atol=1e-6)


def test_eot_on_a_deterministic_target_runs_once_and_says_so(
        lenet: Target, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch
    plain = run_attack("pgd", lenet, x, y, eps=0.2, params={"steps": 5})
    eot = run_attack("pgd", lenet, x, y, eps=0.2, params={"steps": 5, "eot_iter": 8})
    assert torch.equal(plain.x_adv, eot.x_adv) and plain.n_backward == eot.n_backward
    assert eot.notes == ["eot_iter 8 ran as 1: the target is deterministic, its draws identical"]
    assert not plain.notes
    with pytest.raises(BadInput, match="eot_iter must be >= 1"):
        Attack.create("pgd", eps=0.1, params={"eot_iter": 0})


def test_bpda_pgd_breaks_bit_depth_where_plain_pgd_sees_no_gradient(
        lenet: Target, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Plain PGD through rounding finds no gradient (every evaluation zero) and fools no more
    than the clean errors; BPDA-PGD fools as much as PGD does on the undefended LeNet."""
    x, y = batch
    target = defended(lenet, "bit_depth", bits=3)
    params = {"steps": 20, "step_size": 0.03}
    masked = run_attack("pgd", target, x, y, eps=0.3, params={**params, "bpda": False})
    assert masked.n_grad_unavailable == masked.n_backward > 0
    bpda = run_attack("pgd", target, x, y, eps=0.3, params=params)
    undefended = run_attack("pgd", lenet, x, y, eps=0.3, params=params)
    clean_errors = int((target.predict_logits(x).argmax(1) != y).sum())
    assert int(masked.success.sum()) <= clean_errors + 1
    assert int(bpda.success.sum()) >= int(undefended.success.sum()) - 2
    assert bpda.n_grad_unavailable == 0
    assert bpda.notes == ["BPDA: bit-depth reduction differentiated as the identity"]


def test_eot_pgd_matches_torchattacks_eotpgd_on_random_resize_pad(
        lenet: Target, digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    """torchattacks' EOTPGD at the same budget (Linf 0.15, 10 steps of 0.03, 5 draws, random
    start), judged the same way (the runner's 10 draws, every one must be right)."""
    torchattacks = pytest.importorskip("torchattacks")
    from bench.verification import judge

    x, y = digits[0][:60], digits[1][:60]
    target = defended(lenet, "random_resize_pad")
    ours = run_attack("pgd", target, x, y, eps=0.15,
                      params={"steps": 10, "step_size": 0.03, "eot_iter": 5,
                              "early_stop": False})
    torch.manual_seed(0)
    with target.evaluating(), target.drawing_from(torch.Generator().manual_seed(7)):
        peer = torchattacks.EOTPGD(target, eps=0.15, alpha=0.03, steps=10, eot_iter=5,
                                   random_start=True)(x, y)

    def robust(x_adv: torch.Tensor) -> int:
        return int(judge(target, x_adv, draws=10, seed=1, batch_size=500).every(y).sum())

    assert abs(robust(ours.x_adv) - robust(peer)) <= 3
    assert robust(ours.x_adv) < int(judge(target, x, draws=10, seed=1, batch_size=500
                                          ).every(y).sum())


def test_rand_is_autoattacks_version_for_randomised_defenses() -> None:
    from attacks.cascade import StandardParams, members

    chosen = members(StandardParams(version="rand"))
    assert [(m.name, m.attack, m.params["loss"], m.params["eot_iter"]) for m in chosen] == [
        ("apgd-ce", "apgd", "ce", 20), ("apgd-dlr", "apgd", "dlr", 20)]
    assert StandardParams(version="rand", eot_iter=4).expectation_draws == 4
    assert StandardParams().expectation_draws == 1


class Linear(nn.Module):
    """``z = [-(w·x + b), w·x + b]``: the smoothed classifier's class-1 probability is
    ``Φ((w·x + b) / (σ‖w‖))``, so its exact certified radius is the distance to the plane."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.w, self.b = w, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x * self.w).flatten(1).sum(1) + self.b
        return torch.stack([-s, s], 1)


def largest_radius(sigma: float, n: int, alpha: float) -> float:
    """The radius Cohen et al.'s theorem gives when all ``n`` draws vote for one class: sigma
    times the normal quantile of the exact (Clopper-Pearson) one-sided lower confidence bound
    of n successes in n, as scipy's binomial test computes it."""
    from scipy.stats import binomtest

    low = binomtest(n, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low
    return float(sigma * gaussian.ppf(low))


def test_certify_agrees_with_the_closed_form_of_a_linear_base_classifier() -> None:
    torch.manual_seed(0)
    w = torch.randn(1, 1, 6, 6)
    base = Target(Linear(w, 0.3), num_classes=2, input_shape=(1, 6, 6))
    smoothed = SmoothedTarget(base, sigma=0.5, n0=100, n=20_000, alpha=0.001)
    x = torch.rand(40, 1, 6, 6)
    x[:8] += 4 * w / w.norm() * torch.sign((x[:8] * w).flatten(1).sum(1) + 0.3).view(-1, 1, 1, 1)
    with smoothed.drawing_from(torch.Generator().manual_seed(5)):
        cert = smoothed.certify(x, batch_size=40_000)
    s = (x * w).flatten(1).sum(1) + 0.3
    distance = s.abs() / w.norm()
    side = (s > 0).long()
    certified = cert.pred >= 0
    # the radius never exceeds the exact one (a failure has probability alpha per sample) ...
    assert bool((cert.radius[certified] <= distance[certified] + 1e-6).all())
    assert bool((cert.pred[certified] == side[certified]).all())
    # ... and falls short of it by about the Monte-Carlo bound's slack only
    p_exact = torch.as_tensor(gaussian.cdf((distance / 0.5).numpy()))
    reachable = certified & (p_exact < 0.99).to(certified.device)
    assert bool(((distance - cert.radius)[reachable] < 0.1).all())
    # far from the plane every draw agrees: the radius is the largest n draws can certify
    far = distance > 3
    assert bool(far.any())
    assert torch.allclose(cert.radius[far], torch.full_like(cert.radius[far],
                                                            smoothed.max_radius()), atol=1e-5)
    assert smoothed.max_radius() == pytest.approx(largest_radius(0.5, 20_000, 0.001), rel=1e-6)
    # PREDICT abstains on the plane and decides far from it
    on_plane = x[:5] - ((s[:5] / w.norm() ** 2).view(-1, 1, 1, 1) * w)
    with smoothed.drawing_from(torch.Generator().manual_seed(6)):
        assert bool((smoothed.decide(on_plane, 40_000) == -1).float().mean() >= 0.8)
        assert torch.equal(smoothed.decide(x[far], 40_000), side[far])


def sweep(cache_dir: Path, out: Path, defense: dict[str, Any], attacks: list[dict[str, Any]],
          n_eval: int = 40, draws: int = 4) -> Any:
    config = parse_config({
        "sweep": {"name": "randomised", "dataset": "mnist5k", "n_eval": n_eval,
                  "draws": draws, "batch_size": 500},
        "defenses": [defense],
        "targets": [{"model": "lenet", "defenses": [defense["label"]]}],
        "attacks": attacks}, source="test")
    run_sweep(config, RunOptions(out=out, cache_dir=cache_dir, progress=False))
    return ResultStore(out).summary()


def test_a_randomised_target_is_judged_over_draws_and_flags_attacks_without_eot(
        cache_dir: Path, tmp_path: Path, lenet: Target) -> None:
    rows = sweep(cache_dir, tmp_path / "r", {"name": "random_resize_pad", "label": "rrp"}, [
        {"name": "pgd", "eps": [0.2], "params": {"steps": 10, "step_size": 0.03}},
        {"name": "pgd", "eps": [0.2], "params": {"steps": 10, "step_size": 0.03,
                                                 "eot_iter": 4}}])
    rows["eot"] = rows["attack_params"].str.contains('"eot_iter": 4')
    plain, eot = rows[~rows["eot"]].iloc[0], rows[rows["eot"]].iloc[0]
    for row in (plain, eot):
        assert row["draws"] == 4
        assert row["robust_acc"] <= row["robust_acc_one_draw"]
        assert row["clean_acc"] <= row["clean_acc_one_draw"]
    assert "no-eot" in plain["flags"] and "no-eot" not in (eot["flags"] or "")
    assert eot["n_backward"] > 3 * plain["n_backward"]


def test_bit_depth_without_bpda_raises_zero_grad_and_a_deterministic_target_has_no_draws(
        cache_dir: Path, tmp_path: Path) -> None:
    rows = sweep(cache_dir, tmp_path / "b", {"name": "bit_depth", "label": "bits1",
                                             "params": {"bits": 1}}, [
        {"name": "pgd", "eps": [0.3], "params": {"steps": 5, "bpda": False}}], n_eval=20)
    row = rows.iloc[0]
    assert row["flags"] is not None and "zero-grad" in row["flags"]
    assert row["decision"] == "BPDA off: bit-depth reduction differentiated as itself"
    assert pd_null(row["draws"]) and pd_null(row["robust_acc_one_draw"])
    assert pd_null(row["certified_acc"])


def pd_null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def test_smoothing_rows_carry_a_certificate_that_smoothadv_cannot_beat(
        cache_dir: Path, tmp_path: Path) -> None:
    """SmoothAdv fools no sample certified at its eps beyond Monte-Carlo error; the certified
    accuracy falls with eps and is 0 beyond the largest radius n draws can certify."""
    n = 400
    largest = largest_radius(0.25, n, 0.001)
    eps = [0.25, 0.5, round(largest + 0.05, 2)]
    rows = sweep(cache_dir, tmp_path / "s", {
        "name": "randomized_smoothing", "label": "rs",
        "params": {"sigma": 0.25, "epochs": 1, "n": n, "n_predict": 50}},
        [{"name": "smoothadv", "norm": "l2", "eps": eps,
          "params": {"steps": 4, "noise_draws": 4}}], n_eval=20, draws=2)
    rows = rows.sort_values("eps")
    certified = rows["certified_acc"].tolist()
    assert certified == sorted(certified, reverse=True) and certified[0] > 0.5
    assert certified[-1] == 0.0
    for _, row in rows.iterrows():
        assert row["certified_acc"] <= row["robust_acc"] + row["abstain_rate"] + 0.05
        assert row["certified_fooled"] <= 1 + row["abstain_rate"] * row["n_samples"]
        assert row["draws"] == 2
        # the runner's own passes include CERTIFY's, far more than the attack's per sample
        assert row["runner_calls"] / row["n_samples"] > row["certify_n_forward"] >= n


class CountingLinear(nn.Module):
    """A linear MNIST classifier that counts the images it is called on."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(784, 10)
        self.images = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += x.shape[0]
        return self.linear(x.flatten(1))


def test_a_smoothed_classifiers_reported_passes_are_the_ones_it_makes() -> None:
    """CERTIFY's reported cost per sample and PREDICT's passes per decision are the base
    model's calls counted where they happen."""
    model = CountingLinear()
    base = Target(model, num_classes=10, input_shape=(1, 28, 28))
    smoothed = SmoothedTarget(base, sigma=0.25, n0=30, n=170, n_predict=40)
    x = torch.rand(7, 1, 28, 28)
    with smoothed.drawing_from(torch.Generator().manual_seed(0)):
        cert = smoothed.certify(x, batch_size=64)
        assert model.images == 7 * cert.n_forward_per_sample
        model.images = 0
        smoothed.decide(x, batch_size=64)
    assert model.images == 7 * smoothed.decide_passes


def small_sweep(**extra: Any) -> dict[str, Any]:
    return {"sweep": {"name": "s", "n_eval": 10, **extra.pop("sweep", {})},
            "targets": [{"model": "lenet", "defenses": ["none"]}],
            "attacks": [{"name": "pgd", "eps": [0.1]}], **extra}


def test_config_checks_draws_and_runs_smoothadv_on_smoothed_targets_only() -> None:
    from bench.config import ConfigError, expand_cells

    with pytest.raises(ConfigError, match="'draws' must be"):
        parse_config(small_sweep(sweep={"draws": 0}), source="s.toml")
    smoothadv = [{"name": "smoothadv", "norm": "l2", "eps": [0.5]}]
    with pytest.raises(ConfigError, match="behind randomized_smoothing; no"):
        parse_config(small_sweep(attacks=smoothadv), source="s.toml")
    config = parse_config(small_sweep(
        attacks=[*smoothadv, {"name": "pgd", "norm": "l2", "eps": [0.5]}],
        defenses=[{"name": "randomized_smoothing", "label": "rs"}],
        targets=[{"model": "lenet", "defenses": ["none", "rs"]}]), source="s.toml")
    cells = {(c.defense, c.attack_name) for c in expand_cells(config)}
    assert cells == {("none", "pgd"), ("rs", "pgd"), ("rs", "smoothadv")}
    assert {c.draws for c in expand_cells(config)} == {10}


NETWORK = '''
import torch
from torch import nn

def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))

def squeeze(x):
    return (x.detach() * 3).round() / 3

def noisy(x):
    return (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
'''


def test_a_users_model_declares_its_preprocessing_stand_in_and_randomness(
        tmp_path: Path) -> None:
    from bench.config import ConfigError

    (tmp_path / "mynet.py").write_text(NETWORK)
    entry = {"name": "mine", "factory": "mynet:net", "input_shape": [1, 28, 28],
             "num_classes": 10, "preprocess": "mynet:squeeze", "bpda": "identity"}

    def user(**changed: Any) -> Any:
        return parse_config(small_sweep(models=[{**entry, **changed}],
                                        targets=[{"model": "mine", "defenses": ["none"]}]),
                            source="s.toml", base_dir=tmp_path).user_model("mine")

    target = user().target(torch.device("cpu"))
    x, y = torch.rand(6, 1, 28, 28), torch.arange(6)
    squeezed = (x * 3).round() / 3
    assert torch.allclose(target(x), target.model(squeezed))
    assert torch.allclose(input_gradient(target, x, y), input_gradient(target.model, squeezed, y))
    with target.adaptive(bpda=False):
        assert not input_gradient(target, x, y).any()
    assert not target.randomised
    random = user(preprocess="mynet:noisy", bpda="", randomised=True)
    noisy = random.target(torch.device("cpu"))
    assert noisy.randomised
    # its code draws from torch's global generator, seeded from the one the target is handed
    runs = [run_attack("pgd", noisy, x, y, eps=0.1, params={"steps": 3, "eot_iter": 2},
                       generator=torch.Generator().manual_seed(s)).x_adv for s in (1, 1, 2)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    state = torch.random.get_rng_state()
    noisy(x)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert random.identity != user().identity
    with pytest.raises(ConfigError, match="stand-in of a 'preprocess' step"):
        user(preprocess="")
    with pytest.raises(ConfigError, match="'randomised' must be true or false"):
        user(randomised="yes")
    with pytest.raises(BadInput, match="has no attribute 'gone'"):
        user(preprocess="mynet:gone").target(torch.device("cpu"))
