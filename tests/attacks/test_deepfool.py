"""DeepFool against foolbox's implementation on the same model and data, and its invariants."""

from __future__ import annotations

import pytest
import torch

from attacks import run_attack
from bench.core.errors import BadInput
from bench.core.target import Target
from tests.conftest import make_tiny_target

Digits = tuple[torch.Tensor, torch.Tensor]


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_deepfool_matches_or_beats_foolbox(norm: str, lenet: Target, digits: Digits) -> None:
    """Success rate >= foolbox's, median norm <= 1.03 x foolbox's."""
    import foolbox as fb

    x, y = digits[0][::2], digits[1][::2]
    with lenet.evaluating():
        fmodel = fb.PyTorchModel(lenet, bounds=lenet.bounds)
        attack = fb.attacks.L2DeepFoolAttack() if norm == "l2" else fb.attacks.LinfDeepFoolAttack()
        _, fb_adv, fb_success = attack(fmodel, x, y, epsilons=None)
    ours = run_attack("deepfool", lenet, x, y, norm=norm, eps=None)
    fb_delta = (fb_adv - x).flatten(1)
    fb_norms = fb_delta.norm(dim=1) if norm == "l2" else fb_delta.abs().amax(1)
    our_norms = ours.l2 if norm == "l2" else ours.linf
    clean_ok = lenet.predict_logits(x).argmax(1) == y
    fb_fooled, our_fooled = fb_success & clean_ok, ours.success & clean_ok
    assert int(our_fooled.sum()) >= int(fb_fooled.sum())
    assert float(our_norms[our_fooled].median()) <= 1.03 * float(fb_norms[fb_fooled].median())


def test_minimal_perturbations_are_small_and_fool(lenet: Target, digits: Digits) -> None:
    x, y = digits
    res = run_attack("deepfool", lenet, x, y, norm="l2", eps=None)
    clean_ok = lenet.predict_logits(x).argmax(1) == y
    assert bool(res.success[clean_ok].all())
    pred = lenet.predict_logits(res.x_adv).argmax(1)
    assert bool((pred[clean_ok] != y[clean_ok]).all())
    # Minimal: PGD-L2 at the median DeepFool norm fools at most a little more than half.
    median = float(res.l2[clean_ok].median())
    assert 0.3 < median < 5.0
    # Clean-misclassified samples are left untouched.
    assert float(res.l2[~clean_ok].abs().sum()) == 0.0


def test_active_set_saves_model_calls(lenet: Target, digits: Digits) -> None:
    x, y = digits
    res = run_attack("deepfool", lenet, x, y, norm="l2", eps=None, params={"steps": 50})
    # Without the active set every sample would cost 50 steps; most are fooled in a few.
    assert res.n_forward < 10 * len(x)
    # Per step: one forward per active sample and 9 candidate-difference gradients.
    assert res.n_backward <= 9 * (res.n_forward - len(x))


def test_one_run_gives_the_robust_accuracy_curve(lenet: Target, digits: Digits) -> None:
    """Robust accuracy at each eps read off the reported norms equals what the model predicts on
    the adversarials kept inside that eps ball (the others replaced by the clean image)."""
    x, y = digits
    res = run_attack("deepfool", lenet, x, y, norm="l2", eps=None)
    clean_ok = lenet.predict_logits(x).argmax(1) == y
    measured = (res.x_adv - x).flatten(1).norm(dim=1)
    for eps in (0.0, 0.5, 1.0, 2.0, 4.0):
        from_norms = clean_ok & ~(res.success & (res.l2 <= eps))
        inside = (measured <= eps)[:, None, None, None]
        predicted = lenet.predict_logits(torch.where(inside, res.x_adv, x)).argmax(1)
        assert torch.equal(from_norms, clean_ok & (predicted == y)), eps


@pytest.mark.parametrize("params,match", [
    ({"candidates": 1}, "candidates must be >= 2"),
    ({"candidates": 11}, "exceeds the target's 10 classes"),
    ({"steps": 0}, "steps must be >= 1"),
    ({"overshoot": -1.0}, "overshoot must be >= 0"),
])
def test_bad_params(params: dict, match: str, lenet: Target, digits: Digits) -> None:
    with pytest.raises(BadInput, match=match):
        run_attack("deepfool", lenet, digits[0][:2], digits[1][:2], norm="l2", eps=None,
                   params=params)


def test_two_class_targets_default_to_two_candidates(digits: Digits) -> None:
    """On a discriminator ([0, d] logits) DeepFool takes the one other class: one gradient per
    step, and every image it fools crosses the decision boundary."""
    target = make_tiny_target("discriminator")
    x = digits[0][:32]
    y = target.predict_logits(x).argmax(1)  # every image starts on its "correct" side
    res = run_attack("deepfool", target, x, y, norm="l2", eps=None)
    assert res.n_backward <= res.n_forward - len(x)  # one candidate difference per step
    flipped = target.predict_logits(res.x_adv).argmax(1) != y
    assert bool(flipped.all()) and bool(res.success.all())


@pytest.mark.parametrize("name,norm,eps", [("deepfool", "l2", 1.0), ("deepfool", "linf", 0.1),
                                           ("fab_t", "linf", 0.1)])
def test_a_minimal_attack_given_eps_counts_only_what_lies_inside_it(
        name: str, norm: str, eps: float, lenet: Target, digits: Digits) -> None:
    """``run_attack(minimal, eps=...)`` returns the unbounded run seen at that budget: a
    perturbation beyond eps is not returned and its sample is not fooled."""
    x, y = digits[0][:60], digits[1][:60]
    params = {"steps": 10} if name == "fab_t" else None
    free = run_attack(name, lenet, x, y, norm=norm, eps=None, params=params)
    bounded = run_attack(name, lenet, x, y, norm=norm, eps=eps, params=params)
    size = (bounded.x_adv - x).flatten(1)
    size = size.norm(dim=1) if norm == "l2" else size.abs().amax(1)
    assert float(size.max()) <= eps * (1 + 1e-5) + 1e-6
    free_size = free.l2 if norm == "l2" else free.linf
    inside = free_size <= eps
    assert 0 < int(inside.sum()) < len(x)  # the budget cuts: some inside, some outside
    assert torch.equal(bounded.success, free.success & inside)
    assert torch.equal(bounded.x_adv[~inside], x[~inside])
    assert torch.equal(bounded.success, lenet.predict_logits(bounded.x_adv).argmax(1) != y)
