"""``randomized_smoothing`` (Cohen, Rosenfeld & Kolter, ICML 2019): the base network fine-tuned
on inputs with Gaussian noise of std ``sigma`` (the paper's training), evaluated as the smoothed
classifier (:class:`bench.core.smoothing.SmoothedTarget`): a Monte-Carlo vote with abstention,
and a certified L2 radius per sample (CERTIFY) beside the attacked number."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from bench.core.datasets import Split
from bench.core.errors import BadInput
from bench.core.smoothing import SmoothedTarget
from bench.core.target import Target
from bench.core.training import fit
from bench.core.zoo import TrainRecipe
from defenses.base import register_defense, require_classifier


@dataclass(frozen=True)
class SmoothingParams:
    """``sigma``: the noise's std in pixel units (Cohen et al.: 0.12–1.0 on [0, 1] images).
    Training (the base network fine-tuned on noisy inputs): ``epochs``, ``batch_size``, ``lr``.
    Evaluation (the paper's CERTIFY and PREDICT; not part of the fitted weights): ``n0`` draws
    pick the top class, ``n`` draws bound its probability at confidence ``1 − alpha``,
    ``n_predict`` draws decide a prediction or an abstention."""

    sigma: float = 0.25
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    n0: int = 100
    n: int = 10_000
    alpha: float = 0.001
    n_predict: int = 100

    def __post_init__(self) -> None:
        if not self.sigma > 0:
            raise BadInput(f"sigma must be > 0, got {self.sigma}")
        for name in ("epochs", "batch_size", "n0", "n", "n_predict"):
            if getattr(self, name) < 1:
                raise BadInput(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.alpha < 0.5:
            raise BadInput(f"alpha must lie in (0, 0.5), got {self.alpha}")

    def recipe(self) -> TrainRecipe:
        return TrainRecipe(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                           schedule="cosine")


def build_smoothed(base: Target, params: SmoothingParams) -> SmoothedTarget:
    """The smoothed classifier of a copy of ``base`` (to hold the fine-tuned weights)."""
    return SmoothedTarget(copy.deepcopy(base), sigma=params.sigma, n0=params.n0, n=params.n,
                          alpha=params.alpha, n_predict=params.n_predict)


def _check(base: Target, params: SmoothingParams) -> None:
    require_classifier(base, "randomized smoothing")


@register_defense("randomized_smoothing", params=SmoothingParams, build=build_smoothed,
                  check=_check, evaluation_params=("n0", "n", "alpha", "n_predict"))
def randomized_smoothing(base: Target, train: Split, params: SmoothingParams,
                         generator: torch.Generator, *, progress: bool = True) -> Target:
    """Randomized smoothing (Cohen et al., ICML 2019): certified L2 radius per sample."""
    smoothed = build_smoothed(base, params)
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    noise = torch.Generator(device=smoothed.device).manual_seed(seed)
    # one noise draw per forward: the cross-entropy of the smoothed target is that of the base
    # network on a noisy copy of each training image (Gaussian data augmentation)
    with smoothed.drawing_from(noise), smoothed.sampling(1):
        history = fit(smoothed, train, params.recipe(), seed=seed, device=smoothed.device,
                      progress=progress, desc=f"smoothing sigma={params.sigma:g}")
    smoothed.card = {"history": history}
    return smoothed
