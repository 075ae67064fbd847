"""Randomized smoothing (Cohen, Rosenfeld & Kolter, "Certified Adversarial Robustness via
Randomized Smoothing", ICML 2019): the smoothed classifier ``g(x) = argmax_c P(f(x + δ) = c)``,
``δ ~ N(0, σ² I)``, its Monte-Carlo prediction with abstention (the paper's PREDICT) and its
certificate (CERTIFY): ``g`` is constant within L2 radius ``σ Φ⁻¹(p_A)`` of ``x``, with ``p_A``
the one-sided Clopper–Pearson lower confidence bound of the top class's probability.

As a :class:`Target`, the smoothed classifier's logits are ``log E_δ softmax(f(x + δ))`` over
``noise_draws`` draws: the soft classifier SmoothAdv attacks (Salman et al., NeurIPS 2019), so
PGD with the cross-entropy loss on this target with ``noise_draws = m`` is SmoothAdv-PGD.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.core.target import Certificate, Target


def _stats() -> Any:
    """scipy.stats, imported on first use (it takes most of a second to import)."""
    from scipy import stats

    return stats


class SmoothedTarget(Target):
    """``base``'s model smoothed with Gaussian noise of std ``sigma`` (in pixel units).

    ``n0`` draws select the top class, ``n`` estimate its probability, ``alpha`` is the
    certificate's failure probability (CERTIFY); ``n_predict`` draws and the same ``alpha``
    decide a prediction or an abstention (PREDICT). Inputs are not clipped after the noise
    (as in the paper)."""

    def __init__(self, base: Target, *, sigma: float, n0: int = 100, n: int = 10_000,
                 alpha: float = 0.001, n_predict: int = 100) -> None:
        super().__init__(base.model, **base.pixel_space(),
                         name=f"{base.name}+smoothed{sigma:g}", randomised=True,
                         preprocess=base.preprocess)
        self.sigma, self.n0, self.n, self.alpha, self.n_predict = sigma, n0, n, alpha, n_predict
        self.noise_draws = 1
        self.to(base.device)

    @contextlib.contextmanager
    def sampling(self, noise_draws: int) -> Iterator[SmoothedTarget]:
        """Inside the block, each forward averages ``noise_draws`` noise draws."""
        previous, self.noise_draws = self.noise_draws, noise_draws
        try:
            yield self
        finally:
            self.noise_draws = previous

    def base_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The base classifier's logits at ``x`` (no noise)."""
        return super().forward(x)

    def _noise(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        draws = self.draws(like.device)
        return self.sigma * torch.randn(shape, generator=draws, device=like.device,
                                        dtype=like.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.noise_draws
        noisy = x.unsqueeze(0) + self._noise((m, *x.shape), x)
        probs = F.softmax(self.base_logits(noisy.flatten(0, 1)).float(), dim=1)
        return probs.view(m, x.shape[0], -1).mean(0).clamp_min(1e-12).log()

    @torch.no_grad()
    def vote_counts(self, x: torch.Tensor, draws: int, batch_size: int = 1024) -> torch.Tensor:
        """``[N, C]``: how often the base classifier picks each class over ``draws`` noisy
        copies of each input, ``batch_size`` copies per forward."""
        counts = torch.zeros(x.shape[0], self.num_classes, dtype=torch.long, device=x.device)
        per_image = max(1, min(draws, batch_size))
        images = max(1, batch_size // per_image)
        with self.evaluating():
            for start in range(0, x.shape[0], images):
                chunk = x[start:start + images]
                left = draws
                while left > 0:
                    k = min(per_image, left)
                    noisy = chunk.unsqueeze(0) + self._noise((k, *chunk.shape), chunk)
                    pred = self.base_logits(noisy.flatten(0, 1)).argmax(1).view(k, -1)
                    counts[start:start + chunk.shape[0]] += F.one_hot(
                        pred, self.num_classes).sum(0)
                    left -= k
        return counts

    @torch.no_grad()
    def decide(self, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """PREDICT: the top class of ``n_predict`` draws, or −1 (abstain) when a two-sided
        binomial test cannot tell it from the runner-up at level ``alpha``."""
        counts = self.vote_counts(x, self.n_predict, batch_size)
        top2 = counts.topk(2, dim=1)
        n_a, n_b = top2.values[:, 0].cpu().numpy(), top2.values[:, 1].cpu().numpy()
        p_value = torch.as_tensor(_stats().binom.cdf(n_b, n_a + n_b, 0.5) * 2).clamp(max=1.0)
        pred = top2.indices[:, 0].clone()
        pred[(p_value > self.alpha).to(pred.device)] = -1
        return pred

    @property
    def decide_passes(self) -> int:
        """PREDICT's ``n_predict`` noisy copies per input."""
        return self.n_predict

    @torch.no_grad()
    def certify(self, x: torch.Tensor, batch_size: int = 1024) -> Certificate:
        """CERTIFY: the top class of ``n0`` draws, and the radius ``σ Φ⁻¹(p_A)`` from the
        lower confidence bound ``p_A`` of its probability over ``n`` fresh draws; −1 and radius
        0 where ``p_A`` ≤ 1/2 (abstain)."""
        guess = self.vote_counts(x, self.n0, batch_size).argmax(1)
        counts = self.vote_counts(x, self.n, batch_size)
        n_a = counts.gather(1, guess[:, None])[:, 0].cpu().numpy()
        p_lower = torch.as_tensor(lower_confidence_bound(n_a, self.n, self.alpha))
        radius = (self.sigma * torch.as_tensor(_stats().norm.ppf(p_lower.numpy()))).float()
        certified = (p_lower > 0.5).to(x.device)
        pred = torch.where(certified, guess, torch.full_like(guess, -1))
        radius = torch.where(certified, radius.to(x.device), torch.zeros_like(radius,
                                                                               device=x.device))
        return Certificate(pred, radius, self.n0 + self.n)

    def max_radius(self) -> float:
        """The largest radius ``n`` draws can certify: ``σ Φ⁻¹(alpha^(1/n))`` (every draw on
        the top class)."""
        return float(self.sigma * _stats().norm.ppf(self.alpha ** (1 / self.n)))


def lower_confidence_bound(successes: np.ndarray, trials: int, alpha: float) -> np.ndarray:
    """The one-sided (1 − alpha) Clopper–Pearson lower bound of a binomial proportion (0 for
    no successes): ``Beta(alpha; k, n − k + 1)``."""
    k = np.asarray(successes, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        bound = _stats().beta.ppf(alpha, k, trials - k + 1)
    return np.where(k > 0, bound, 0.0)
