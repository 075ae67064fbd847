"""Lipschitz control next to robustness: the margin-gradient norms of trained discriminators."""

from __future__ import annotations

import pytest
import torch

from bench.core.datasets import Dataset, Split
from bench.core.lipschitz import MarginGradient, median_margin_gradient
from generative import GANRecipe, gan_spec, train_gan

CPU = torch.device("cpu")


def _gradient(name: str, seed: int, mnist5k: Dataset) -> MarginGradient:
    """A GAN trained briefly (5 epochs, 1,000 digits); its discriminator's median margin
    gradient on 200 held-out real digits and 200 of its samples."""
    train = mnist5k.split("train")
    gan = train_gan(gan_spec(name), Split(train.x[:1000], train.y[:1000]), seed=seed,
                    device=CPU, recipe=GANRecipe(epochs=5), progress=False)
    x = torch.cat([mnist5k.test.x[:200], gan.sample(200, seed=seed + 50)])
    y = torch.cat([torch.ones(200), torch.zeros(200)]).long()
    return median_margin_gradient(gan.target, x, y)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spectral_norm_flattens_the_discriminator_at_every_seed(seed: int,
                                                                mnist5k: Dataset) -> None:
    """Same data, recipe and seed; SN-DCGAN's layers are 1-Lipschitz (Miyato et al. 2018), so
    its decision margin changes less per unit of input than DCGAN's, in both norms."""
    dc, sn = (_gradient(name, seed, mnist5k) for name in ("dcgan", "sndcgan"))
    assert dc.l1 is not None and dc.l2 is not None and sn.l1 is not None and sn.l2 is not None
    assert 0 < sn.l2 < dc.l2 and 0 < sn.l1 < dc.l1, (seed, dc, sn)
