"""MI-FGSM and DI-FGSM: agreement with torchattacks' MIFGSM / DIFGSM where both are
deterministic, and the input-diversity copy (its shape, padding, seed and gradient)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attacks import run_attack
from attacks.transfer import DiversityParams, _gradient, diverse_copy
from bench.core.calls import ModelCalls
from bench.core.target import Target

Digits = tuple[torch.Tensor, torch.Tensor]


def test_mifgsm_matches_torchattacks(lenet: Target, digits: Digits) -> None:
    import torchattacks

    x, y = digits
    with lenet.evaluating():
        ours = run_attack("mifgsm", lenet, x, y, eps=0.2).x_adv
        theirs = torchattacks.MIFGSM(lenet, eps=0.2, alpha=0.02, steps=10, decay=1.0)(x, y)
    assert (ours - theirs).abs().max() < 1e-6
    assert not torch.equal(ours, x)


def test_difgsm_without_diversity_matches_torchattacks(lenet: Target, digits: Digits) -> None:
    """With the diverse copy switched off, DI-FGSM is I-FGSM (and M-I-FGSM with decay 1) on
    both sides, so the iterates must agree exactly."""
    import torchattacks

    x, y = digits
    for decay in (0.0, 1.0):
        with lenet.evaluating():
            ours = run_attack("difgsm", lenet, x, y, eps=0.15,
                              params={"diversity_prob": 0.0, "decay": decay, "steps": 5}).x_adv
            theirs = torchattacks.DIFGSM(lenet, eps=0.15, alpha=0.03, steps=5, decay=decay,
                                         diversity_prob=0.0)(x, y)
        assert (ours - theirs).abs().max() < 1e-6, decay


def test_diverse_copy_shrinks_pads_and_is_reproducible() -> None:
    x = torch.rand(4, 1, 28, 28) * 0.5 + 0.5  # no pixel equals the padding value 0
    copies = [diverse_copy(x, 0.9, 0.0, torch.Generator().manual_seed(s)) for s in range(20)]
    assert all(c.shape == x.shape for c in copies)
    padded = [int((c[0, 0] == 0).sum()) for c in copies]
    assert min(padded) >= 28 * 2 - 1  # shrunk to at most 27 pixels: a row and a column padded
    assert max(padded) <= 28 * 28 - 25 * 25  # at least 25 = int(0.9 · 28) pixels kept
    assert len({tuple(c[0, 0].flatten().tolist()) for c in copies}) > 5  # draws differ
    again = diverse_copy(x, 0.9, 0.0, torch.Generator().manual_seed(3))
    assert torch.equal(again, copies[3])
    assert torch.equal(diverse_copy(x, 1.0, 0.0, torch.Generator()), x)


def test_gradient_through_the_copy_is_the_chain_rule(lenet: Target, digits: Digits) -> None:
    """The gradient DI-FGSM steps on is d loss(model(copy(x))) / dx, computed here directly by
    autograd through the same draws."""
    x, y = digits[0][:16], digits[1][:16]
    params = DiversityParams(diversity_prob=1.0)
    with lenet.evaluating():
        ours = _gradient(ModelCalls(lenet), x, y, params, torch.Generator().manual_seed(7))
        gen = torch.Generator().manual_seed(7)
        torch.rand(1, generator=gen)  # the coin
        xr = x.clone().requires_grad_(True)
        loss = F.cross_entropy(lenet(diverse_copy(xr, 0.9, 0.0, gen)), y, reduction="sum")
        (direct,) = torch.autograd.grad(loss, xr)
    assert torch.allclose(ours, direct, atol=1e-6)
    assert float(ours.abs().sum()) > 0


@pytest.mark.parametrize("params", [{"diversity_prob": 1.5}, {"resize_rate": 1.2},
                                    {"decay": -1.0}, {"steps": 0}])
def test_bad_params_are_refused(params: dict[str, float], lenet: Target, digits: Digits) -> None:
    with pytest.raises(ValueError, match=next(iter(params))):
        run_attack("difgsm", lenet, *digits, eps=0.1, params=params)
