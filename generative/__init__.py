"""GAN models and discriminators as attack targets (DCGAN, SN-DCGAN).

The discriminator-as-target contract lives in :class:`bench.target.Target` (``kind =
"discriminator"``: one logit ``d`` exposed as ``[0, d]``, with the GAN's ``[-1, 1]`` mapping as
mean = std = 0.5); the GAN architectures and their training are added here.
"""
