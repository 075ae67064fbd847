"""FGSM / BIM / PGD: behaviour, and agreement with foolbox and torchattacks on the same model."""

from __future__ import annotations

import pytest
import torch

from attacks import run_attack
from bench.core.errors import BadInput, ConfigError, UnknownName
from bench.core.norms import Norm, l2_norm
from bench.core.target import Target

Digits = tuple[torch.Tensor, torch.Tensor]
EPSILONS = [0.1, 0.15, 0.2, 0.3]


def robust_acc(target: Target, x_adv: torch.Tensor, y: torch.Tensor) -> float:
    return float((target.predict_logits(x_adv).argmax(1) == y).float().mean())


@pytest.mark.slow
def test_fgsm_matches_foolbox_per_sample(lenet: Target, digits: Digits) -> None:
    import foolbox as fb

    x, y = digits
    with lenet.evaluating():
        fmodel = fb.PyTorchModel(lenet, bounds=lenet.bounds)
        _, _, fb_success = fb.attacks.FGSM()(fmodel, x, y, epsilons=EPSILONS)
    for i, eps in enumerate(EPSILONS):
        ours = run_attack("fgsm", lenet, x, y, eps=eps)
        assert torch.equal(ours.success, fb_success[i]), f"eps={eps}"
        assert 1 - float(ours.success.float().mean()) == pytest.approx(
            1 - float(fb_success[i].float().mean()))


@pytest.mark.slow
def test_pgd_without_random_start_matches_foolbox(lenet: Target, digits: Digits) -> None:
    import foolbox as fb

    x, y = digits
    with lenet.evaluating():
        fmodel = fb.PyTorchModel(lenet, bounds=lenet.bounds)
        attack = fb.attacks.LinfPGD(steps=10, abs_stepsize=0.02, random_start=False)
        _, _, fb_success = attack(fmodel, x, y, epsilons=EPSILONS[:3])
    for i, eps in enumerate(EPSILONS[:3]):
        ours = run_attack("pgd", lenet, x, y, eps=eps,
                          params={"steps": 10, "step_size": 0.02, "random_start": False,
                                  "early_stop": False})
        assert torch.equal(ours.success, fb_success[i]), f"eps={eps}"


@pytest.mark.slow
def test_pgd_at_least_as_strong_as_foolbox_and_torchattacks(lenet: Target, digits: Digits) -> None:
    """Same budget (40 steps of 0.01, random start). Two random starts differ by a few samples
    (seen: 5 vs 3 robust of 200 at eps 0.2 between ours and torchattacks, each seeded), so 'at
    least as strong' allows 3 samples (1.5 points) of noise on 200 digits."""
    import foolbox as fb
    import torchattacks

    x, y = digits
    budgets = [0.1, 0.2]  # where PGD-40 leaves some digits robust and fools others
    with lenet.evaluating():
        fmodel = fb.PyTorchModel(lenet, bounds=lenet.bounds)
        _, fb_adv, _ = fb.attacks.LinfPGD(steps=40, abs_stepsize=0.01)(
            fmodel, x, y, epsilons=budgets)
        torch.manual_seed(0)
        ta_adv = [torchattacks.PGD(lenet, eps=e, alpha=0.01, steps=40)(x, y) for e in budgets]
    for i, eps in enumerate(budgets):
        ours = run_attack("pgd", lenet, x, y, eps=eps, params={"steps": 40, "step_size": 0.01})
        ours_acc = robust_acc(lenet, ours.x_adv, y)
        noise = 3 / len(y)
        assert ours_acc <= robust_acc(lenet, fb_adv[i], y) + noise + 1e-9, f"eps={eps}"
        assert ours_acc <= robust_acc(lenet, ta_adv[i], y) + noise + 1e-9, f"eps={eps}"


def test_attacks_reduce_accuracy_and_pgd_beats_fgsm(lenet: Target, digits: Digits) -> None:
    x, y = digits
    clean = robust_acc(lenet, x, y)
    assert clean >= 0.95
    fgsm = run_attack("fgsm", lenet, x, y, eps=0.15)
    pgd = run_attack("pgd", lenet, x, y, eps=0.15, params={"steps": 20})
    assert robust_acc(lenet, pgd.x_adv, y) < robust_acc(lenet, fgsm.x_adv, y) < clean


def test_least_likely_targeted_reaches_its_target(lenet: Target, digits: Digits) -> None:
    x, y = digits
    least_likely = lenet.predict_logits(x).argmin(1)
    res = run_attack("bim", lenet, x, y, eps=0.3, params={"steps": 20, "targeted": True})
    assert res.y_target is not None and torch.equal(res.y_target, least_likely)
    pred = lenet.predict_logits(res.x_adv).argmax(1)
    assert torch.equal(res.success, pred == least_likely)
    assert float(res.success.float().mean()) > 0.5


def test_explicit_target_labels(lenet: Target, digits: Digits) -> None:
    x, y = digits
    wanted = (y + 1) % 10
    res = run_attack("pgd", lenet, x, y, eps=0.3, params={"steps": 20, "targeted": True},
                     y_target=wanted)
    assert torch.equal(res.y_target, wanted)
    assert float(res.success.float().mean()) > 0.5


def test_l2_pgd_stays_in_ball_and_hurts(lenet: Target, digits: Digits) -> None:
    x, y = digits
    res = run_attack("pgd", lenet, x, y, norm="l2", eps=2.0, params={"steps": 20})
    assert float(l2_norm(res.x_adv - x).max()) <= 2.0 * (1 + 1e-5)
    assert robust_acc(lenet, res.x_adv, y) < 0.5


def test_margin_loss_variant(lenet: Target, digits: Digits) -> None:
    x, y = digits
    res = run_attack("pgd", lenet, x, y, eps=0.2, params={"steps": 20, "loss": "margin"})
    assert robust_acc(lenet, res.x_adv, y) < 0.2


def test_restarts_only_add_successes(lenet: Target, digits: Digits) -> None:
    x, y = digits
    one = run_attack("pgd", lenet, x, y, eps=0.12, params={"steps": 5},
                     generator=torch.Generator().manual_seed(3))
    three = run_attack("pgd", lenet, x, y, eps=0.12, params={"steps": 5, "restarts": 3},
                       generator=torch.Generator().manual_seed(3))
    assert bool((three.success | ~one.success).all())
    assert three.n_backward > one.n_backward
    assert int(three.success.sum()) >= int(one.success.sum())


def test_model_call_counts(lenet: Target, digits: Digits) -> None:
    """One restart costs exactly its gradient steps: the success of the last iterate is checked
    when first read (a fresh fp32 forward, the runner's verification), not by the attack."""
    x, y = digits
    res = run_attack("pgd", lenet, x, y, eps=0.1, params={"steps": 7, "early_stop": False})
    assert res.n_backward == 7 * len(x) and res.n_forward == 7 * len(x)
    assert torch.equal(res.success, lenet.predict_logits(res.x_adv).argmax(1) != y)
    assert res.n_forward == 7 * len(x)
    fgsm = run_attack("fgsm", lenet, x, y, eps=0.1)
    assert (fgsm.n_forward, fgsm.n_backward) == (len(x), len(x))
    # Two restarts: each restart's final iterates are checked, to choose which samples rerun.
    two = run_attack("pgd", lenet, x, y, eps=0.1, params={"steps": 7, "restarts": 2,
                                                          "early_stop": False})
    rerun = two.n_backward // 7 - len(x)
    assert 0 < rerun < len(x)
    assert two.n_forward == 8 * (len(x) + rerun)


class RowCounter(torch.nn.Module):
    """Wraps a target and records the rows of every gradient pass."""

    def __init__(self, target: Target) -> None:
        super().__init__()
        self.target, self.rows = target, []
        self.bounds, self.input_shape = target.bounds, target.input_shape
        self.num_classes, self.name = target.num_classes, target.name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            self.rows.append(x.shape[0])
        return self.target(x)

    def predict_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.target.predict_logits(x)


def test_early_stop_refills_the_batch_and_does_not_depend_on_it(lenet: Target,
                                                                digits: Digits) -> None:
    """With early stop, rows freed by fooled samples are refilled from the queue, so every
    gradient pass but the last few (the tail of the queue) is a full batch; the random starts
    are drawn up front, so the result is the same for any batch size."""
    from attacks.gradient import gradient_attack

    x, y = digits
    counter = RowCounter(lenet)
    kwargs = dict(eps=0.2, norm=Norm.LINF, steps=20, step_size=0.05, random_init=True,
                  restarts=1, targeted=False, loss="ce", y_target=None, early_stop=True)
    with lenet.evaluating():
        streamed = gradient_attack(counter, x, y, generator=torch.Generator().manual_seed(0),
                                   batch_size=16, **kwargs)  # type: ignore[arg-type]
        whole = gradient_attack(lenet, x, y, generator=torch.Generator().manual_seed(0),
                                **kwargs)
    rows = counter.rows
    assert sum(rows) == streamed.n_backward
    full = rows.index(next(r for r in rows if r < 16)) if min(rows) < 16 else len(rows)
    assert full >= len(rows) - 20  # only the queue's tail (at most `steps` passes) runs short
    assert all(r == 16 for r in rows[:full])
    assert streamed.n_backward == pytest.approx(whole.n_backward, rel=0.02)  # float noise
    same = (streamed.x_adv - whole.x_adv).flatten(1).abs().amax(1) < 1e-5
    assert float(same.float().mean()) > 0.98  # equal up to float noise between batch sizes
    assert int((streamed.success != whole.success).sum()) <= 2
    # Full budget: rows advance in waves of 16 and every image gets exactly its 20 steps.
    full = {**kwargs, "early_stop": False}
    with lenet.evaluating():
        waves = gradient_attack(lenet, x, y, generator=torch.Generator().manual_seed(0),
                                batch_size=16, **full)  # type: ignore[arg-type]
        at_once = gradient_attack(lenet, x, y, generator=torch.Generator().manual_seed(0),
                                  **full)  # type: ignore[arg-type]
    assert waves.n_backward == at_once.n_backward == 20 * len(x)
    same = (waves.x_adv - at_once.x_adv).flatten(1).abs().amax(1) < 1e-5
    assert float(same.float().mean()) > 0.98


@pytest.mark.parametrize("norm, eps", [("linf", 0.3), ("l2", 3.0)])
def test_early_stop_saves_steps_and_loses_no_strength(lenet: Target, digits: Digits, norm: str,
                                                      eps: float) -> None:
    """Per-sample early stop: fooled samples leave the loop at the first fooling iterate, so an
    undefended model costs far fewer gradient steps, and no sample that the full-budget run
    fools is missed (each sample's trajectory is the same until it leaves)."""
    x, y = digits
    common = {"steps": 20, "step_size": eps / 8}
    full = run_attack("pgd", lenet, x, y, norm=norm, eps=eps, params={**common,
                      "early_stop": False}, generator=torch.Generator().manual_seed(0))
    early = run_attack("pgd", lenet, x, y, norm=norm, eps=eps, params=common,
                       generator=torch.Generator().manual_seed(0))
    assert early.n_backward < 0.5 * full.n_backward
    assert int((full.success & ~early.success).sum()) <= 2  # float noise across batch sizes
    assert int(early.success.sum()) >= int(full.success.sum()) - 2
    fooled = lenet.predict_logits(early.x_adv).argmax(1) != y
    assert bool((fooled | ~early.success).all())  # a kept iterate really fools the model
    delta = (early.x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert float(size.max()) <= eps * (1 + 1e-5)


@pytest.mark.parametrize("kwargs,match", [
    ({"eps": -0.1}, "eps must be"),
    ({"eps": 1.5}, "exceeds the largest meaningful linf budget"),
    ({"eps": "abc"}, "not a number"),
    ({"eps": 0.1, "norm": "l3"}, "unknown norm"),
    ({"eps": 0.1, "norm": "l0"}, "supports norms"),
    ({"eps": 0.1, "params": {"steps": 0}}, "steps must be >= 1"),
    ({"eps": 0.1, "params": {"stepz": 3}}, "unknown parameter"),
    ({"eps": 0.1, "params": {"loss": "hinge"}}, "unknown loss"),
])
def test_bad_requests_raise_clear_errors(lenet: Target, digits: Digits, kwargs: dict,
                                         match: str) -> None:
    x, y = digits
    with pytest.raises(BadInput, match=match):
        run_attack("pgd", lenet, x[:4], y[:4], **kwargs)


def test_eps_as_fraction_string(lenet: Target, digits: Digits) -> None:
    x, y = digits
    res = run_attack("fgsm", lenet, x[:8], y[:8], eps="8/255")
    assert float(res.linf.max()) == pytest.approx(8 / 255, rel=1e-5)


def test_data_outside_bounds_is_refused(lenet: Target, digits: Digits) -> None:
    x, y = digits
    with pytest.raises(BadInput, match=r"outside the target's bounds.*divide 0..255 images by 255"):
        run_attack("fgsm", lenet, x[:4] * 255, y[:4], eps=0.1)


def test_wrong_shapes_and_labels_are_refused(lenet: Target, digits: Digits) -> None:
    x, y = digits
    with pytest.raises(BadInput, match="expects"):
        run_attack("fgsm", lenet, x[:4, :, :20], y[:4], eps=0.1)
    with pytest.raises(BadInput, match="labels must have shape"):
        run_attack("fgsm", lenet, x[:4], y[:3], eps=0.1)
    with pytest.raises(BadInput, match="labels must lie"):
        run_attack("fgsm", lenet, x[:4], y[:4] + 20, eps=0.1)


def test_unknown_attack_suggests_close_names(lenet: Target, digits: Digits) -> None:
    with pytest.raises(UnknownName, match="did you mean 'pgd'"):
        run_attack("pgdd", lenet, digits[0][:2], digits[1][:2], eps=0.1)
    assert not issubclass(UnknownName, ConfigError)
