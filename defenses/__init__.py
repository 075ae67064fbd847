"""advbench defenses: adversarial training (PGD-AT, FGSM-RS), the HGD denoiser, Rob-GAN, the input
transformations (bit depth, JPEG, random resize-and-pad) and randomized smoothing, each registered
by name in :data:`DEFENSES` (the contract is :mod:`defenses.base`)."""

from defenses import advtrain, denoiser, preprocessing, robgan, smoothing
from defenses.base import DEFENSES, DefenseSpec, fitted_defense, register_defense

__all__ = ["DEFENSES", "DefenseSpec", "advtrain", "denoiser", "fitted_defense", "preprocessing",
           "register_defense", "robgan", "smoothing"]
