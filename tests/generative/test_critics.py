"""Wasserstein critics (WGAN, WGAN-GP): their training, their calibrated real/fake threshold and
the critic as an attack target."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from bench.core.checkpoints import CheckpointCache
from bench.core.datasets import Dataset
from bench.core.errors import BadInput, ModelOutputError
from bench.core.usermodels import Shifted, calibrate_threshold
from defenses import DEFENSES
from defenses.robgan import RobGANParams
from generative import GAN, build_gan, discriminator_target, gan_spec, trained_gan
from generative.training import discriminator_accuracy, interpolate_gradient_norms

CPU = torch.device("cpu")
CRITICS = ["wgan", "wgan_gp"]


def short_recipe(name: str, epochs: int) -> Any:
    """The critic's own recipe (optimiser, n_critic, clip or penalty), fewer epochs."""
    return dataclasses.replace(gan_spec(name).recipe, epochs=epochs)


@pytest.fixture(params=CRITICS)
def critic(request: pytest.FixtureRequest) -> GAN:
    """WGAN trained briefly (4 epochs), WGAN-GP by its full recipe; both on the training digits
    but the last 500, held out for the threshold."""
    gan: GAN = request.getfixturevalue("short_critic")("wgan") if request.param == "wgan" \
        else request.getfixturevalue("trained_wgan_gp")
    return gan


def test_critics_are_the_dcgan_discriminator_without_a_sigmoid() -> None:
    wgan, gp = (build_gan(gan_spec(n), (1, 28, 28)).discriminator for n in CRITICS)
    assert any(isinstance(m, nn.BatchNorm2d) for m in wgan.modules())  # as Arjovsky et al.
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.Sigmoid)) for m in gp.modules())
    assert not any(isinstance(m, nn.Sigmoid) for m in wgan.modules())
    r = gan_spec("wgan").recipe
    assert (r.loss, r.optimizer, r.d_steps, r.clip) == ("wgan", "rmsprop", 5, 0.01)
    r = gan_spec("wgan_gp").recipe
    assert (r.loss, r.optimizer, r.lr, r.beta1, r.beta2, r.gp_weight, r.d_steps) == (
        "wgan_gp", "adam", 1e-4, 0.0, 0.9, 10.0, 5)


def test_wgan_keeps_every_critic_weight_within_the_clip(critic: GAN) -> None:
    if critic.recipe.loss != "wgan":
        pytest.skip("weight clipping is WGAN's")
    clip = critic.recipe.clip
    params = torch.cat([p.detach().flatten() for p in critic.discriminator.parameters()])
    assert float(params.abs().max()) <= clip + 1e-9
    assert float((params.abs() >= clip - 1e-9).float().mean()) > 0.05  # the clip is active


def test_wgan_gp_gradient_norm_on_interpolates_is_near_one(critic: GAN,
                                                           mnist5k: Dataset) -> None:
    """Gulrajani et al.'s penalty holds the critic's gradient norm near 1 between the real and
    generated distributions; WGAN's clipped critic is far flatter."""
    real = mnist5k.test.x[:500]
    fake = critic.sample(500, seed=21)
    norms = interpolate_gradient_norms(critic.discriminator.eval(), real, fake,
                                       torch.Generator().manual_seed(0)).detach()
    median = float(norms.median())
    if critic.recipe.loss == "wgan_gp":
        assert 0.5 <= median <= 1.5, median
    else:
        assert median < 0.5, median


def test_critics_separate_held_out_real_from_fake_at_the_calibrated_threshold(
        critic: GAN, mnist5k: Dataset) -> None:
    acc = discriminator_accuracy(critic, mnist5k.test.x[:500], seed=99)
    assert acc["d_acc"] >= 0.7, acc
    assert critic.threshold is not None and critic.card["critic_threshold"] == critic.threshold


def test_critic_target_is_the_raw_score_minus_its_threshold(critic: GAN,
                                                            mnist5k: Dataset) -> None:
    x = torch.cat([mnist5k.test.x[:6], critic.sample(6, seed=3)])
    t = critic.threshold
    assert t is not None
    with torch.no_grad():
        raw = critic.discriminator.eval()((x - 0.5) / 0.5)
    logits = critic.target.predict_logits(x)
    assert torch.equal(logits[:, 0], torch.zeros(12))
    torch.testing.assert_close(logits[:, 1], raw - t)
    assert critic.target.card["critic_threshold"] == t and critic.target.kind == "discriminator"


def test_the_threshold_maximises_balanced_accuracy_on_the_held_out_digits(
        critic: GAN, mnist5k: Dataset) -> None:
    """Recomputed by brute force over every cut between the held-out scores."""
    from generative.discriminator import calibration_noise_seed

    held_out = mnist5k.split("train").x[-critic.recipe.holdout:]
    fake = critic.sample(500, calibration_noise_seed(0))
    raw = critic.raw_target
    real_s, fake_s = (raw.predict_logits(v)[:, 1] for v in (held_out, fake))
    balanced = lambda t: float(((real_s > t).float().mean()  # noqa: E731
                                + (fake_s <= t).float().mean()) / 2)
    best = max(balanced(float(c)) for c in torch.cat([real_s, fake_s]))
    assert balanced(critic.threshold) == pytest.approx(best)


def test_a_trained_critic_is_cached_with_its_threshold_and_sample_quality(
        mnist5k: Dataset, tmp_path: Path) -> None:
    cache = CheckpointCache(tmp_path)
    recipe = short_recipe("wgan_gp", epochs=1)
    gan = trained_gan("wgan_gp", mnist5k, seed=0, device=CPU, cache=cache, progress=False,
                      recipe=recipe)
    (entry,) = (tmp_path / "gans").iterdir()
    card = json.loads((entry / "card.json").read_text())
    assert card["critic_threshold"] == gan.threshold
    assert card["quality"]["features"] == "lenet" and card["quality"]["fid"] > 0
    again = trained_gan("wgan_gp", mnist5k, seed=0, device=CPU, cache=cache, progress=False,
                        recipe=recipe)
    x = gan.sample(8, seed=4)
    assert torch.equal(again.target.predict_logits(x), gan.target.predict_logits(x))


def test_a_constant_critic_cannot_be_calibrated() -> None:
    with pytest.raises(BadInput, match=r"no threshold tells real from fake better than chance "
                                       r"\(all scores equal 3"):
        calibrate_threshold(torch.full((50,), 3.0), torch.full((40,), 3.0))
    with pytest.raises(BadInput, match="ranks fakes at least as high as reals"):
        calibrate_threshold(torch.zeros(10), torch.ones(10))
    with pytest.raises(BadInput, match="not finite"):
        calibrate_threshold(torch.tensor([1.0, float("nan")]), torch.zeros(3))


class _ConstantCritic(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, 0] * 0.0 + 1.5


def test_calibration_refuses_a_critic_that_separates_nothing(mnist5k: Dataset) -> None:
    """A critic stuck at a constant score fails at calibration, clearly."""
    from generative.training import critic_threshold

    gan = build_gan(gan_spec("wgan_gp"), (1, 28, 28))
    flat = GAN(gan.spec, gan.recipe, gan.generator, _ConstantCritic(), gan.image_shape)  # type: ignore[arg-type]
    with pytest.raises(BadInput, match=r"cannot calibrate a critic's real/fake threshold.*"
                                       r"all scores equal 1.5"):
        critic_threshold(flat, mnist5k.test.x[:100], seed=0)


def test_a_critic_with_more_than_one_output_is_refused() -> None:
    two = Shifted(nn.Sequential(nn.Flatten(), nn.Linear(784, 2)), 0.5)
    with pytest.raises(ModelOutputError, match=r"one logit per image.*real/fake logit only"):
        discriminator_target(two, (1, 28, 28))


def test_robgan_refuses_a_critic(critic: GAN) -> None:
    defense = DEFENSES.get("robgan")
    with pytest.raises(BadInput, match=r"Wasserstein critic .*use it with dcgan, sndcgan"):
        defense.check(critic.target, RobGANParams())
