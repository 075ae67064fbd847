"""advbench defenses: adversarial training (PGD-AT, FGSM-RS), the HGD denoiser, Rob-GAN, the input
transformations (bit depth, JPEG, random resize-and-pad), randomized smoothing and certified
training (IBP, CROWN-IBP), each registered
by name in :data:`DEFENSES` (the contract is :mod:`defenses.base`)."""

from defenses import advtrain, certified, denoiser, preprocessing, robgan, smoothing
from defenses.base import DEFENSES, DefenseSpec, fitted_defense, register_defense

__all__ = ["DEFENSES", "DefenseSpec", "advtrain", "certified", "denoiser", "fitted_defense", "preprocessing",
           "register_defense", "robgan", "smoothing"]
