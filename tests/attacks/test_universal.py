"""Universal adversarial perturbations: one tensor, inside ξ, beating random noise of its norm."""

from __future__ import annotations

import pytest
import torch

from attacks import run_attack
from bench.core.datasets import Dataset
from bench.core.errors import BadInput
from bench.core.norms import l2_norm
from bench.core.target import Target


def held_out_fooling(target: Target, x: torch.Tensor, v: torch.Tensor) -> float:
    clean = target.predict_logits(x).argmax(1)
    return float((target.predict_logits((x + v).clamp(0, 1)).argmax(1) != clean).float().mean())


@pytest.mark.parametrize("method,norm,eps", [("deepfool", "linf", 0.3), ("sgd", "linf", 0.3),
                                             ("deepfool", "l2", 5.0)])
def test_uap_fools_held_out_digits_far_more_than_noise(method: str, norm: str, eps: float,
                                                       lenet: Target, mnist5k: Dataset) -> None:
    assert mnist5k.train is not None
    fit = (mnist5k.train.x[:600], mnist5k.train.y[:600])
    x, y = mnist5k.test.x[:300], mnist5k.test.y[:300]
    res = run_attack("uap", lenet, x, y, norm=norm, eps=eps, params={
        "method": method, "max_passes": 2 if method == "deepfool" else 10}, fit_data=fit,
        generator=torch.Generator().manual_seed(0))
    v = res.artifacts["perturbation"]
    assert v.shape == x.shape[1:]
    if norm == "linf":
        assert float(v.abs().max()) <= eps + 1e-6
    else:
        assert float(l2_norm(v[None])[0]) <= eps * (1 + 1e-5)
    # Every image got the same perturbation (up to clipping at the bounds).
    torch.testing.assert_close(res.x_adv, (x + v).clamp(0, 1))
    g = torch.Generator().manual_seed(1)
    if norm == "linf":
        noise = (torch.randint(0, 2, v.shape, generator=g) * 2 - 1).float() * eps
    else:
        noise = torch.randn(v.shape, generator=g)
        noise = noise / noise.norm() * v.norm()
    fooled, by_noise = held_out_fooling(lenet, x, v), held_out_fooling(lenet, x, noise)
    assert fooled >= 0.15 and fooled >= 3 * by_noise + 0.05, (fooled, by_noise)


def test_uap_needs_fit_data(lenet: Target, mnist5k: Dataset) -> None:
    with pytest.raises(BadInput, match="fits on training data"):
        run_attack("uap", lenet, mnist5k.test.x[:4], mnist5k.test.y[:4], eps=0.2)


@pytest.mark.parametrize("params,eps,match", [
    ({"method": "lbfgs"}, 0.2, "method must be"),
    ({"target_fooling_rate": 1.5}, 0.2, "target_fooling_rate"),
    ({"max_passes": 0}, 0.2, "max_passes must be >= 1"),
    ({}, -0.1, "eps must be"),
    ({}, 0.0, "needs eps > 0"),
])
def test_bad_uap_requests(params: dict, eps: float, match: str, lenet: Target,
                          mnist5k: Dataset) -> None:
    x, y = mnist5k.test.x[:4], mnist5k.test.y[:4]
    with pytest.raises(BadInput, match=match):
        run_attack("uap", lenet, x, y, eps=eps, params=params, fit_data=(x, y))
