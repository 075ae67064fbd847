"""Adversarial training of a GAN's discriminator during GAN training.

Liu, Hsieh, "Rob-GAN: Generator, Discriminator, and Adversarial Attacker", CVPR 2019: the
discriminator is trained on adversarial examples found by PGD while the GAN trains, which
makes D robust and, through D's smoother gradients, helps G. Before every D step, PGD
(``steps`` steps of ``step_rel · eps / steps``, random start, in advbench's [0, 1] pixel space)
pushes the real batch towards "fake" and (``attack_fake``) the fake batch towards "real"; D then
trains on the perturbed mixture. The authors' code perturbs only the real images
(``attack_fake = false`` reproduces that); both are perturbed by default.

The GAN is trained anew with the base GAN's architecture and recipe (Rob-GAN trains from
scratch); the defended target is its discriminator. It is evaluated on the *base* GAN's
evaluation set (the same real images and generator samples as the undefended discriminator),
so rows with and without the defense are paired sample for sample.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from attacks import Attack
from bench.core.datasets import Split
from bench.core.errors import BadInput
from bench.core.target import Target
from defenses.base import register_defense
from generative.discriminator import FAKE, REAL, discriminator_target
from generative.models import GANRecipe, gan_spec, gans
from generative.training import train_gan


@dataclass(frozen=True)
class RobGANParams:
    """Rob-GAN's defaults (5 PGD steps); ``eps`` is in [0, 1] pixels (the paper's 1/32 in
    [-1, 1] is 1/64 here; 0.1 suits MNIST's larger threat models). ``epochs``: ``None`` keeps
    the base GAN's recipe."""

    eps: float = 0.1
    steps: int = 5
    step_rel: float = 2.5
    attack_fake: bool = True
    epochs: int | None = None

    def __post_init__(self) -> None:
        if not 0 < self.eps <= 1:
            raise BadInput(f"eps must lie in (0, 1] (pixels in [0, 1]), got {self.eps}")
        if self.steps < 1:
            raise BadInput(f"steps must be >= 1, got {self.steps}")
        if not self.step_rel > 0:
            raise BadInput(f"step_rel must be > 0, got {self.step_rel}")
        if self.epochs is not None and self.epochs < 1:
            raise BadInput(f"epochs must be >= 1 (or unset for the GAN's recipe), got "
                           f"{self.epochs}")


def _gan_of(base: Target) -> tuple[str, GANRecipe]:
    name = base.card.get("gan")
    if base.kind != "discriminator" or not isinstance(name, str) or name not in gans():
        what = "a discriminator advbench did not train" if base.kind == "discriminator" \
            else f"a {base.kind}"
        raise BadInput(f"robgan trains a zoo GAN's discriminator anew; target {base.name!r} is "
                       f"{what} (use a GAN target such as {', '.join(gans())})")
    recipe = GANRecipe(**base.card.get("recipe", {}))
    if recipe.critic:
        raise BadInput(f"robgan trains a discriminator with the GAN loss (Liu & Hsieh 2019); "
                       f"{name!r} is a Wasserstein critic ({recipe.loss}); use it with "
                       f"{', '.join(n for n in gans() if not gan_spec(n).recipe.critic)}")
    return name, recipe


def check_robgan(base: Target, params: RobGANParams) -> None:
    _gan_of(base)


def build_robgan(base: Target, params: RobGANParams) -> Target:
    name, recipe = _gan_of(base)
    discriminator = gan_spec(name).discriminator(base.input_shape, recipe.width)
    target = discriminator_target(discriminator.to(base.device), base.input_shape,
                                  name=f"{base.name}+robgan")
    target.card = {"gan": name, "recipe": dataclasses.asdict(recipe)}
    return target


@register_defense("robgan", params=RobGANParams, build=build_robgan, check=check_robgan)
def robgan(base: Target, train: Split, params: RobGANParams, generator: torch.Generator, *,
           progress: bool = True) -> Target:
    """Rob-GAN: PGD adversarial training of the discriminator during GAN training (Liu & Hsieh
    2019)."""
    name, recipe = _gan_of(base)
    if params.epochs is not None:
        recipe = dataclasses.replace(recipe, epochs=params.epochs)
    device = base.device
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    pgd = Attack.create("pgd", norm="linf", eps=params.eps, params={
        "steps": params.steps, "step_size": params.step_rel * params.eps / params.steps,
        "random_start": True, "early_stop": False})
    attack_rng = torch.Generator(device=device).manual_seed(seed)

    def perturb(d: Target, real: torch.Tensor, fake: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        def attacked(x: torch.Tensor, label: int) -> torch.Tensor:
            y = torch.full((x.shape[0],), label, dtype=torch.long, device=x.device)
            return pgd(d, x, y, generator=attack_rng).x_adv.detach()
        return attacked(real, REAL), attacked(fake, FAKE) if params.attack_fake else fake

    gan = train_gan(gan_spec(name), train, seed=seed, device=device, recipe=recipe,
                    d_perturb=perturb, progress=progress, desc=f"robgan {name}@{params.eps:g}")
    target = discriminator_target(gan.discriminator, base.input_shape, name=f"{base.name}+robgan")
    target.card = {"gan": name, "recipe": dataclasses.asdict(recipe),
                   "history": gan.card["history"]}
    return target


__all__: list[Any] = ["RobGANParams", "robgan"]
