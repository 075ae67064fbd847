"""GAN models and discriminators as attack targets (DCGAN, SN-DCGAN).

- :mod:`generative.models`: the networks, registered in the zoo (``dcgan``, ``sndcgan``);
- :mod:`generative.training`: GAN training and its checkpoint cache (``trained_gan``);
- :mod:`generative.discriminator`: the discriminator as a Target (one logit ``d`` exposed as
  ``[0, d]``, class 1 = real, the GAN's [-1, 1] mapping inside) and its evaluation data.
"""

from generative.discriminator import DIRECTIONS, check_generator, discriminator_target
from generative.models import Discriminator, GANRecipe, GANSpec, Generator, gan_spec, gans
from generative.training import GAN, build_gan, train_gan, trained_gan

__all__ = ["DIRECTIONS", "GAN", "Discriminator", "GANRecipe", "GANSpec", "Generator", "gan_spec", "gans",
           "build_gan", "check_generator", "discriminator_target", "train_gan", "trained_gan"]
