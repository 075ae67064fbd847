from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.core.errors import BadInput, ModelOutputError
from bench.core.target import Target
from tests.conftest import make_tiny_target


def test_normalisation_lives_inside_the_target() -> None:
    seen = {}

    class Spy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen["x"] = x
            return torch.zeros(x.shape[0], 3)

    t = Target(Spy(), num_classes=3, input_shape=(2, 1, 1), mean=[0.5, 0.25], std=[0.5, 0.25])
    t(torch.ones(1, 2, 1, 1))
    torch.testing.assert_close(seen["x"].flatten(), torch.tensor([1.0, 3.0]))


def test_discriminator_exposes_zero_and_d() -> None:
    net = nn.Linear(4, 1)
    t = Target(nn.Sequential(nn.Flatten(), net), num_classes=2, input_shape=(1, 2, 2),
               kind="discriminator", mean=[0.5], std=[0.5])
    x = torch.rand(5, 1, 2, 2)
    logits = t(x)
    assert logits.shape == (5, 2)
    torch.testing.assert_close(logits[:, 0], torch.zeros(5))
    torch.testing.assert_close(logits[:, 1], net((x * 2 - 1).flatten(1))[:, 0])


def test_discriminator_with_many_outputs_is_refused() -> None:
    t = Target(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), num_classes=2, input_shape=(1, 2, 2),
               kind="discriminator")
    with pytest.raises(ModelOutputError, match="one logit per image"):
        t(torch.rand(2, 1, 2, 2))


def test_classifier_output_shape_is_checked() -> None:
    t = Target(nn.Flatten(), num_classes=10, input_shape=(1, 2, 2), name="flat")
    with pytest.raises(ModelOutputError, match=r"must return \[N, 10\] logits, got shape \(3, 4\)"):
        t(torch.rand(3, 1, 2, 2))


def test_nan_logits_are_reported() -> None:
    class Nan(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full((x.shape[0], 10), float("nan"))

    t = Target(Nan(), num_classes=10, input_shape=(1, 2, 2), name="nanny")
    with pytest.raises(ModelOutputError, match="'nanny' returned NaN"):
        t.predict_logits(torch.rand(2, 1, 2, 2))


def test_evaluating_restores_exact_flags_even_on_error() -> None:
    t = make_tiny_target()
    t.train()
    t.model.body[1].eval()
    before = [m.training for m in t.modules()]
    with pytest.raises(RuntimeError):
        with t.evaluating():
            assert not any(m.training for m in t.modules())
            raise RuntimeError("boom")
    assert [m.training for m in t.modules()] == before


def test_eval_mode_gives_deterministic_outputs() -> None:
    t = make_tiny_target().train()
    x = torch.rand(4, 1, 28, 28)
    a, b = t.predict_logits(x), t.predict_logits(x)
    assert torch.equal(a, b)
    assert t.training


@pytest.mark.parametrize("bad,match", [
    (torch.rand(2, 3, 28, 28), "expects"),
    (torch.rand(2, 1, 28, 28) * 255, "divide 0..255 images by 255"),
    (torch.full((2, 1, 28, 28), float("nan")), "NaN"),
    (torch.zeros(2, 1, 28, 28, dtype=torch.uint8), "floating point"),
])
def test_check_inputs(bad: torch.Tensor, match: str) -> None:
    with pytest.raises(BadInput, match=match):
        make_tiny_target().check_inputs(bad)


def test_bad_constructor_arguments() -> None:
    with pytest.raises(BadInput, match="lo < hi"):
        Target(nn.Identity(), num_classes=2, input_shape=(1,), bounds=(1, 0))
    with pytest.raises(BadInput, match="num_classes = 2"):
        Target(nn.Identity(), num_classes=3, input_shape=(1,), kind="discriminator")
