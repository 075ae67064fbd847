"""DCGAN / SN-DCGAN networks, GAN training and its cache, the discriminator as a target."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from torch import nn
from torch.nn.utils import parametrize

import generative.training as gan_training
from bench.core.checkpoints import CheckpointCache
from bench.core.datasets import Dataset
from bench.core.errors import BadInput, ModelOutputError
from bench.core.target import Target
from generative import (
    GANRecipe,
    Generator,
    build_gan,
    check_generator,
    discriminator_target,
    gan_spec,
    trained_gan,
)

CPU = torch.device("cpu")


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 64, 64)])
@pytest.mark.parametrize("name", ["dcgan", "sndcgan"])
def test_networks_fit_the_image_shape(name: str, shape: tuple[int, int, int]) -> None:
    gan = build_gan(gan_spec(name), shape)
    x = gan.sample(4, seed=0)
    assert x.shape == (4, *shape) and float(x.min()) >= 0 and float(x.max()) <= 1
    logits = gan.target.predict_logits(x)
    assert logits.shape == (4, 2) and bool((logits[:, 0] == 0).all())
    assert gan.target.kind == "discriminator" and gan.target.bounds == (0.0, 1.0)


def test_discriminator_logit_is_class_real() -> None:
    """[0, d] over [0, 1] pixels: D sees (x - 0.5) / 0.5, class 1 (real) wins exactly when d > 0."""
    d = build_gan(gan_spec("dcgan"), (1, 28, 28)).discriminator.eval()
    target = discriminator_target(d, (1, 28, 28))
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    raw = d(x * 2 - 1)
    logits = target.predict_logits(x)
    assert torch.allclose(logits[:, 1], raw, atol=1e-6)
    assert torch.equal(logits.argmax(1), (raw > 0).long())


def test_dcgan_and_sn_dcgan_layers() -> None:
    dc, sn = (build_gan(gan_spec(n), (1, 28, 28)).discriminator for n in ("dcgan", "sndcgan"))
    dc_convs = [m for m in dc.modules() if isinstance(m, nn.Conv2d)]
    sn_convs = [m for m in sn.modules() if isinstance(m, nn.Conv2d)]
    # DCGAN: N(0, 0.02) weights, batch norm except on the first layer, LeakyReLU(0.2)
    assert not any(parametrize.is_parametrized(m) for m in dc_convs)
    for conv in dc_convs[:-1]:
        assert 0.017 < float(conv.weight.detach().std()) < 0.023
    assert isinstance(dc.net[1], nn.LeakyReLU) and dc.net[1].negative_slope == 0.2
    assert any(isinstance(m, nn.BatchNorm2d) for m in dc.modules())
    # SN-DCGAN: spectral norm on every layer, no batch norm; sigma(W) -> 1 by power iteration
    assert all(parametrize.is_parametrized(m, "weight") for m in sn_convs)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in sn.modules())
    sn.train()
    with torch.no_grad():
        for _ in range(30):
            sn(torch.randn(4, 1, 28, 28))
    for conv in sn_convs:
        w = conv.weight
        sigma = torch.linalg.matrix_norm(w.reshape(w.shape[0], -1), ord=2)
        assert float(sigma.detach()) == pytest.approx(1.0, abs=0.05)
    g = build_gan(gan_spec("dcgan"), (1, 28, 28)).generator
    assert isinstance(g.net[-1], nn.Tanh)


@pytest.mark.parametrize("shape,match", [((1, 30, 30), "4..7 times a power of two"),
                                         ((1, 28, 32), "square"),
                                         ((1, 2, 2), "4..7 times")])
def test_unsupported_image_shapes_are_refused(shape: tuple[int, ...], match: str) -> None:
    with pytest.raises(BadInput, match=match):
        build_gan(gan_spec("dcgan"), shape)


def test_discriminator_with_more_than_one_output_is_refused() -> None:
    two = nn.Sequential(nn.Flatten(), nn.Linear(784, 2))
    with pytest.raises(ModelOutputError, match=r"one logit per image.*got shape \(2, 2\).*"
                                               r"real/fake logit only"):
        discriminator_target(two, (1, 28, 28))
    with pytest.raises(BadInput, match="cannot take"):
        discriminator_target(nn.Sequential(nn.Flatten(), nn.Linear(100, 1)), (1, 28, 28))


class Pixels255(nn.Module):
    """A generator whose output is in 0..255 instead of [-1, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.g = Generator((1, 28, 28))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (self.g(z) + 1) * 127.5


def test_generator_must_match_the_discriminator() -> None:
    target = build_gan(gan_spec("dcgan"), (1, 28, 28)).target
    with pytest.raises(BadInput, match=r"makes images of shape \(1, 32, 32\), but discriminator "
                                       r"'dcgan' takes \(1, 28, 28\)"):
        check_generator(Generator((1, 32, 32)), 100, target)
    with pytest.raises(BadInput, match=r"lies in \[.*\], but the discriminator takes images in "
                                       r"\[-1, 1\]; end the generator with a tanh"):
        check_generator(Pixels255(), 100, target)
    with pytest.raises(BadInput, match=r"cannot take \[N, 64\] noise"):
        check_generator(Generator((1, 28, 28), z_dim=100), 64, target)
    check_generator(Generator((1, 28, 28)), 100, target)  # a matching pair passes


@pytest.mark.parametrize("recipe", [dict(epochs=0), dict(batch_size=1), dict(real_label=0.4),
                                    dict(loss="hinge"), dict(optimizer="sgd"),
                                    dict(loss="wgan", clip=0.0), dict(loss="wgan_gp", holdout=0)])
def test_bad_recipes_are_refused(recipe: dict[str, Any]) -> None:
    with pytest.raises(BadInput):
        GANRecipe(**recipe)


def test_trained_gan_is_cached_with_card_and_sample_grid(
        mnist5k: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = GANRecipe(epochs=1)
    cache = CheckpointCache(tmp_path)
    gan = trained_gan("sndcgan", mnist5k, seed=0, device=CPU, cache=cache, progress=False,
                      recipe=recipe)
    (entry,) = (tmp_path / "gans").iterdir()
    card = json.loads((entry / "card.json").read_text())
    assert card["config"]["recipe"]["epochs"] == 1 and card["config"]["gan"] == "sndcgan"
    assert len(card["history"]) == 1 and set(card["history"][0]) >= {"loss_d", "loss_g"}
    assert 0 <= card["metrics"]["d_acc"] <= 1
    grid = Image.open(entry / "samples.png")
    assert grid.size == (8 * 28 + 9 * 2,) * 2  # 8x8 samples, 2-pixel padding

    def no_training(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the second call must load the cached GAN")

    monkeypatch.setattr(gan_training, "train_gan", no_training)
    again = trained_gan("sndcgan", mnist5k, seed=0, device=CPU, cache=cache, progress=False,
                        recipe=recipe)
    assert torch.equal(again.sample(8, seed=1), gan.sample(8, seed=1))
    x = gan.sample(8, seed=2)
    assert torch.equal(again.target.predict_logits(x), gan.target.predict_logits(x))


def test_dcgan_yields_recognisable_digits(trained_dcgan: Any, lenet: Target) -> None:
    """LeNet (98% on real test digits) reads the default DCGAN's samples as confident digits
    of nearly every class; an untrained generator's samples it does not."""

    def read(x: torch.Tensor) -> tuple[float, torch.Tensor]:
        p = lenet.predict_logits(x).softmax(1)
        return float(p.max(1).values.mean()), torch.bincount(p.argmax(1), minlength=10)

    confidence, counts = read(trained_dcgan.sample(1000, seed=123))
    untrained, _ = read(build_gan(gan_spec("dcgan"), (1, 28, 28)).sample(1000, seed=123))
    assert confidence >= 0.75 and confidence > untrained + 0.15, (confidence, untrained)
    assert int((counts >= 20).sum()) >= 8, counts.tolist()  # no mode collapse


def test_trained_discriminator_separates_real_from_fake(trained_dcgan: Any,
                                                        mnist5k: Dataset) -> None:
    """In eval mode (recalibrated batch norm), D tells held-out real digits from fresh samples."""
    from generative.training import discriminator_accuracy

    acc = discriminator_accuracy(trained_dcgan, mnist5k.test.x[:500], seed=99)
    assert acc["d_acc_real"] >= 0.7 and acc["d_acc_fake"] >= 0.7, acc
    assert not trained_dcgan.discriminator.training and not trained_dcgan.generator.training


@pytest.mark.parametrize("name", ["dcgan", "sndcgan"])
def test_gan_trains_on_32x32_colour_images(name: str) -> None:
    from bench.core.datasets import Split, load_dataset
    from generative import train_gan

    data = load_dataset("mnist5k-rgb32").split("train")
    gan = train_gan(gan_spec(name), Split(data.x[:256], data.y[:256]), seed=0, device=CPU,
                    recipe=GANRecipe(epochs=2), progress=False)
    assert gan.image_shape == (3, 32, 32) and len(gan.card["history"]) == 2
    assert all(v == v for h in gan.card["history"] for v in h.values())  # no NaN
    x = gan.sample(6, seed=0)
    assert x.shape == (6, 3, 32, 32)
    assert gan.target.predict_logits(x).shape == (6, 2)


@pytest.mark.parametrize("name", ["dcgan", "wgan_gp"])
def test_the_committed_gan_checkpoints_match_the_current_recipe(name: str, mnist5k: Dataset
                                                                ) -> None:
    """The test checkpoints stand for what ``trained_gan`` trains now: their key hashes the
    recipe, data and code version, and the weights are the card's."""
    from bench.core.checkpoints import config_hash, file_sha256
    from generative.training import gan_config
    from tests.conftest import TEST_CHECKPOINTS

    key = config_hash(gan_config(name, mnist5k, seed=0))
    entry = TEST_CHECKPOINTS / "gans" / key
    assert (entry / "card.json").is_file(), (
        f"{name}'s test checkpoint is not keyed by the current recipe ({key}): retrain it "
        f"(generative.trained_gan({name!r}, load_dataset('mnist5k'), seed=0, "
        f"cache=CheckpointCache(DIR), ...)) and put DIR/gans/{key}/ in its place")
    card = json.loads((entry / "card.json").read_text())
    assert card["config"] == json.loads(json.dumps(gan_config(name, mnist5k, seed=0)))
    assert file_sha256(entry / "model.safetensors") == card["weights_sha256"]
