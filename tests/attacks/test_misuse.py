"""The Python API under misuse: every mistake is one clear :class:`BadInput` (or a warning for
a model that returns probabilities), never a raw ``RuntimeError`` or a silent wrong answer."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch

from attacks import run_attack
from bench.core.errors import BadInput, ModelOutputError
from bench.core.target import Target
from tests.conftest import BrokenLinear

SHAPE = (1, 28, 28)
ATTACKS = [("fgsm", "linf", 0.1, None), ("pgd", "linf", 0.1, {"steps": 2}),
           ("deepfool", "l2", None, {"steps": 3}),
           ("onepixel", "l0", 1, {"population": 8, "generations": 1}),
           ("uap", "linf", 0.1, {"max_passes": 1})]


def target(mode: str = "logits", **kwargs: Any) -> Target:
    torch.manual_seed(0)
    return Target(BrokenLinear(mode), num_classes=10, input_shape=SHAPE, name=mode, **kwargs)


def data(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, *SHAPE, generator=g), torch.randint(0, 10, (n,), generator=g)


def attack(name: str, tgt: Target, x: torch.Tensor, y: torch.Tensor, **extra: Any) -> Any:
    _, norm, eps, params = next(a for a in ATTACKS if a[0] == name)
    fit = extra.pop("fit_data", (x, y) if name == "uap" else None)
    return run_attack(name, tgt, x, y, norm=norm, eps=eps, params=params, fit_data=fit, **extra)


@pytest.mark.parametrize("name", [a[0] for a in ATTACKS])
def test_a_model_returning_nan_raises_under_every_attack(name: str) -> None:
    with pytest.raises(ModelOutputError, match="'nan' returned NaN or infinite logits"):
        attack(name, target("nan"), *data())


@pytest.mark.parametrize("name", ["fgsm", "pgd", "deepfool", "uap"])
def test_a_model_without_input_gradients_is_named(name: str) -> None:
    with pytest.raises(ModelOutputError, match="gives no gradient with respect to its inputs"):
        attack(name, target("detached"), *data())


def test_a_black_box_attack_runs_on_a_model_without_gradients() -> None:
    result = attack("onepixel", target("detached"), *data())
    assert result.x_adv.shape == (6, *SHAPE)


def test_probabilities_instead_of_logits_warn_once() -> None:
    tgt = target("probabilities")
    with pytest.warns(UserWarning, match="seems to return probabilities"):
        attack("pgd", tgt, *data())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attack("fgsm", tgt, *data())  # warned once per target, not per call
        attack("fgsm", target(), *data())  # logits: no warning


@pytest.mark.parametrize("labels,match", [
    (lambda y: y.float(), "labels must be integer class indices .*float32"),
    (lambda y: y > 4, "labels must be integer class indices .*bool"),
    (lambda y: y[:3], r"labels must have shape \[6\]"),
    (lambda y: y + 10, "labels must lie in 0..9"),
])
def test_bad_labels(labels: Any, match: str) -> None:
    x, y = data()
    with pytest.raises(BadInput, match=match):
        attack("fgsm", target(), x, labels(y))


@pytest.mark.parametrize("fit,match", [
    (lambda x, y: (x[:0], y[:0]), "fit_data holds no images"),
    (lambda x, y: (x, y[:2]), r"fit_data labels must have shape \[6\]"),
    (lambda x, y: (x, y + 12), "fit_data labels must lie in 0..9"),
    (lambda x, y: (x * 255, y), "outside the target's bounds"),
])
def test_bad_uap_fit_data(fit: Any, match: str) -> None:
    x, y = data()
    with pytest.raises(BadInput, match=match):
        attack("uap", target(), x, y, fit_data=fit(x, y))


def test_uap_reports_its_held_out_fooling_rate() -> None:
    x, y = data(12)
    fit_x, fit_y = data(30)
    tgt = target()
    result = attack("uap", tgt, x, y, fit_data=(fit_x, fit_y))
    rate = float(result.artifacts["fooling_rate"])
    with torch.no_grad():  # computed here from the artifact, independently of the attack
        v = result.artifacts["perturbation"]
        changed = tgt((x + v).clamp(0, 1)).argmax(1) != tgt(x).argmax(1)
    assert rate == pytest.approx(float(changed.float().mean()))


@pytest.mark.parametrize("mean,std,match", [
    ([0.1, 0.2, 0.3], [1.0, 1.0, 1.0], "mean must have one value per input channel"),
    ([0.1], [0.0], "std must be > 0"),
])
def test_normalisation_of_the_wrong_length(mean: list[float], std: list[float],
                                           match: str) -> None:
    with pytest.raises(BadInput, match=match):
        target(mean=mean, std=std)


def test_minimal_attacks_need_no_eps() -> None:
    x, y = data()
    result = run_attack("deepfool", target(), x, y, norm="l2", params={"steps": 3})
    assert result.l2.shape == (6,)
    with pytest.raises(BadInput, match="'fgsm' needs an eps budget"):
        run_attack("fgsm", target(), x, y)


@pytest.mark.parametrize("scale,hint", [
    (lambda x: x * 255, "divide 0..255 images by 255"),
    (lambda x: (x - 0.1307) / 0.3081, "they look normalised: the target takes raw pixels"),
])
def test_out_of_range_inputs_get_the_right_hint(scale: Any, hint: str) -> None:
    x, y = data()
    with pytest.raises(BadInput, match=hint):
        attack("fgsm", target(), scale(x), y)
