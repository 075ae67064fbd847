"""APGD, APGD-T, FAB-T, Square and the ``standard`` cascade, checked per sample against the
original AutoAttack (``pyautoattack``) from the same starting point, against torchattacks
(an independent implementation of each), against the papers' definitions, and against the
cascade's own bookkeeping. Budgets are small here; tests/benchmarks runs AutoAttack's."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from attacks import run_attack
from attacks.apgd import apgd_start, checkpoints, dlr_loss, targeted_dlr_loss
from attacks.cascade import CLEAN, ROBUST, StandardParams, decision, members
from attacks.fab import project_l1, project_l2, project_linf
from attacks.square import eta
from bench import peers
from bench.core.checkpoints import CheckpointCache
from bench.core.datasets import Dataset, Split
from bench.core.members import MemberStats
from bench.core.norms import Norm
from bench.core.target import Target
from defenses import DEFENSES, fitted_defense
from tests.conftest import make_tiny_target
from tests.masking import Quantised, Shattered

torchattacks = pytest.importorskip("torchattacks")

SEED = 0


@pytest.fixture(scope="module")
def fgsm_rs_lenet(lenet: Target, mnist5k: Dataset, tmp_path_factory: pytest.TempPathFactory
                  ) -> Target:
    """The trained LeNet fine-tuned with FGSM-RS at eps 0.3 (a small budget: 2,000 digits)."""
    train = mnist5k.split("train")
    params = {"eps": 0.3, "epochs": 3, "monitor_samples": 100, "monitor_steps": 5,
              "init": "base"}
    return fitted_defense(DEFENSES.get("fgsm_rs"), lenet, Split(train.x[:2000], train.y[:2000]),
                          params, seed=0, cache=CheckpointCache(tmp_path_factory.mktemp("at")),
                          progress=False)


@pytest.fixture(scope="module")
def held_out(mnist5k: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """500 held-out digits."""
    return mnist5k.test.x[:500].clone(), mnist5k.test.y[:500].clone()


def robust(target: Target, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor) -> float:
    """Robust accuracy of ``x_adv`` judged by a fresh forward (clean-correct and still correct)."""
    clean = target.predict_logits(x).argmax(1) == y
    return float((clean & (target.predict_logits(x_adv).argmax(1) == y)).float().mean())


def ours(name: str, target: Target, x: torch.Tensor, y: torch.Tensor, eps: float,
         norm: str = "linf", **params: Any) -> torch.Tensor:
    return run_attack(name, target, x, y, eps=eps, norm=norm, params=params,
                      generator=torch.Generator().manual_seed(SEED)).x_adv


def theirs(attack: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(SEED)
    return attack(x, y)


# --- the papers' definitions ----------------------------------------------------------------

def test_checkpoints_follow_the_papers_schedule() -> None:
    """p₀ = 0, p₁ = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06), checked at ⌈p_j·N⌉."""
    p = [0.0, 0.22]
    while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    paper = [math.ceil(round(pj * 100, 6)) for pj in p[1:]]
    assert list(checkpoints(100)) == paper == [22, 41, 57, 70, 80, 87, 93, 99]


def test_dlr_losses_match_their_definitions() -> None:
    z = torch.tensor([[3.0, 1.0, 2.0, 0.0], [0.0, 4.0, 1.0, 2.0]])
    y = torch.tensor([0, 0])
    # row 0: top is the label, runner-up 2 → -(3-2)/(3-1); row 1: -(0-4)/(4-1)
    torch.testing.assert_close(dlr_loss(z, y), torch.tensor([-0.5, 4 / 3]))
    t = torch.tensor([2, 1])
    # -(z_y - z_t) / (z_π1 - (z_π3 + z_π4) / 2)
    torch.testing.assert_close(targeted_dlr_loss(z, y, t),
                               torch.tensor([-(3 - 2) / (3 - 0.5), -(0 - 4) / (4 - 0.5)]))


@pytest.mark.parametrize("project,norm", [(project_linf, math.inf), (project_l2, 2),
                                          (project_l1, 1)])
def test_fab_projections_reach_the_hyperplane_inside_the_box(project: Any, norm: float) -> None:
    """The step lands on w·z = b inside [0, 1] and no shorter step of the same direction set
    does: compared with a dense search along the solution's own ray."""
    g = torch.Generator().manual_seed(3)
    t, w = torch.rand(64, 30, generator=g), torch.randn(64, 30, generator=g)
    b = (w * torch.rand(64, 30, generator=g)).sum(1)  # a point of the box lies on the plane
    d = project(t, w, b, 0.0, 1.0)
    z = t + d
    assert float(z.min()) >= -1e-6 and float(z.max()) <= 1 + 1e-6
    torch.testing.assert_close((w * z).sum(1), b, atol=1e-3, rtol=1e-4)
    for s in (0.9, 0.97):  # a shorter step of the same shape falls short of the plane
        short = (w * (t + s * d)).sum(1)
        assert bool(((short - b).abs() > 1e-4).all())


def test_fab_l1_projection_is_the_exact_minimal_l1_step() -> None:
    """Its L1 length equals the closed form of tests/linear.py (the fractional knapsack,
    computed there independently in float64)."""
    from tests.linear import half_space_distance

    g = torch.Generator().manual_seed(4)
    t, w = torch.rand(32, 30, generator=g), torch.randn(32, 30, generator=g)
    b = (w * torch.rand(32, 30, generator=g)).sum(1)
    d = project_l1(t, w, b, 0.0, 1.0)
    for i in range(32):
        need = float(b[i] - (w[i] * t[i]).sum())
        a = (w[i] * math.copysign(1.0, need)).double().numpy()
        room = torch.where(torch.from_numpy(a) > 0, 1 - t[i].double(), t[i].double()).numpy()
        exact = half_space_distance(a, room, abs(need), Norm.L1)
        assert float(d[i].abs().sum()) == pytest.approx(exact, rel=1e-4)


def test_dlr_on_two_classes_runs_as_the_margin_loss_and_says_so(
        digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    target = make_tiny_target("discriminator")
    x, _ = digits
    real = torch.arange(len(x[:20])) % 2
    res = run_attack("apgd", target, x[:20], real, eps=0.1, params={"steps": 3, "loss": "dlr"})
    assert res.effective_params == {"loss": "margin"}
    res = run_attack("apgd_t", target, x[:20], real, eps=0.1, params={"steps": 3})
    assert res.effective_params == {"loss": "margin"}


# --- against torchattacks -------------------------------------------------------------------

def original_run(original_autoattack: Any, target: Target, x: torch.Tensor, y: torch.Tensor,
                 start: torch.Tensor, *, eps: float, norm: str, steps: int, loss: str,
                 targeted: bool = False) -> torch.Tensor:
    """Per sample, robust after one run of the original AutoAttack's APGD (or APGD-T against
    the highest-scoring other class) from ``start``, on the clean-correct samples."""
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

    kind = APGDAttack_targeted if targeted else APGDAttack
    kwargs = {} if targeted else {"loss": loss}
    attack = kind(target, n_iter=steps, norm="Linf" if norm == "linf" else "L2", eps=eps,
                  device="cpu", seed=SEED, **kwargs)
    attack.init_hyperparam(x)
    logits = target.predict_logits(x)
    clean = logits.argmax(1) == y
    idx = torch.nonzero(clean).flatten()
    if targeted:
        attack.y_target = logits[idx].sort(dim=1)[1][:, -2]
    with target.evaluating():
        _, still_correct, _, _ = attack.attack_single_run(x[idx], y[idx], x_init=start[idx])
    robust = torch.zeros_like(clean)
    robust[idx] = still_correct.bool()
    return robust


@pytest.mark.parametrize("model", ["lenet", "fgsm_rs_lenet"])
@pytest.mark.parametrize("name,loss,norm,eps", [
    ("apgd", "ce", "linf", 0.1), ("apgd", "dlr", "linf", 0.1), ("apgd", "ce", "l2", 1.5),
    ("apgd_t", "dlr", "linf", 0.1)])
def test_apgd_matches_the_original_autoattack_from_the_same_start(
        model: str, name: str, loss: str, norm: str, eps: float, held_out: Any,
        original_autoattack: Any, request: pytest.FixtureRequest) -> None:
    """Per sample, against the original AutoAttack's APGD run from the starting point ours
    drew (AutoAttack's own random start, from our generator): one run decides the same
    samples, whatever CPU rounds the fit or the attack. At most one of 250 digits may be
    robust to ours and fooled by the original (a float rounding can tip a sample)."""
    target = request.getfixturevalue(model)
    x, y = held_out[0][:250], held_out[1][:250]
    eps = eps * 3 if model == "fgsm_rs_lenet" and norm == "linf" else eps
    params: dict[str, Any] = {"steps": 20}
    params.update({"loss": loss} if name == "apgd" else {"target_classes": 1})
    res = run_attack(name, target, x, y, eps=eps, norm=norm, params=params,
                     generator=torch.Generator().manual_seed(SEED))
    mine = (target.predict_logits(x).argmax(1) == y) & (
        target.predict_logits(res.x_adv).argmax(1) == y)
    start = (x + apgd_start(x, Norm(norm), eps, torch.Generator().manual_seed(SEED))).clamp(0, 1)
    reference = original_run(original_autoattack, target, x, y, start, eps=eps, norm=norm,
                             steps=20, loss=loss, targeted=name == "apgd_t")
    assert 0 < int(reference.sum()) < len(x)  # a budget that leaves work for both
    assert int((mine & ~reference).sum()) <= 1, (int(mine.sum()), int(reference.sum()))


def test_apgd_100_steps_at_least_as_strong_as_pgd_40(fgsm_rs_lenet: Target,
                                                     held_out: Any) -> None:
    x, y = held_out
    apgd = robust(fgsm_rs_lenet, x, y, ours("apgd", fgsm_rs_lenet, x, y, 0.3))
    pgd = robust(fgsm_rs_lenet, x, y, ours("pgd", fgsm_rs_lenet, x, y, 0.3, steps=40,
                                          step_size=0.01))
    assert apgd <= pgd, (apgd, pgd)
    assert pgd - apgd < 0.5  # the same model, not a broken one


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.5)])
def test_fab_t_as_strong_as_torchattacks(lenet: Target, held_out: Any, norm: str,
                                         eps: float) -> None:
    """FAB-T's minimal norms give, at eps, at most torchattacks' multi-targeted FAB's robust
    accuracy; it finds an adversarial for every sample (it is unbounded)."""
    x, y = held_out[0][:100], held_out[1][:100]
    res = run_attack("fab_t", lenet, x, y, norm=norm, params={"steps": 10})
    dist = res.linf if norm == "linf" else res.l2
    clean = lenet.predict_logits(x).argmax(1) == y
    mine = float((clean & ~(res.success & (dist <= eps))).float().mean())
    peer = torchattacks.FAB(lenet, norm="Linf" if norm == "linf" else "L2", eps=eps, steps=10,
                            multi_targeted=True, n_classes=10, n_restarts=1)
    reference = robust(lenet, x, y, theirs(peer, x, y))
    assert mine <= reference + 0.005, (mine, reference)
    assert bool(res.success.all())


@pytest.mark.parametrize("norm,eps", [("linf", 0.2), ("l2", 2.0)])
def test_square_as_strong_as_torchattacks(lenet: Target, held_out: Any, norm: str,
                                          eps: float) -> None:
    """Random search: equal budgets agree within 3 points (6 of 200 samples)."""
    x, y = held_out[0][:200], held_out[1][:200]
    mine = robust(lenet, x, y, ours("square", lenet, x, y, eps, norm, queries=300))
    peer = torchattacks.Square(lenet, norm="Linf" if norm == "linf" else "L2", eps=eps,
                               n_queries=300, n_restarts=1)
    reference = robust(lenet, x, y, theirs(peer, x, y))
    assert mine <= reference + 0.03, (mine, reference)


@pytest.mark.parametrize("norm", [Norm.L2, Norm.L1])
@pytest.mark.parametrize("side", [3, 5, 7, 12])
def test_square_window_pattern_is_the_originals(norm: Norm, side: int,
                                                original_autoattack: Any) -> None:
    """The window pattern of a Square step equals the original's ``eta`` (up to the random
    transpose both draw)."""
    from pyautoattack.square import SquareAttack

    original = SquareAttack(lambda z: z, norm=norm.value.upper(), device="cpu").eta(side)
    mine = eta(side, torch.Generator().manual_seed(0), torch.device("cpu"), norm)
    assert torch.allclose(mine, original, atol=1e-6) or torch.allclose(mine, original.T,
                                                                       atol=1e-6)


def test_l1_square_as_strong_as_the_originals(lenet: Target, held_out: Any,
                                             original_autoattack: Any) -> None:
    """L1 Square against the original's own ``SquareAttack(norm="L1")`` at the same 300
    queries on 100 digits: robust accuracy within 3 points, every point inside the L1 ball
    and the box."""
    from pyautoattack.square import SquareAttack

    x, y, eps = held_out[0][:100], held_out[1][:100], 40.0
    x_adv = ours("square", lenet, x, y, eps, "l1", queries=300)
    assert float((x_adv - x).abs().flatten(1).sum(1).max()) <= eps * (1 + 1e-5)
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    torch.manual_seed(SEED)
    peer = SquareAttack(lenet, norm="L1", eps=eps, n_queries=300, seed=SEED, device="cpu")
    with lenet.evaluating():  # the original queries the model as it finds it
        reference = robust(lenet, x, y, peer.perturb(x, y))
    mine = robust(lenet, x, y, x_adv)
    clean = robust(lenet, x, y, x)
    assert reference < clean - 0.1  # the budget is one where the search fools digits
    assert mine <= reference + 0.03, (mine, reference)


def test_square_counts_queries_per_sample(lenet: Target, held_out: Any) -> None:
    x, y = held_out[0][:40], held_out[1][:40]
    res = run_attack("square", lenet, x, y, eps=0.2, params={"queries": 50})
    queries = res.artifacts["queries"]
    # one clean check per sample, then each sample's search queries
    assert int(queries.sum()) + len(x) == res.n_forward and res.n_backward == 0
    clean_wrong = lenet.predict_logits(x).argmax(1) != y
    assert bool((queries[clean_wrong] == 0).all() and res.success[clean_wrong].all())
    assert bool((queries[~clean_wrong] >= 1).all() and (queries <= 50).all())
    assert bool((queries[~res.success] == 50).all())  # the robust ones spent the budget


def test_square_returns_a_misclassified_clean_input_unchanged() -> None:
    """A sample the model already gets wrong counts as fooled at its clean point (AutoAttack
    attacks only the correctly classified ones); the search never trades it away."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    target = Target(model, num_classes=3, input_shape=(1, 4, 4), bounds=(0.0, 1.0))
    x = torch.rand(12, 1, 4, 4)
    wrong = (target.predict_logits(x).argmax(1) + 1) % 3  # every label is wrong
    res = run_attack("square", target, x, wrong, eps=0.1, params={"queries": 5})
    assert bool(res.success.all()) and torch.equal(res.x_adv, x)
    assert int(res.artifacts["queries"].sum()) == 0 and res.n_forward == len(x)


# --- gradient masking -----------------------------------------------------------------------

def test_square_breaks_what_gradients_cannot(lenet: Target, held_out: Any) -> None:
    masked = Target.from_module(Quantised(lenet.model), input_shape=(1, 28, 28), num_classes=10,
                                name="quantised-lenet")
    x, y = held_out[0][:60], held_out[1][:60]
    keep = masked.predict_logits(x).argmax(1) == y
    x, y = x[keep], y[keep]
    for name, params in (("pgd", {"steps": 20, "random_start": False}), ("apgd", {"steps": 20})):
        fooled = run_attack(name, masked, x, y, eps=0.25, params=params).success
        assert int(fooled.sum()) <= 1, name
    square = run_attack("square", masked, x, y, eps=0.25, params={"queries": 300})
    assert float(square.success.float().mean()) >= 0.5
    res = run_attack("standard", masked, x, y, eps=0.25,
                     params={"steps": 20, "queries": 300, "target_classes": 3})
    fooled_by, members = res.artifacts["fooled_by"], res.artifacts["members"]
    assert int((fooled_by == 4).sum()) == int(members[3, 1]) > 0  # square did the work


@pytest.mark.parametrize("mask,eps", [(Quantised, 0.25), (Shattered, 0.1)])
def test_rapid_fools_what_standards_square_fools(mask: Any, eps: float, lenet: Target,
                                                 mnist5k: Dataset) -> None:
    """Two masking mechanisms, two different indicators (zero gradients; a Square probe that
    gets closer to the boundary than the white-box members): ``rapid`` runs Square's budget on
    both and leaves at most one digit more robust than ``standard``, whose Square did work."""
    masked = Target.from_module(mask(lenet.model), input_shape=(1, 28, 28), num_classes=10,
                                name=mask.__name__.lower())
    idx = torch.linspace(0, len(mnist5k.test) - 1, 60).round().long()
    x, y = mnist5k.test.x[idx], mnist5k.test.y[idx]
    budget = {"steps": 20, "queries": 1000}
    std = run_attack("standard", masked, x, y, eps=eps, params={**budget, "target_classes": 3},
                     generator=torch.Generator().manual_seed(SEED))
    rapid = run_attack("standard", masked, x, y, eps=eps, generator=torch.Generator().manual_seed(
        SEED), params={**budget, "version": "rapid", "probe_queries": 300})
    square_only = std.artifacts["fooled_by"] == 4
    assert int(square_only.sum()) >= 3  # the black-box member found what gradients missed
    stats = MemberStats.read(rapid.artifacts["members"])
    assert stats[3].given > 0 and stats[3].skipped == 0  # rapid ran Square's full budget
    assert int((~rapid.success).sum()) <= int((~std.success).sum()) + 1
    assert int((square_only & ~rapid.success).sum()) <= max(1, int(square_only.sum()) // 5)


def test_rapid_skips_square_where_gradients_work(lenet: Target, held_out: Any) -> None:
    x, y = held_out[0][:100], held_out[1][:100]
    res = run_attack("standard", lenet, x, y, eps=0.1,
                     params={"version": "rapid", "steps": 20, "probe_queries": 200})
    stats = MemberStats.read(res.artifacts["members"])
    assert [s.skipped for s in stats] == [0, 0, 0, stats[2].given] and stats[2].given > 0
    assert stats[3].n_forward == 0 and stats[2].fooled == 0
    said = decision(members(StandardParams(version="rapid")), stats)
    assert said is not None and said.startswith(f"square skipped on {stats[2].given}: no failure")


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.5)])
def test_standard_and_rapid_at_most_one_digit_more_robust_than_the_original(
        norm: str, eps: float, lenet: Target, mnist5k: Dataset, original_autoattack: Any
) -> None:
    """The benchmark's comparison (tests/benchmarks/test_autoattack_original.py) at a budget CI
    affords, the same on both sides: 10 steps, 3 target classes, 200 queries, 100 digits."""
    from tests.original import robust as robust_digits
    from tests.original import run_original

    idx = torch.linspace(0, len(mnist5k.test) - 1, 100).round().long()
    x, y = mnist5k.test.x[idx], mnist5k.test.y[idx]
    original = run_original(original_autoattack, lenet, x, y, eps=eps, norm=norm, steps=10,
                            target_classes=3, queries=200)
    reference = robust_digits(lenet, x, y, original.x_adv)
    assert 0 < int(reference.sum()) < len(x)
    assert original.calls["checks"]["backward"] == 0 < original.calls["attack"]["backward"]
    for version, extra in (("standard", {"target_classes": 3}), ("rapid", {})):
        res = run_attack("standard", lenet, x, y, eps=eps, norm=norm, params={
            "version": version, "steps": 10, "queries": 200, **extra},
            generator=torch.Generator().manual_seed(SEED))
        mine = robust_digits(lenet, x, y, res.x_adv)
        assert int((mine & ~reference).sum()) <= 1, (version, int(mine.sum()),
                                                     int(reference.sum()))


# --- L1 (Croce & Hein, ICML 2021) ----------------------------------------------------------

def test_l1_box_projection_equals_the_originals() -> None:
    """advbench's projection onto the L1 ball and the box is the original AutoAttack's (its
    sort-based solver; ours bisects the same threshold), and never exceeds the ball."""
    from pyautoattack.autopgd_base import L1_projection

    from bench.core.norms import project_l1_box

    g = torch.Generator().manual_seed(3)
    x = torch.rand(64, 1, 28, 28, generator=g)
    t = torch.randn(64, 1, 28, 28, generator=g) * 0.3
    for eps in (0.5, 5.0, 20.0, 1e4):
        ours = project_l1_box(t, x, eps, (0.0, 1.0))
        torch.testing.assert_close(ours, t + L1_projection(x, t, eps), atol=2e-5, rtol=0)
        assert float(ours.abs().flatten(1).sum(1).max()) <= eps * (1 + 1e-6)
        assert 0 <= float((x + ours).min()) and float((x + ours).max()) <= 1


@pytest.mark.parametrize("name,large_reps", [("apgd", False), ("apgd", True),
                                             ("apgd_t", True)])
def test_l1_apgd_matches_the_original_from_the_same_noise(
        name: str, large_reps: bool, lenet: Target, held_out: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """L1-APGD (sparse steps, adaptive sparsity; with ``large_reps`` AutoAttack's 3·eps, 2·eps,
    eps schedule) against the original's ``APGDAttack(norm="L1")``, its random starts drawn
    from the noise ours drew (the original's ``torch.randn`` calls answered from our
    generator's stream; both attack the same clean-correct digits): per sample, at most one of
    120 digits robust to ours and fooled by the original."""
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

    x, y = held_out
    correct = torch.nonzero(lenet.predict_logits(x).argmax(1) == y).flatten()[:120]
    x, y = x[correct], y[correct]
    eps, steps = 10.0, 20
    params: dict[str, Any] = {"steps": steps, "large_reps": large_reps}
    if name == "apgd_t":
        params["target_classes"] = 2
        original: Any = APGDAttack_targeted(lenet, n_iter=steps, norm="L1", eps=eps,
                                            device="cpu", seed=SEED, use_largereps=True,
                                            n_target_classes=2)
    else:
        original = APGDAttack(lenet, n_iter=steps, norm="L1", eps=eps, device="cpu",
                              seed=SEED, loss="ce", use_largereps=large_reps)
    res = run_attack(name, lenet, x, y, norm="l1", eps=eps, params=params,
                     generator=torch.Generator().manual_seed(SEED))
    assert float(res.x_adv.sub(x).abs().flatten(1).sum(1).max()) <= eps * (1 + 1e-5)
    stream, randn = torch.Generator().manual_seed(SEED), torch.randn
    monkeypatch.setattr(torch, "randn", lambda *shape, **_: randn(
        *shape, generator=stream))
    monkeypatch.setattr(torch, "randn_like", lambda t, **_: randn(
        t.shape, generator=stream).to(t))
    with lenet.evaluating():
        x_ref = original.perturb(x, y)
    monkeypatch.undo()
    clean = lenet.predict_logits(x).argmax(1) == y
    reference = clean & (lenet.predict_logits(x_ref).argmax(1) == y)
    mine = clean & (lenet.predict_logits(res.x_adv).argmax(1) == y)
    assert 0 < int(reference.sum()) < 0.9 * len(x)
    assert int((mine & ~reference).sum()) <= 1, (int(mine.sum()), int(reference.sum()))


def test_l1_standard_at_most_one_digit_more_robust_than_the_original(
        lenet: Target, mnist5k: Dataset, original_autoattack: Any) -> None:
    """The L1 cascade (APGD-CE ×5, APGD-T, FAB-T, Square) against the original's L1
    ``standard`` (the same members) at the same small budget: 20 steps, 2 target classes, 30
    queries, 30 digits."""
    from tests.original import robust as robust_digits
    from tests.original import run_original

    idx = torch.linspace(0, len(mnist5k.test) - 1, 30).round().long()
    x, y = mnist5k.test.x[idx], mnist5k.test.y[idx]
    original = run_original(original_autoattack, lenet, x, y, eps=10.0, norm="l1", steps=20,
                            target_classes=2, queries=30)
    reference = robust_digits(lenet, x, y, original.x_adv)
    res = run_attack("standard", lenet, x, y, eps=10.0, norm="l1",
                     params={"steps": 20, "target_classes": 2, "queries": 30},
                     generator=torch.Generator().manual_seed(SEED))
    mine = robust_digits(lenet, x, y, res.x_adv)
    assert 0 < int(reference.sum()) < len(x)
    assert int((mine & ~reference).sum()) <= 1, (int(mine.sum()), int(reference.sum()))
    assert [m.name for m in members(StandardParams(), Norm.L1)] == [
        "apgd-ce", "apgd-t", "fab-t", "square"]


# --- the cascade ----------------------------------------------------------------------------

def test_members_only_attack_what_every_earlier_member_missed(lenet: Target,
                                                              held_out: Any) -> None:
    x, y = held_out[0][:80], held_out[1][:80]
    res = run_attack("standard", lenet, x, y, eps=0.1,
                     params={"steps": 10, "queries": 100, "target_classes": 3})
    fooled_by, members = res.artifacts["fooled_by"], res.artifacts["members"]
    clean_wrong = int((lenet.predict_logits(x).argmax(1) != y).sum())
    assert int((fooled_by == CLEAN).sum()) == clean_wrong
    left = len(x) - clean_wrong
    for k in range(4):
        given, fooled = int(members[k, 0]), int(members[k, 1])
        assert given == left, k  # exactly the samples no earlier member fooled
        assert int((fooled_by == k + 1).sum()) == fooled
        left -= fooled
    assert int((fooled_by == ROBUST).sum()) == left
    assert res.n_forward == len(x) + int(members[:, 2].sum())  # the clean pass + the members
    assert res.n_backward == int(members[:, 3].sum())
    assert int(members[3, 3]) == 0  # Square never asks for a gradient
    success = lenet.predict_logits(res.x_adv).argmax(1) != y
    assert torch.equal(success, fooled_by != ROBUST)


def test_standard_at_most_as_robust_as_torchattacks_autoattack(lenet: Target,
                                                               held_out: Any) -> None:
    """The same members at the same budgets as torchattacks' AutoAttack (10 steps; Square with
    fewer queries here), on the undefended LeNet at 0.1, 60 digits: no sample more robust."""
    x, y = held_out[0][:60], held_out[1][:60]
    mine = robust(lenet, x, y, ours("standard", lenet, x, y, 0.1, steps=10, queries=300))
    torch.manual_seed(SEED)
    peer = peers.autoattack("torchattacks", lenet, x, y, 0.1, steps=10, queries=300)
    reference = robust(lenet, x, y, peer())
    assert mine <= reference + 0.005, (mine, reference)


def test_a_sweep_writes_the_cascade_and_a_row_per_member(tmp_path: Path, cache_dir: Path
                                                         ) -> None:
    from bench.config import parse_config
    from bench.runner import RunOptions
    from bench.sweep import run_sweep
    from leaderboards import leaderboards, load
    from leaderboards.compare import compare
    from leaderboards.store import ResultStore

    config = parse_config({
        "sweep": {"name": "aa", "n_eval": 30},
        "targets": [{"model": "lenet"}],
        "attacks": [{"name": "standard", "eps": [0.1, 0.3],
                     "params": {"version": "fast", "steps": 5, "target_classes": 2}}]})
    run_sweep(config, RunOptions(out=tmp_path, cache_dir=cache_dir, progress=False))
    summary, samples = load(tmp_path), ResultStore(tmp_path).samples()
    for eps, rows in summary.groupby("eps"):
        cascade = rows[rows["cascade_member"].isna()].iloc[0]
        members = rows.dropna(subset=["cascade_member"]).set_index("cascade_member")
        assert list(members.loc[["apgd-ce", "apgd-t"], "robust_acc"]) == sorted(
            members["robust_acc"], reverse=True)  # cumulative: never rises along the cascade
        assert members.loc["apgd-t", "robust_acc"] == cascade["robust_acc"]
        assert set(rows["attack_run"]) == {cascade["cell_id"]}
        given = members.loc["apgd-t", "member_given"]
        left = members.loc["apgd-t", "member_robust_acc"] * given if given else 0
        assert round(left) == round(cascade["robust_acc"] * cascade["n_samples"])
        mine = samples[samples["cell_id"] == cascade["cell_id"]]
        fooled = mine[mine["clean_correct"] & ~mine["adv_correct"]]
        assert set(fooled["fooled_by"]) <= {"apgd-ce", "apgd-t"} and fooled["fooled_by"].notna().all()
    board = leaderboards(summary, samples)[0].table
    assert [c for c in board.columns if "@" in c and "worst" not in c] == [
        "standard-fast@0.1", "standard-fast@0.3"]  # the version named; members off the board
    assert {"standard/apgd-ce", "standard/apgd-t", "standard"} <= set(compare(summary, samples)[
        "attack"])


def test_robust_accuracy_rising_with_eps_is_flagged() -> None:
    import pandas as pd

    from leaderboards.compare import eps_flags
    from tests.conftest import summary_values

    rows = pd.DataFrame([summary_values(f"c{i}", eps=eps, eps_display=str(eps), robust_acc=acc,
                                        attack="standard")
                         for i, (eps, acc) in enumerate([(0.1, 0.5), (0.2, 0.3), (0.3, 0.4)])])
    flags = eps_flags(rows)
    assert flags["c0"] == [] and flags["c1"] == []
    assert flags["c2"] == ["eps-rises"]
