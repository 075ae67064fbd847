"""GAN models, discriminators and Wasserstein critics as attack targets (DCGAN, SN-DCGAN, WGAN,
WGAN-GP).

- :mod:`generative.models`: the networks and recipes, registered in the zoo (``dcgan``,
  ``sndcgan``, ``wgan``, ``wgan_gp``);
- :mod:`generative.training`: GAN training (BCE and Wasserstein losses), a critic's threshold
  calibration and the checkpoint cache (``trained_gan``);
- :mod:`generative.discriminator`: the discriminator as a Target (one logit ``d`` exposed as
  ``[0, d]``, a critic's score ``s`` as ``[0, s − t]``, class 1 = real, the GAN's [-1, 1]
  mapping inside) and its evaluation data;
- :mod:`generative.quality`: FID and Inception-style score with a zoo classifier's features.
"""

from generative.discriminator import DIRECTIONS, check_generator, discriminator_target
from generative.models import Discriminator, GANRecipe, GANSpec, Generator, gan_spec, gans
from generative.quality import sample_quality
from generative.training import GAN, build_gan, train_gan, trained_gan

__all__ = ["DIRECTIONS", "GAN", "Discriminator", "GANRecipe", "GANSpec", "Generator", "gan_spec", "gans",
           "build_gan", "check_generator", "discriminator_target", "sample_quality", "train_gan",
           "trained_gan"]
