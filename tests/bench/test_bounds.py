"""IBP and CROWN bounds (bench.core.bounds) against the exact answer and the network itself:
the exact minimal margin of small ReLU networks from a mixed-integer program (scipy's HiGHS),
margins at points sampled in the ball and at PGD's iterates, eps = 0, and refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import Bounds as Box
from scipy.optimize import LinearConstraint, milp
from torch import nn

from bench.core.bounds import (
    MARGIN_TOLERANCE,
    METHODS,
    BoundCertifier,
    Region,
    bound_certificate,
    margin_lower_bounds,
    margin_spec,
)
from bench.core.errors import BadInput
from bench.core.network import check_network, network_of
from bench.core.norms import Norm
from bench.core.target import Target


def mlp(seed: int, d: int = 6, hidden: int = 16, classes: int = 3) -> Target:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                          nn.Linear(hidden, classes))
    return Target(model, num_classes=classes, input_shape=(d,)).eval()


def exact_min_margin(target: Target, x: np.ndarray, eps: float, y: int, j: int) -> float:
    """min over the Linf ball ∩ [0, 1] of z_y − z_j, by a big-M MILP with IBP's (valid) bounds
    on each ReLU (independent of advbench's bounds: its own interval arithmetic)."""
    layers = [m for m in target.model if isinstance(m, nn.Linear)]
    ws = [m.weight.detach().double().numpy() for m in layers]
    bs = [m.bias.detach().double().numpy() for m in layers]
    lo, hi = np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1)
    n_var, integrality = len(x), [0] * len(x)
    rows: list[tuple[dict[int, float], float, float]] = []
    var_lo, var_hi = list(lo), list(hi)
    prev = list(range(len(x)))  # indices of the previous layer's variables
    for w, b in zip(ws[:-1], bs[:-1]):
        zl = np.clip(w, 0, None) @ lo + np.clip(w, None, 0) @ hi + b
        zu = np.clip(w, 0, None) @ hi + np.clip(w, None, 0) @ lo + b
        layer = []
        for k in range(w.shape[0]):
            a, d = n_var, n_var + 1  # the ReLU's output and its binary
            n_var += 2
            var_lo += [0.0, 0.0]
            var_hi += [max(zu[k], 0.0), 1.0]
            integrality += [0, 1]
            pre = {p: w[k, i] for i, p in enumerate(prev)}
            # a >= z
            rows.append(({a: 1.0, **{p: -c for p, c in pre.items()}}, b[k], np.inf))
            # a <= z - l (1 - d)   ->  a - z - l d <= -l
            rows.append(({a: 1.0, d: -zl[k], **{p: -c for p, c in pre.items()}},
                         -np.inf, b[k] - zl[k]))
            # a <= u d
            rows.append(({a: 1.0, d: -zu[k]}, -np.inf, 0.0))
            layer.append(a)
        prev = layer
        lo = np.array([var_lo[a] for a in layer])
        hi = np.array([var_hi[a] for a in layer])
    c = np.zeros(n_var)
    for i, p in enumerate(prev):
        c[p] = ws[-1][y, i] - ws[-1][j, i]
    matrix = np.zeros((len(rows), n_var))
    for r, (coef, _, _) in enumerate(rows):
        for k, v in coef.items():
            matrix[r, k] = v
    res = milp(c, constraints=LinearConstraint(matrix, [r[1] for r in rows],
                                               [r[2] for r in rows]),
               integrality=np.array(integrality), bounds=Box(var_lo, var_hi))
    assert res.status == 0, res.message
    return float(res.fun + bs[-1][y] - bs[-1][j])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bounds_contain_the_exact_minimal_margin_and_crown_certifies_a_subset(seed: int) -> None:
    target = mlp(seed)
    network = network_of(target)
    gen = np.random.default_rng(seed)
    x = torch.from_numpy(gen.uniform(0.2, 0.8, (6, 6)))
    with torch.no_grad():
        pred = network.forward(x).argmax(1)
    spec = margin_spec(pred, 3, torch.float64)
    for eps in (0.02, 0.08):
        region = Region(x, torch.full((6,), eps, dtype=torch.float64), Norm.LINF, 0.0, 1.0)
        lower = {m: margin_lower_bounds(network, region, spec, m) for m in METHODS}  # type: ignore
        gaps = {m: 0.0 for m in METHODS}
        for i in range(6):
            others = [j for j in range(3) if j != int(pred[i])]
            for s, j in enumerate(others):
                exact = exact_min_margin(target, x[i].numpy(), eps, int(pred[i]), j)
                for m in METHODS:
                    bound = float(lower[m][i, s])
                    assert bound <= exact + 1e-7, (m, eps, i, j, bound, exact)
                    gaps[m] += exact - bound
                    if bound > 0:  # certified by the bound: the exact margin is positive
                        assert exact > 0
        assert gaps["crown"] <= gaps["crown-ibp"] + 1e-9 <= gaps["ibp"] + 2e-9
        assert gaps["crown"] < gaps["ibp"]  # the backward relaxation is tighter here


class SmallCNN(nn.Module):
    """Every supported layer: conv, BatchNorm, ReLU (module and functional), max and average
    pooling, a view, dense layers."""

    def __init__(self, pool_overlaps: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(3, stride=2) if pool_overlaps else nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=1, padding=1)
        self.avg = nn.AvgPool2d(2)
        self.fc1 = nn.Linear(6 if pool_overlaps else 24, 12)
        self.fc2 = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.bn(self.conv1(x))))
        x = self.avg(F.relu(self.conv2(x)))
        x = x.view(x.size(0), -1)
        return self.fc2(F.relu(self.fc1(x)))


def small_cnn(seed: int, overlaps: bool = False) -> Target:
    torch.manual_seed(seed)
    model = SmallCNN(overlaps)
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 2.0)
        model.bn.weight.uniform_(0.5, 1.5)
    return Target(model, num_classes=4, input_shape=(1, 8, 8) if not overlaps else (1, 7, 7),
                  mean=[0.3], std=[0.4]).eval()


@pytest.mark.parametrize("overlaps", [False, True])
@pytest.mark.parametrize("norm,eps", [(Norm.LINF, 0.05), (Norm.L2, 0.3)])
def test_margins_in_the_ball_and_along_pgd_lie_above_every_bound(norm: Norm, eps: float,
                                                                overlaps: bool) -> None:
    target = small_cnn(3, overlaps)
    network = network_of(target)
    shape = target.input_shape
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(8, *shape, generator=gen, dtype=torch.float64)
    check_network(target, network, x)
    with torch.no_grad():
        pred = network.forward(x).argmax(1)
    spec = margin_spec(pred, 4, torch.float64)
    region = Region(x, torch.full((8,), eps, dtype=torch.float64), norm, 0.0, 1.0)
    bounds = {m: margin_lower_bounds(network, region, spec, m) for m in METHODS}  # type: ignore
    # random points of the ball ∩ box, and 30 steps of PGD on each margin from the centre
    points = []
    for _ in range(20):
        noise = torch.randn(8, *shape, generator=gen, dtype=torch.float64)
        if norm is Norm.LINF:
            delta = eps * noise.sign() * torch.rand(8, *shape, generator=gen, dtype=torch.float64)
        else:
            delta = eps * noise / noise.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        points.append((x + delta).clamp(0, 1))
    for s in range(3):
        adv = x.clone()
        for _ in range(30):
            adv.requires_grad_(True)
            margin = (spec[:, s] * network.forward(adv)).sum()
            (grad,) = torch.autograd.grad(margin, adv)
            with torch.no_grad():
                if norm is Norm.LINF:
                    adv = torch.minimum(torch.maximum(adv - 0.01 * grad.sign(), x - eps), x + eps)
                else:
                    step = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
                    delta = adv - 0.05 * step - x
                    norms = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
                    adv = x + delta * torch.clamp(eps / norms.clamp_min(1e-12), max=1.0)
                adv = adv.clamp(0, 1)
            points.append(adv.detach())
    for p in points:
        with torch.no_grad():
            margins = torch.einsum("nsk,nk->ns", spec, network.forward(p))
        for m, low in bounds.items():
            assert bool((margins >= low - 1e-9).all()), m


@pytest.mark.parametrize("method", METHODS)
def test_eps_zero_gives_the_exact_margins(method: str) -> None:
    target = small_cnn(5)
    network = network_of(target)
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        logits = target(x.float()).double()
    spec = margin_spec(logits.argmax(1), 4, torch.float64)
    region = Region(x, torch.zeros(5, dtype=torch.float64), Norm.LINF, 0.0, 1.0)
    exact = torch.einsum("nsk,nk->ns", spec, network.forward(x))
    low = margin_lower_bounds(network, region, spec, method)  # type: ignore[arg-type]
    assert torch.allclose(low, exact, atol=1e-9)
    assert torch.allclose(exact, torch.einsum("nsk,nk->ns", spec, logits), atol=1e-4)


def test_a_discriminators_two_logits_are_bounded_as_its_one() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 1))
    target = Target(model, num_classes=2, input_shape=(1, 4, 4), kind="discriminator").eval()
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    cert = bound_certificate(target, x, norm=Norm.LINF, method="crown", eps=(0.01,))
    with torch.no_grad():
        decision = target(x).argmax(1)
    certified = cert.pred >= 0
    assert bool((cert.pred[certified] == decision[certified]).all())
    # a certified radius holds: the decision stays inside it at the ball's corners
    for i in torch.nonzero(certified).flatten().tolist():
        r = float(cert.radius[i])
        corners = (x[i] + r * torch.randint(0, 2, (64, 1, 4, 4)).float().mul(2).sub(1)).clamp(0, 1)
        with torch.no_grad():
            assert bool((target(corners).argmax(1) == decision[i]).all())


@pytest.mark.parametrize("method", METHODS)
def test_the_certifier_decides_as_every_margins_bound(method: str) -> None:
    """The certifier stops bounding a sample at its first uncertified margin (and leaves
    what IBP certifies to IBP): its decisions are still those of every margin's bound, and a
    certified sample's margin lies between IBP's and the method's smallest margin bound."""
    network = network_of(mlp(5, classes=5))
    x = torch.rand(60, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    eps = torch.linspace(0.0, 0.12, 60, dtype=torch.float64)
    with torch.no_grad():
        logits = network.forward(x)
        got = BoundCertifier(network, Norm.LINF, method, (0.0, 1.0)).margins(x, logits, eps)
        spec = margin_spec(logits.argmax(1), logits.shape[1], x.dtype)
        region = Region(x, eps, Norm.LINF, 0.0, 1.0)
        every = margin_lower_bounds(network, region, spec, method)  # type: ignore[arg-type]
        ibp = margin_lower_bounds(network, region, spec, "ibp")
    scale = 1 + logits.abs().amax(1)
    full, ibp_min = every.amin(1) / scale, ibp.amin(1) / scale
    certified = full > MARGIN_TOLERANCE
    assert 5 < int(certified.sum()) < 55  # both kinds of sample
    assert torch.equal(got > MARGIN_TOLERANCE, certified)
    assert bool((got[certified] >= ibp_min[certified] - 1e-12).all())
    assert bool((got[certified] <= full[certified] + 1e-12).all())


def test_radius_bisection_is_certified_and_nearly_tight() -> None:
    target = mlp(4)
    network = network_of(target)
    x = torch.rand(10, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    certifier = BoundCertifier(network, Norm.LINF, "crown", (0.0, 1.0))
    radius = certifier.radius(x)
    assert bool((radius >= 0).all())
    assert bool(certifier.certify(x, radius).all())
    just_over = radius + 1.5 / 2 ** 12
    with torch.no_grad():
        logits = network.forward(x)
    margins = certifier.margins(x, logits, just_over)
    assert bool((margins <= MARGIN_TOLERANCE).all())


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(self.fc(x))


@pytest.mark.parametrize("model,named", [
    (nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 3)), "Tanh"),
    (nn.Sequential(Residual(), nn.Linear(4, 3)), "residual"),
    (nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=1)), "Softmax"),
])
def test_unsupported_networks_are_refused_naming_the_layer(model: nn.Module, named: str) -> None:
    target = Target(model, num_classes=3, input_shape=(4,))
    with pytest.raises(BadInput, match=named):
        network_of(target)


def test_a_randomised_target_is_refused() -> None:
    target = Target(nn.Sequential(nn.Linear(4, 3)), num_classes=3, input_shape=(4,),
                    randomised=True)
    with pytest.raises(BadInput, match="randomness"):
        network_of(target)
