"""advbench defenses: adversarial training (PGD-AT, FGSM-RS), the HGD denoiser and Rob-GAN, each
registered by name in :data:`DEFENSES` (the contract is :mod:`defenses.base`)."""

from defenses import advtrain, denoiser, robgan
from defenses.base import DEFENSES, DefenseSpec, fitted_defense, register_defense

__all__ = ["DEFENSES", "DefenseSpec", "advtrain", "denoiser", "fitted_defense", "register_defense",
           "robgan"]
