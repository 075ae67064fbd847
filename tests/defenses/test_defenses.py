"""Defenses: registry and bad input, adversarial training (with its overfitting guard), the HGD
denoiser, and the fitted-defense cache. Small budgets; each test checks an effect that would
fail if the defense did nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import defenses.advtrain as advtrain
from attacks import run_attack
from bench.core.checkpoints import CheckpointCache
from bench.core.datasets import Dataset, Split
from bench.core.errors import BadInput, ConfigError, UnknownName
from bench.core.target import Target
from defenses import DEFENSES, fitted_defense
from tests.conftest import make_tiny_target


def train_subset(mnist5k: Dataset, n: int) -> Split:
    train = mnist5k.split("train")
    return Split(train.x[:n], train.y[:n])


def robust_acc(target: Target, x: torch.Tensor, y: torch.Tensor, eps: float,
               attacked: Target | None = None, attack: str = "pgd",
               params: dict[str, Any] | None = None) -> float:
    params = {"steps": 10, "step_size": eps / 4} if params is None and attack == "pgd" else params
    result = run_attack(attack, attacked or target, x, y, eps=eps, params=params,
                        generator=torch.Generator().manual_seed(1))
    return float((target.predict_logits(result.x_adv).argmax(1) == y).float().mean())


def clean_acc(target: Target, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((target.predict_logits(x).argmax(1) == y).float().mean())


def flags(module: nn.Module) -> list[bool]:
    return [m.training for m in module.modules()]


def weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_registry_lists_the_defenses() -> None:
    assert set(DEFENSES.names()) >= {"none", "pgd_at", "fgsm_rs", "hgd"}
    with pytest.raises(UnknownName, match="hgd"):
        DEFENSES.get("hgdd")


@pytest.mark.parametrize("name, params, match", [
    ("pgd_at", {"epochs": 0}, "training budget of zero"),
    ("hgd", {"epochs": 0}, "training budget of zero"),
    ("pgd_at", {"attack": "deepfool"}, "cannot be the inner attack"),
    ("pgd_at", {"attack": "nope"}, "unknown attack"),
    ("pgd_at", {"attack": "fgsm", "step_rel": 1.0}, "step_rel needs"),
    ("pgd_at", {"attack_params": {"stepz": 3}}, "stepz"),
    ("pgd_at", {"clean_fraction": 1.0}, "clean_fraction"),
    ("fgsm_rs", {"epochs": "ten"}, "must be int"),
    ("hgd", {"loss": "l2"}, "loss must be one of"),
    ("hgd", {"attacks": ["uap"]}, "cannot make HGD training pairs"),
    ("hgd", {"eps_min": 0.4, "eps_max": 0.3}, "eps_min <= eps_max"),
])
def test_bad_params_are_refused(name: str, params: dict[str, Any], match: str) -> None:
    with pytest.raises(BadInput, match=match):
        DEFENSES.get(name).make_params(params)


def test_hgd_refuses_a_target_it_cannot_wrap() -> None:
    spec = DEFENSES.get("hgd")
    with pytest.raises(BadInput, match=r"divisible by 8; .*28x28; use depth <= 2"):
        spec.check(make_tiny_target(), spec.make_params({"depth": 3}))
    no_linear = Target(nn.Sequential(nn.Conv2d(1, 10, 28), nn.Flatten()), num_classes=10,
                       input_shape=(1, 28, 28))
    with pytest.raises(BadInput, match="no.*nn.Linear|has none"):
        spec.check(no_linear, spec.make_params({"loss": "feature"}))
    spec.check(no_linear, spec.make_params({"loss": "logit"}))  # fine without features


def test_adversarial_training_raises_robust_accuracy(lenet: Target, mnist5k: Dataset,
                                                     digits: Any, tmp_path: Path) -> None:
    """Fine-tuning on FGSM-RS examples makes PGD at eps 0.2 much weaker on held-out digits, and
    keeps the base untouched (its weights and train/eval flags)."""
    x, y = digits
    lenet.train()
    before_flags, before_w = flags(lenet), weights(lenet)
    params = {"eps": 0.2, "epochs": 3, "eps_warmup": 0.34, "monitor_samples": 100,
              "monitor_steps": 5, "lr": 2e-3, "init": "base"}
    defended = fitted_defense(DEFENSES.get("fgsm_rs"), lenet, train_subset(mnist5k, 1500),
                              params, seed=0, cache=CheckpointCache(tmp_path), progress=False)
    lenet.eval()
    assert flags(lenet)[0] is False
    lenet.train()
    assert flags(lenet) == before_flags
    lenet.eval()
    assert all(torch.equal(before_w[k], v) for k, v in lenet.state_dict().items())
    base_robust, defended_robust = robust_acc(lenet, x, y, 0.2), robust_acc(defended, x, y, 0.2)
    assert defended_robust >= base_robust + 0.25, (base_robust, defended_robust)
    assert clean_acc(defended, x, y) >= 0.9
    history = defended.card["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert [h["eps"] for h in history] == pytest.approx([0.1, 0.2, 0.2])
    assert {"monitor_clean_acc", "monitor_robust_acc", "loss"} <= set(history[0])


def scripted_monitor(monkeypatch: pytest.MonkeyPatch, curve: list[float]
                     ) -> list[dict[str, torch.Tensor]]:
    """Replace the per-epoch monitor by ``curve``; the returned list fills with the weights the
    monitor saw at each epoch."""
    values = iter(curve)
    snapshots: list[dict[str, torch.Tensor]] = []

    def fake_monitor(target: Target, *args: Any, **kwargs: Any) -> tuple[float, float]:
        snapshots.append(weights(target))
        return 0.9, next(values)

    monkeypatch.setattr(advtrain, "robust_accuracy", fake_monitor)
    return snapshots


def test_overfitting_guard_stops_and_keeps_the_best_weights(
        lenet: Target, mnist5k: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Wong et al.'s guard on a scripted monitor curve: when robust accuracy collapses, training
    stops and the weights of the best epoch are restored."""
    snapshots = scripted_monitor(monkeypatch, [0.40, 0.55, 0.05, 0.60, 0.60])
    params = {"eps": 0.1, "epochs": 5, "eps_warmup": 0.0, "monitor_samples": 50,
              "lr": 1e-3}
    defended = fitted_defense(DEFENSES.get("fgsm_rs"), lenet, train_subset(mnist5k, 300),
                              params, seed=0, cache=CheckpointCache(tmp_path), progress=False)
    card = defended.card
    assert [h["epoch"] for h in card["history"]] == [1, 2, 3]
    assert card["collapsed_at_epoch"] == 3 and card["kept_epoch"] == 2
    kept = defended.state_dict()
    assert all(torch.equal(snapshots[1][k], kept[k]) for k in kept)
    assert not all(torch.equal(snapshots[2][k], kept[k]) for k in kept)


def test_guard_keeps_the_best_epoch_without_a_collapse(
        lenet: Target, mnist5k: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Early stopping (Rice et al. 2020): a slow decline that never counts as a collapse still
    ends with the best epoch's weights; without the guard the last epoch's are kept."""
    for guard, kept_epoch in ((True, 2), (False, 4)):
        snapshots = scripted_monitor(monkeypatch, [0.40, 0.55, 0.50, 0.45])
        params = {"eps": 0.1, "epochs": 4, "eps_warmup": 0.0, "monitor_samples": 50,
                  "guard": guard}
        defended = fitted_defense(DEFENSES.get("fgsm_rs"), lenet, train_subset(mnist5k, 200),
                                  params, seed=0, cache=CheckpointCache(tmp_path / str(guard)),
                                  progress=False)
        card = defended.card
        assert len(card["history"]) == 4 and card["collapsed_at_epoch"] is None
        assert card["kept_epoch"] == kept_epoch
        kept = defended.state_dict()
        assert all(torch.equal(snapshots[kept_epoch - 1][k], kept[k]) for k in kept)


def test_guard_catches_a_real_collapse(lenet: Target, mnist5k: Dataset, digits: Any,
                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real training made to collapse on every CPU: fine-tuning the LeNet adversarially at eps
    0.1, whose batches from the second epoch on carry the wrong labels (each digit labelled as
    the next), so the monitor's robust accuracy on the true labels falls to about nothing
    whatever the rounding (a chaotic learning rate collapses on some CPUs only). Without the
    guard training runs on to the poisoned model; with it (same seed, so the same epochs up to
    the stop) training stops at the collapse and the best epoch's weights come back: held-out
    digits are classified as well as after that epoch, far better than the collapsed model."""
    x, y = digits
    real_fit = advtrain.fit

    def poisoned_fit(*args: Any, perturb: Any, **kwargs: Any) -> Any:
        def poison(xb: torch.Tensor, yb: torch.Tensor, epoch: int) -> Any:
            xb, yb = perturb(xb, yb, epoch)
            return xb, (yb + 1) % 10 if epoch >= 1 else yb
        return real_fit(*args, perturb=poison, **kwargs)

    monkeypatch.setattr(advtrain, "fit", poisoned_fit)
    params = {"eps": 0.1, "eps_warmup": 0.0, "epochs": 3, "init": "base",
              "monitor_samples": 200, "monitor_steps": 5}
    train = train_subset(mnist5k, 1000)

    def fit(guard: bool) -> Target:
        return fitted_defense(DEFENSES.get("fgsm_rs"), lenet, train, {**params, "guard": guard},
                              seed=0, cache=CheckpointCache(tmp_path), progress=False)

    unguarded, guarded = fit(False), fit(True)
    free = [h["monitor_robust_acc"] for h in unguarded.card["history"]]
    assert len(free) == 3 and free[0] >= 0.3 and free[-1] <= free[0] - 0.25, free
    card = guarded.card
    stop = card["collapsed_at_epoch"]
    assert stop == 2, (stop, free)
    assert [h["monitor_robust_acc"] for h in card["history"]] == free[:stop]  # same run
    assert card["kept_epoch"] == 1
    assert card["metrics"]["monitor_robust_acc"] == free[0]
    assert clean_acc(guarded, x, y) >= clean_acc(unguarded, x, y) + 0.3
    assert robust_acc(guarded, x, y, 0.1) >= robust_acc(unguarded, x, y, 0.1) + 0.2


def test_fgsm_rs_defaults_beat_plain_training(lenet: Target, mnist5k: Dataset,
                                              digits: Any, tmp_path: Path) -> None:
    """FGSM-RS with its defaults (eps 0.3, step 1.25·eps from a random start, cyclic learning
    rate, warm-up, guard), on a CI-sized budget (8 epochs on 1,500 digits): PGD at eps 0.2 and
    0.3 leaves far more held-out digits classified than on plain training, and clean accuracy
    stays high. (That it holds at every seed, 0, 5 and 11 at the full budget, is
    tests/benchmarks/test_advtrain_seeds.py.)"""
    seed = 0
    x, y = digits
    params = {"epochs": 8, "monitor_samples": 100, "monitor_steps": 5}
    defended = fitted_defense(DEFENSES.get("fgsm_rs"), lenet, train_subset(mnist5k, 1500),
                              params, seed=seed, cache=CheckpointCache(tmp_path), progress=False)
    assert clean_acc(defended, x, y) >= 0.9
    for eps, margin in ((0.2, 0.4), (0.3, 0.05)):
        plain, defended_robust = robust_acc(lenet, x, y, eps), robust_acc(defended, x, y, eps)
        assert defended_robust >= plain + margin, (seed, eps, plain, defended_robust)


def test_without_the_guard_a_collapse_does_not_stop_training(
        lenet: Target, mnist5k: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    curve = iter([0.40, 0.55, 0.05])
    monkeypatch.setattr(advtrain, "robust_accuracy", lambda *a, **k: (0.9, next(curve)))
    params = {"eps": 0.1, "epochs": 3, "monitor_samples": 50, "guard": False,
              "attack_params": {"steps": 1}}
    defended = fitted_defense(DEFENSES.get("pgd_at"), lenet, train_subset(mnist5k, 300),
                              params, seed=0, cache=CheckpointCache(tmp_path), progress=False)
    assert len(defended.card["history"]) == 3 and defended.card["collapsed_at_epoch"] is None


HGD_SMALL = {"attacks": ["fgsm"], "eps_min": 0.1, "eps_max": 0.3, "epochs": 3, "width": 16}


def test_hgd_defeats_transfer_but_not_adaptive_attacks(lenet: Target, mnist5k: Dataset,
                                                       digits: Any, tmp_path: Path) -> None:
    """The paper's setting (attacks crafted on the undefended classifier) is largely undone by
    the denoiser; white-box attacks through denoiser and classifier are not (Athalye & Carlini
    2018). The classifier's weights are left as they were."""
    x, y = digits
    before = weights(lenet)
    defended = fitted_defense(DEFENSES.get("hgd"), lenet, train_subset(mnist5k, 2000), HGD_SMALL,
                              seed=0, cache=CheckpointCache(tmp_path), progress=False)
    assert all(torch.equal(before[k], v) for k, v in lenet.state_dict().items())
    assert clean_acc(defended, x, y) >= clean_acc(lenet, x, y) - 0.05
    fgsm = {"attack": "fgsm", "params": {}}
    undefended = robust_acc(lenet, x, y, 0.2, **fgsm)
    transfer = robust_acc(defended, x, y, 0.2, attacked=lenet, **fgsm)
    adaptive = robust_acc(defended, x, y, 0.2)
    assert transfer >= undefended + 0.2, (undefended, transfer)
    assert adaptive <= transfer - 0.2, (adaptive, transfer)
    assert len(defended.card["history"]) == 3


@pytest.mark.parametrize("loss", ["pixel", "feature", "class"])
def test_every_hgd_loss_trains_the_denoiser(loss: str, lenet: Target, mnist5k: Dataset,
                                            digits: Any, tmp_path: Path) -> None:
    """On held-out FGSM pairs, the trained denoiser's guided loss is well below the loss of
    the identity it starts from."""
    from defenses.denoiser import _guided_loss

    x, y = digits
    params = {**HGD_SMALL, "loss": loss, "epochs": 2, "lr": 5e-3}
    defended = fitted_defense(DEFENSES.get("hgd"), lenet, train_subset(mnist5k, 1000), params,
                              seed=0, cache=CheckpointCache(tmp_path), progress=False)
    x_adv = run_attack("fgsm", lenet, x, y, eps=0.2).x_adv
    guided = _guided_loss(lenet, DEFENSES.get("hgd").make_params(params))
    with torch.no_grad(), defended.evaluating():
        identity = float(guided(x_adv, x, y))
        trained = float(guided(defended.model.denoiser(x_adv), x, y))
    assert trained < 0.7 * identity, (identity, trained)


def test_fitted_defenses_are_cached_and_interrupted_fits_leave_nothing(
        lenet: Target, mnist5k: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = DEFENSES.get("hgd")
    train = train_subset(mnist5k, 200)
    params = {**HGD_SMALL, "epochs": 1}
    cache = CheckpointCache(tmp_path)

    def interrupted(*args: Any, **kwargs: Any) -> Target:
        raise KeyboardInterrupt

    broken = type(spec)(**{**spec.__dict__, "fit": interrupted})
    with pytest.raises(KeyboardInterrupt):
        fitted_defense(broken, lenet, train, params, seed=0, cache=cache, progress=False)
    assert not any(p.is_file() for p in tmp_path.rglob("*")), "an interrupted fit left files"

    first = fitted_defense(spec, lenet, train, params, seed=0, cache=cache, progress=False)
    never = type(spec)(**{**spec.__dict__, "fit": interrupted})
    again = fitted_defense(never, lenet, train, params, seed=0, cache=cache, progress=False)
    x = mnist5k.test.x[:50]
    assert torch.equal(first.predict_logits(x), again.predict_logits(x))
    assert again.card["cache_key"] == first.card["cache_key"]
    assert again.card["history"] == first.card["history"]
    with pytest.raises(KeyboardInterrupt):  # other params: a new key, so it fits again
        fitted_defense(never, lenet, train, {**params, "lr": 2e-3}, seed=0, cache=cache,
                       progress=False)


def test_config_defenses_table(tmp_path: Path) -> None:
    from bench.config import expand_cells, parse_config

    data = {
        "sweep": {"name": "d"},
        "targets": [{"model": "lenet", "defenses": ["none", "at-small", "hgd"],
                     "threats": ["adaptive", "transfer"]}],
        "attacks": [{"name": "fgsm", "eps": [0.1]}],
        "defenses": [{"name": "fgsm_rs", "label": "at-small", "params": {"epochs": 2}}],
    }
    config = parse_config(data)
    cells = expand_cells(config)
    assert [(c.defense, c.threat) for c in cells] == [
        ("none", "adaptive"), ("at-small", "adaptive"), ("at-small", "transfer"),
        ("hgd", "adaptive"), ("hgd", "transfer")]
    assert '"epochs": 2' in cells[1].defense_params and cells[0].defense_params == ""
    assert len({c.cell_id for c in cells}) == len(cells)
    data["defenses"][0]["params"]["epochs"] = 3
    assert expand_cells(parse_config(data))[1].cell_id != cells[1].cell_id
    for bad, match in [
        ({"name": "fgsm_rs", "label": "x", "params": {"epochs": 0}}, "training budget of zero"),
        ({"name": "fgsm_rs", "label": "hgd"}, "another registered defense"),
        ({"name": "nope"}, "unknown defense"),
        ({"name": "hgd", "parms": {}}, "unknown key 'parms'"),
    ]:
        with pytest.raises(ConfigError if "defense" not in match else BadInput, match=match):
            parse_config({**data, "defenses": [bad]})
