"""Which samples a cell evaluates: a fixed, seed-independent subset of a split for a
classifier; for a GAN discriminator, real images in one direction and its generator's samples in
the other (and what an attack that fits on training data sees for it)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.core.datasets import Dataset, Split
from bench.core.errors import BadInput
from bench.core.usermodels import UserGAN
from generative.discriminator import (
    FAKE,
    REAL,
    eval_noise_seed,
    fit_noise_seed,
)
from generative.training import GAN

EVAL_SUBSET_SEED = 0
"""Seeds the one permutation every sweep's evaluated subset is taken from (never the cell's
seed: every seed, attack and defense sees the same samples)."""


@dataclass
class EvalData:
    """The evaluated samples: ``idx`` are their indices in the split."""

    x: torch.Tensor
    y: torch.Tensor
    idx: torch.Tensor


def evaluated_split(dataset: Dataset, split: str, n_eval: int) -> Split:
    """``dataset``'s ``split``; :class:`BadInput` if it has fewer than ``n_eval`` samples."""
    part = dataset.split(split)
    if n_eval > len(part):
        raise BadInput(
            f"n_eval = {n_eval} exceeds the {len(part)} samples of {dataset.name!r}'s {split} "
            f"split; use n_eval <= {len(part)}"
        )
    return part


def eval_subset(dataset: Dataset, split: str, n_eval: int, device: torch.device) -> EvalData:
    """A fixed, seed-independent random subset of the split (sorted by index)."""
    part = evaluated_split(dataset, split, n_eval)
    perm = torch.randperm(len(part), generator=torch.Generator().manual_seed(EVAL_SUBSET_SEED))
    idx = perm[:n_eval].sort().values
    return EvalData(part.x[idx].to(device), part.y[idx].to(device), idx)


def discriminator_data(gan: GAN | UserGAN, dataset: Dataset, split: str, n_eval: int, seed: int,
                       direction: str, device: torch.device) -> EvalData:
    """A discriminator's evaluated samples in one direction: ``real->fake`` takes the split's
    fixed subset of real images (label 1, as :func:`eval_subset`), ``fake->real`` ``n_eval``
    samples of the GAN's generator (label 0) from noise seeded by the sweep's ``seed``."""
    if direction == "real->fake":
        real = eval_subset(dataset, split, n_eval, device)
        return EvalData(real.x, torch.full_like(real.y, REAL), real.idx)
    x = gan.sample(n_eval, eval_noise_seed(seed), device)
    return EvalData(x, torch.full((n_eval,), FAKE, dtype=torch.long, device=device),
                    torch.arange(n_eval))


def discriminator_fit_data(gan: GAN | UserGAN, train: Split, seed: int, direction: str,
                           device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """What an attack that fits on training data (UAP) sees for a discriminator: the real train
    images (``real->fake``) or as many fresh generator samples (``fake->real``)."""
    n = len(train)
    if direction == "real->fake":
        return train.x.to(device), torch.full((n,), REAL, dtype=torch.long, device=device)
    return (gan.sample(n, fit_noise_seed(seed), device),
            torch.full((n,), FAKE, dtype=torch.long, device=device))
