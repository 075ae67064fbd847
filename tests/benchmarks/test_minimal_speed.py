"""DeepFool vs foolbox, one-pixel vs torchattacks, UAP vs ART: same model, data and budget.

Strength is shown beside speed: DeepFool's median L2 of successful samples, one-pixel's success
rate, and UAP's held-out fooling rate (ART and advbench fit to the same target fooling rate).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from attacks import run_attack
from bench.core.target import Target


@pytest.fixture(scope="module")
def data(mnist5k: Any, device: torch.device) -> dict[str, torch.Tensor]:
    return {"x": mnist5k.test.x[:256].to(device), "y": mnist5k.test.y[:256].to(device),
            "fit_x": mnist5k.train.x[:200].to(device), "fit_y": mnist5k.train.y[:200].to(device)}


def _median_l2(x: torch.Tensor, x_adv: torch.Tensor, fooled: torch.Tensor) -> float:
    return float((x_adv - x).flatten(1).norm(dim=1)[fooled].median())


@pytest.mark.parametrize("library", ["advbench", "foolbox"])
def test_deepfool_speed(library: str, model: Target, data: Any, benchmark: Any,
                        record: Any) -> None:
    import foolbox as fb

    benchmark.group = "deepfool"
    n = 32 if benchmark.disabled else 256  # smoke test vs timed run
    x, y = data["x"][:n], data["y"][:n]

    def ours() -> tuple[torch.Tensor, torch.Tensor]:
        res = run_attack("deepfool", model, x, y, norm="l2", eps=None)
        return res.x_adv, res.success

    def theirs() -> tuple[torch.Tensor, torch.Tensor]:
        _, adv, success = fb.attacks.L2DeepFoolAttack()(
            fb.PyTorchModel(model, bounds=(0, 1), device=x.device), x, y, epsilons=None)
        return adv, success

    with model.evaluating():
        x_adv, success = benchmark.pedantic(ours if library == "advbench" else theirs,
                                            rounds=3, warmup_rounds=0)
    record("deepfool", library, _median_l2(x, x_adv, success), len(x), "median_l2")


@pytest.mark.parametrize("library", ["advbench", "torchattacks"])
def test_onepixel_speed(library: str, model: Target, data: Any, benchmark: Any,
                        record: Any) -> None:
    """torchattacks' default budget: 1 pixel, 10 generations, popsize 10, which its DE turns into
    max(1, 10 // 3) * 3 = 9 members for the 3 parameters of a grayscale pixel."""
    import torchattacks

    benchmark.group = "onepixel"
    n = 16 if benchmark.disabled else 64
    x, y = data["x"][:n], data["y"][:n]

    def ours() -> torch.Tensor:
        return run_attack("onepixel", model, x, y, norm="l0", eps=1,
                          params={"population": 9, "generations": 10},
                          generator=torch.Generator(x.device).manual_seed(0)).x_adv

    def theirs() -> torch.Tensor:
        return torchattacks.OnePixel(model, pixels=1, steps=10, popsize=10)(x, y)

    with model.evaluating():
        x_adv = benchmark.pedantic(ours if library == "advbench" else theirs, rounds=2,
                                   warmup_rounds=0)
    rate = float((model.predict_logits(x_adv).argmax(1) != y).float().mean())
    record("onepixel", library, rate, len(x), "success")


@pytest.mark.parametrize("library", ["advbench", "art"])
def test_uap_speed(library: str, model: Target, data: Any, benchmark: Any, record: Any) -> None:
    """Both fit a Linf UAP (ξ = 0.3, DeepFool inner attack) on the same 200 digits, one pass,
    stopping at fooling rate 0.8 (ART's delta = 0.2)."""
    from art.attacks.evasion import UniversalPerturbation
    from art.estimators.classification import PyTorchClassifier

    benchmark.group = "uap"
    n_fit = 20 if benchmark.disabled else 200  # ART runs at about 1 image/s on the CPU
    fit_x, fit_y, x = data["fit_x"][:n_fit], data["fit_y"][:n_fit], data["x"]

    def ours() -> torch.Tensor:
        res = run_attack("uap", model, x, data["y"], eps=0.3, fit_data=(fit_x, fit_y),
                         params={"max_passes": 1, "target_fooling_rate": 0.8},
                         generator=torch.Generator(x.device).manual_seed(0))
        return res.artifacts["perturbation"]

    def theirs() -> torch.Tensor:
        classifier = PyTorchClassifier(model, loss=torch.nn.CrossEntropyLoss(),
                                       input_shape=(1, 28, 28), nb_classes=10, clip_values=(0, 1),
                                       device_type="gpu" if x.is_cuda else "cpu")
        attack = UniversalPerturbation(classifier, attacker="deepfool", delta=0.2, max_iter=1,
                                       eps=0.3, norm=np.inf, verbose=False)
        attack.generate(fit_x.cpu().numpy())
        return torch.from_numpy(attack.noise[0]).float().to(x.device)

    with model.evaluating():
        v = benchmark.pedantic(ours if library == "advbench" else theirs, rounds=1,
                               warmup_rounds=0)
    clean = model.predict_logits(x).argmax(1)
    fooled = float((model.predict_logits((x + v).clamp(0, 1)).argmax(1) != clean).float().mean())
    record("uap", library, fooled, len(fit_x), "heldout_fooling")


def test_onepixel_paper_budget_forward_efficiency(model: Target, data: Any, device: torch.device,
                                                  benchmark: Any, record: Any) -> None:
    """At the paper's budget (population 400, 100 generations), the share of the wall time that
    goes into useful model forwards: one-pixel's model calls per second over the plain forward
    floor of the same model at the same batch size. (On the CPU a small budget smoke-tests it.)"""
    import time

    benchmark.group = "onepixel-paper"
    on_gpu = device.type == "cuda"
    population, generations = (400, 100) if on_gpu else (40, 3)
    x, y = data["x"][:128], data["y"][:128]
    chunk = 8192 if on_gpu else 256
    calls: dict[str, int] = {}

    def ours() -> torch.Tensor:
        res = run_attack("onepixel", model, x, y, norm="l0", eps=1,
                         params={"population": population, "generations": generations},
                         generator=torch.Generator(x.device).manual_seed(0))
        calls["n"] = res.n_forward
        return res.x_adv

    with model.evaluating():
        start = time.perf_counter()
        benchmark.pedantic(ours, rounds=1, warmup_rounds=0)
        if on_gpu:
            torch.cuda.synchronize()
        attack_rate = calls["n"] / (time.perf_counter() - start)
        probe = x.repeat((chunk + len(x) - 1) // len(x), 1, 1, 1)[:chunk]
        with torch.no_grad():
            model(probe)
            if on_gpu:
                torch.cuda.synchronize()
            t0, reps = time.perf_counter(), 20
            for _ in range(reps):
                model(probe)
            if on_gpu:
                torch.cuda.synchronize()
        floor = reps * chunk / (time.perf_counter() - t0)
    fraction = attack_rate / floor
    benchmark.extra_info.update(model_calls_per_s=attack_rate, forward_floor_per_s=floor)
    record("onepixel-paper", "advbench", fraction, len(x), "floor_fraction")
    assert 0 < fraction
