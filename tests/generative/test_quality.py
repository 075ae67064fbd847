"""Sample quality with LeNet features through torchmetrics (generative.quality)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import scipy.linalg
import torch

from bench.core.datasets import Dataset
from bench.core.target import Target
from generative import build_gan, gan_spec
from generative.quality import ClassifierFeatures, sample_quality


def _reference_fid(a: torch.Tensor, b: torch.Tensor) -> float:
    """Heusel et al.'s Fréchet distance with scipy's matrix square root (their own code's)."""
    x, y = a.double().numpy(), b.double().numpy()
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * root))


def test_features_are_lenets_penultimate_layer(lenet: Target, mnist5k: Dataset) -> None:
    x = mnist5k.test.x[:8]
    features = ClassifierFeatures(lenet)(x)
    assert features.shape == (8, 256) and ClassifierFeatures(lenet).num_features == 256
    last = lenet.model.classifier[-1]
    torch.testing.assert_close(lenet.predict_logits(x),
                               features @ last.weight.detach().T + last.bias.detach())
    as_bytes = ClassifierFeatures(lenet, logits=True)((x * 255).round().byte())
    torch.testing.assert_close(as_bytes, lenet.predict_logits((x * 255).round() / 255))


def test_fid_matches_a_reference_computation(lenet: Target, mnist5k: Dataset) -> None:
    x = mnist5k.test.x
    real, other = x[0::2], x[1::2]
    features = ClassifierFeatures(lenet)
    quality = sample_quality(real, other, lenet, seed=0)
    assert quality["fid"] == pytest.approx(_reference_fid(features(real), features(other)),
                                           rel=1e-3)


def test_fid_ranks_real_then_trained_then_untrained(lenet: Target, mnist5k: Dataset,
                                                    trained_dcgan: Any) -> None:
    """Two halves of the real test digits are near 0 apart; the trained DCGAN's samples are
    far nearer the real digits than an untrained generator's."""
    x = mnist5k.test.x
    real_real = sample_quality(x[0::2], x[1::2], lenet, seed=0)
    trained = sample_quality(x, trained_dcgan.sample(len(x), seed=8), lenet, seed=0)
    untrained = sample_quality(x, build_gan(gan_spec("dcgan"), (1, 28, 28)).sample(len(x), 8),
                               lenet, seed=0)
    assert real_real["fid"] < 0.2 * trained["fid"], (real_real, trained)
    assert untrained["fid"] > 4 * trained["fid"], (trained, untrained)
    # the Inception-style score: near the 10 classes for real digits, fewer for samples
    assert real_real["inception_score"] > 8 > trained["inception_score"]
    assert trained["inception_score"] > untrained["inception_score"]


def test_the_dcgan_card_records_its_sample_quality(trained_dcgan: Any) -> None:
    quality = trained_dcgan.card["quality"]
    assert quality["features"] == "lenet" and quality["n_real"] == quality["n_fake"] == 1000
    assert np.isfinite(quality["fid"]) and quality["fid"] > 0


def test_too_few_images_are_refused(lenet: Target) -> None:
    from bench.core.errors import BadInput

    with pytest.raises(BadInput, match="at least 2 real and 2 generated"):
        sample_quality(torch.rand(1, 1, 28, 28), torch.rand(5, 1, 28, 28), lenet, seed=0)
