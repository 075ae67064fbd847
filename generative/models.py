"""DCGAN, SN-DCGAN and Wasserstein-critic networks, sized for the data set's images (28×28×1,
32×32×3, ...).

- DCGAN: Radford, Metz, Chintala, "Unsupervised Representation Learning with Deep Convolutional
  Generative Adversarial Networks", ICLR 2016. Generator: a 1×1 → k×k transposed convolution of
  the noise, then stride-2 transposed convolutions halving the channels, batch norm and ReLU,
  and a tanh output in [-1, 1]. Discriminator: stride-2 convolutions with LeakyReLU(0.2) and
  batch norm (none on the first layer), and a final k×k convolution to one logit. Weights are
  drawn from N(0, 0.02) (batch-norm scales from N(1, 0.02)).
- SN-DCGAN: Miyato, Kataoka, Koyama, Yoshida, "Spectral Normalization for Generative
  Adversarial Networks", ICLR 2018: the same discriminator with spectral normalisation on every
  layer and no batch norm (as in the paper), which makes it 1-Lipschitz layer by layer.
- WGAN: Arjovsky, Chintala, Bottou, "Wasserstein GAN", ICML 2017: the DCGAN discriminator as a
  critic (an unbounded score, no sigmoid), trained with RMSProp, 5 critic steps per generator
  step and its weights clipped to [-0.01, 0.01] after each step (the learning rate: see
  :data:`WGAN_RECIPE`).
- WGAN-GP: Gulrajani, Ahmed, Arjovsky, Dumoulin, Courville, "Improved Training of Wasserstein
  GANs", NeurIPS 2017: the critic without batch norm (the penalty is per sample), trained with
  Adam (lr 1e-4, betas (0, 0.9)), 5 critic steps per generator step and the gradient penalty
  λ·(‖∇D(x̂)‖₂ − 1)² on random interpolates x̂ of real and fake images (λ = 10).

Both networks work in the GAN's [-1, 1] image space; the discriminator Target maps advbench's
[0, 1] pixel space onto it (mean = std = 0.5).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from bench.core.errors import BadInput
from bench.core.zoo import names_of, register_model, zoo_entry


def layout(input_shape: Sequence[int]) -> tuple[int, int]:
    """``(k, n_up)``: a square side ``H = k · 2**n_up`` with the start width ``k`` in 4..7."""
    if len(input_shape) != 3 or input_shape[1] != input_shape[2]:
        raise BadInput(f"a DCGAN needs square [C, H, H] images, got {tuple(input_shape)}")
    side = int(input_shape[1])
    n_up = 0
    while side % 2 == 0 and side // 2 >= 4:
        side //= 2
        n_up += 1
    if not (4 <= side <= 7 and n_up >= 1):
        raise BadInput(
            f"a DCGAN needs images whose side is 4..7 times a power of two (28, 32, 64, ...), "
            f"got {input_shape[1]}x{input_shape[2]}")
    return side, n_up


def init_dcgan(module: nn.Module) -> None:
    """Radford et al.'s initialisation: conv weights ~ N(0, 0.02), BN scales ~ N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class Generator(nn.Module):
    """DCGAN generator: noise ``[N, z_dim]`` → images ``[N, C, H, H]`` in [-1, 1] (tanh)."""

    def __init__(self, image_shape: Sequence[int], z_dim: int = 100, width: int = 64) -> None:
        super().__init__()
        start, n_up = layout(image_shape)
        self.z_dim = z_dim
        self.image_shape = tuple(int(s) for s in image_shape)
        channels = width * 2 ** (n_up - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(z_dim, channels, start, 1, 0, bias=False),
            nn.BatchNorm2d(channels), nn.ReLU(True),
        ]
        for _ in range(n_up - 1):
            layers += [nn.ConvTranspose2d(channels, channels // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(channels // 2), nn.ReLU(True)]
            channels //= 2
        layers += [nn.ConvTranspose2d(channels, self.image_shape[0], 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        init_dcgan(self)

    def forward(self, z):  # type: ignore[no-untyped-def]
        return self.net(z.reshape(z.shape[0], self.z_dim, 1, 1))


class Discriminator(nn.Module):
    """DCGAN discriminator: images in [-1, 1] → one logit (or critic score) per image (``[N]``),
    real = high.

    ``spectral``: spectral normalisation on every layer (SN-DCGAN); ``batch_norm``: batch norm
    after every hidden convolution but the first (default: only without spectral norm).
    """

    def __init__(self, image_shape: Sequence[int], width: int = 64, spectral: bool = False,
                 batch_norm: bool | None = None) -> None:
        super().__init__()
        start, n_up = layout(image_shape)
        self.spectral = spectral
        self.batch_norm = (not spectral) if batch_norm is None else batch_norm
        sn = spectral_norm if spectral else (lambda m: m)
        channels = width
        layers: list[nn.Module] = [sn(nn.Conv2d(int(image_shape[0]), channels, 4, 2, 1)),
                                   nn.LeakyReLU(0.2, True)]
        for _ in range(n_up - 1):
            layers.append(sn(nn.Conv2d(channels, channels * 2, 4, 2, 1,
                                       bias=not self.batch_norm)))
            if self.batch_norm:
                layers.append(nn.BatchNorm2d(channels * 2))
            layers.append(nn.LeakyReLU(0.2, True))
            channels *= 2
        layers.append(sn(nn.Conv2d(channels, 1, start, 1, 0)))
        self.net = nn.Sequential(*layers)
        init_dcgan(self)

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.net(x).reshape(x.shape[0])


LOSSES = ("bce", "wgan", "wgan_gp")
"""``bce``: the GAN loss with the non-saturating generator loss ``-log D(G(z))`` (Goodfellow et
al. 2014); ``wgan``: the Wasserstein loss ``D(fake) - D(real)`` for the critic, ``-D(G(z))`` for
the generator, critic weights clipped to ``[-clip, clip]``; ``wgan_gp``: the Wasserstein loss
plus ``gp_weight · (‖∇D(x̂)‖₂ − 1)²`` on interpolates."""


@dataclass(frozen=True)
class GANRecipe:
    """How a GAN is trained: Radford et al.'s Adam (lr 2e-4, beta1 0.5). Batch 32 and width 32
    (D's first layer; G's last hidden one) keep training on the 4,000 mnist5k digits within
    minutes on a 2-core CPU (30 epochs, 3,750 steps) and give recognisable digits.

    ``real_label``: the target for real images in D's loss; 0.9 is one-sided label smoothing
    (Salimans et al., "Improved Techniques for Training GANs", 2016). ``d_steps``: D updates per
    G update (a critic's ``n_critic``). ``loss``: one of :data:`LOSSES`; ``optimizer``: Adam
    or RMSProp (WGAN's, which uses ``lr`` only); ``clip``: WGAN's weight clip; ``gp_weight``:
    WGAN-GP's λ. ``holdout``: real training images kept out of training, on which a critic's
    real/fake threshold is calibrated.
    """

    epochs: int = 30
    batch_size: int = 32
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    z_dim: int = 100
    width: int = 32
    real_label: float = 1.0
    d_steps: int = 1
    loss: Literal["bce", "wgan", "wgan_gp"] = "bce"
    optimizer: Literal["adam", "rmsprop"] = "adam"
    clip: float = 0.01
    gp_weight: float = 10.0
    holdout: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise BadInput(f"GAN training needs epochs >= 1, got {self.epochs}")
        if self.batch_size < 2:
            raise BadInput(f"GAN training needs batch_size >= 2 (batch norm), got "
                           f"{self.batch_size}")
        if not 0.5 < self.real_label <= 1.0:
            raise BadInput(f"real_label must lie in (0.5, 1] (0.9 = one-sided label smoothing), "
                           f"got {self.real_label}")
        if self.z_dim < 1 or self.width < 1 or self.d_steps < 1:
            raise BadInput("z_dim, width and d_steps must be >= 1")
        if self.loss not in LOSSES:
            raise BadInput(f"unknown GAN loss {self.loss!r}; known: {', '.join(LOSSES)}")
        if self.optimizer not in ("adam", "rmsprop"):
            raise BadInput(f"unknown GAN optimizer {self.optimizer!r}; known: adam, rmsprop")
        if not (self.clip > 0 and self.gp_weight >= 0 and self.holdout >= 0):
            raise BadInput(f"clip must be > 0, gp_weight and holdout >= 0; got clip = "
                           f"{self.clip}, gp_weight = {self.gp_weight}, holdout = {self.holdout}")
        if self.critic and self.holdout < 2:
            raise BadInput(f"a {self.loss} critic calibrates its real/fake threshold on held-out "
                           f"real images: holdout must be >= 2, got {self.holdout}")

    @property
    def critic(self) -> bool:
        """Whether D is a Wasserstein critic (an unbounded score with no natural zero)."""
        return self.loss != "bce"


@dataclass(frozen=True)
class GANSpec:
    """A GAN in the zoo: its discriminator is the attack target."""

    name: str
    spectral: bool
    recipe: GANRecipe
    summary: str
    kind: Literal["discriminator"] = "discriminator"
    shapes: str = "28x28, 32x32, 64x64..."
    batch_norm: bool | None = None  # D's batch norm; None: only without spectral norm
    paper: str = ""  # the GAN's paper (a link)

    def discriminator(self, image_shape: Sequence[int], width: int) -> Discriminator:
        return Discriminator(image_shape, width, spectral=self.spectral,
                             batch_norm=self.batch_norm)

    def build(self, image_shape: Sequence[int], recipe: GANRecipe | None = None
              ) -> tuple[Generator, Discriminator]:
        r = recipe or self.recipe
        return Generator(image_shape, r.z_dim, r.width), self.discriminator(image_shape, r.width)


WGAN_RECIPE = GANRecipe(loss="wgan", optimizer="rmsprop", lr=2e-4, d_steps=5, clip=0.01,
                        epochs=30, holdout=500)
"""Arjovsky et al.'s WGAN: RMSProp, n_critic 5, clip 0.01, with lr 2e-4 instead of the paper's
5e-5: on the 3,500 training digits at batch 32, lr 5e-5 gave blobs and a generator collapsed on
a few classes after 90 epochs (about 2,000 generator steps), lr 2e-4 recognisable digits after
30. 500 training digits are held out for the threshold."""

WGAN_GP_RECIPE = GANRecipe(loss="wgan_gp", optimizer="adam", lr=1e-4, beta1=0.0, beta2=0.9,
                           d_steps=5, gp_weight=10.0, epochs=60, holdout=500)
"""Gulrajani et al.'s WGAN-GP: Adam lr 1e-4, betas (0, 0.9), λ = 10, n_critic 5; 60 epochs
(about 1,300 generator steps) for recognisable digits of every class."""


def gan_spec(name: str) -> GANSpec:
    return zoo_entry(name, GANSpec, "GAN")


def gans() -> list[str]:
    return names_of(GANSpec)


register_model(GANSpec("dcgan", False, GANRecipe(),
                       "DCGAN (Radford et al. 2016); its discriminator is the target",
                       paper="https://arxiv.org/abs/1511.06434"))
register_model(GANSpec("sndcgan", True, GANRecipe(),
                       "SN-DCGAN: spectral norm on every D layer (Miyato et al. 2018)",
                       paper="https://arxiv.org/abs/1802.05957"))
register_model(GANSpec("wgan", False, WGAN_RECIPE,
                       "WGAN critic with weight clipping (Arjovsky et al. 2017)",
                       paper="https://arxiv.org/abs/1701.07875"))
register_model(GANSpec("wgan_gp", False, WGAN_GP_RECIPE,
                       "WGAN-GP critic, gradient penalty, no batch norm (Gulrajani et al. 2017)",
                       batch_norm=False, paper="https://arxiv.org/abs/1704.00028"))
