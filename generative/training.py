"""GAN training (Goodfellow et al. 2014, with Radford et al.'s DCGAN recipe; the Wasserstein
losses of Arjovsky et al. 2017 and Gulrajani et al. 2017), cached on disk.

D is trained on one batch of real and fake images together (so its batch-norm statistics, and
the running statistics it is evaluated with, describe the mixture it must separate); G with the
non-saturating loss ``-log D(G(z))`` (a critic: ``-D(G(z))``), through the same mixed batch. A
``d_perturb`` hook replaces D's inputs before each D step: Rob-GAN's adversarial training of D
(``defenses.robgan``).

A Wasserstein critic's score has no natural zero: after training, its real/fake threshold t is
calibrated on the held-out real training images (``recipe.holdout``, never trained on) against
as many fresh generator samples, and its target is ``[0, score − t]``.

:func:`trained_gan` caches (G, D) as one safetensors file with a JSON card (recipe, data
fingerprint, per-epoch curve, D's held-out accuracy, the critic's threshold, the sample quality
of :mod:`generative.quality`) and a PNG grid of samples from fixed noise.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from bench.core.checkpoints import CheckpointCache, load_or_fit
from bench.core.datasets import Dataset, Split
from bench.core.errors import BadInput
from bench.core.progress import progress_bar
from bench.core.target import Target
from bench.core.training import trained_classifier
from bench.core.usermodels import Shifted, calibrate_threshold
from bench.core.zoo import classifier_spec, classifiers
from generative.discriminator import (
    FAKE,
    REAL,
    calibration_noise_seed,
    check_generator,
    discriminator_target,
    eval_noise_seed,
    sample,
    to_pixels,
)
from generative.models import Discriminator, GANRecipe, GANSpec, Generator, gan_spec
from generative.quality import sample_quality

log = logging.getLogger(__name__)

GAN_CODE_VERSION = 2
GRID_SEED = 2016  # the fixed noise of the sample grid saved with each checkpoint
QUALITY_IMAGES = 1000  # held-out real images (and as many samples) the sample quality uses

DPerturb = Callable[[Target, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""``(D as a target, real, fake) -> (real', fake')`` in [0, 1]: what D trains on."""


@dataclass
class GAN:
    """A trained generator and discriminator; ``target`` is the discriminator as a Target."""

    spec: GANSpec
    recipe: GANRecipe
    generator: Generator
    discriminator: Discriminator
    image_shape: tuple[int, ...]
    card: dict[str, Any] = field(default_factory=dict)

    @property
    def threshold(self) -> float | None:
        """A critic's calibrated real/fake threshold (``None`` for a BCE discriminator)."""
        value = self.card.get("critic_threshold")
        return None if value is None else float(value)

    @property
    def raw_target(self) -> Target:
        """The discriminator's own output as a target, ``[0, d]`` (a critic's uncalibrated)."""
        return discriminator_target(self.discriminator, self.image_shape, name=self.spec.name)

    @property
    def target(self) -> Target:
        """The discriminator as a target: ``[0, d]``, a critic's ``[0, score − threshold]``."""
        model: torch.nn.Module = self.discriminator
        if self.recipe.critic:
            if self.threshold is None:
                raise BadInput(f"critic {self.spec.name!r} has no calibrated threshold yet")
            model = Shifted(self.discriminator, self.threshold)
        target = discriminator_target(model, self.image_shape, name=self.spec.name)
        target.card = {"gan": self.spec.name, "recipe": dataclasses.asdict(self.recipe),
                       **{k: v for k, v in self.card.items()
                          if k in ("cache_key", "metrics", "critic_threshold")}}
        return target

    def sample(self, n: int, seed: int, device: torch.device | None = None) -> torch.Tensor:
        """``n`` samples in [0, 1] from noise seeded by ``seed``."""
        device = device or next(self.generator.parameters()).device
        return sample(self.generator, self.recipe.z_dim, n, seed, device)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**{f"generator.{k}": v for k, v in self.generator.state_dict().items()},
                **{f"discriminator.{k}": v for k, v in self.discriminator.state_dict().items()}}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for prefix, module in (("generator.", self.generator),
                               ("discriminator.", self.discriminator)):
            module.load_state_dict({k[len(prefix):]: v for k, v in state.items()
                                    if k.startswith(prefix)})


def build_gan(spec: GANSpec, image_shape: tuple[int, ...], recipe: GANRecipe | None = None,
              device: torch.device | None = None) -> GAN:
    """An untrained GAN of ``spec`` for ``image_shape`` images."""
    recipe = recipe or spec.recipe
    g, d = spec.build(image_shape, recipe)
    gan = GAN(spec, recipe, g.to(device), d.to(device), tuple(image_shape))
    check_generator(gan.generator, recipe.z_dim, gan.raw_target)
    return gan


@torch.no_grad()
def discriminator_accuracy(gan: GAN, real: torch.Tensor, seed: int) -> dict[str, float]:
    """D's accuracy (eval mode) on ``real`` images and as many fresh generator samples."""
    target = gan.target
    fake = gan.sample(real.shape[0], seed, real.device)
    pred_real = target.predict_logits(real).argmax(1)
    pred_fake = target.predict_logits(fake).argmax(1)
    acc_real = float((pred_real == REAL).float().mean())
    acc_fake = float((pred_fake == FAKE).float().mean())
    return {"d_acc_real": acc_real, "d_acc_fake": acc_fake,
            "d_acc": (acc_real + acc_fake) / 2}


class _Steps:
    """The two optimiser steps of GAN training (D on real + fake, G through D)."""

    def __init__(self, gan: GAN, recipe: GANRecipe, rng: torch.Generator) -> None:
        self.g, self.d, self.recipe, self.rng = gan.generator, gan.discriminator, recipe, rng
        self.d_target = discriminator_target(self.d, gan.image_shape, name=gan.spec.name)
        self.opt_g = self.optimizer(self.g)
        self.opt_d = self.optimizer(self.d)

    def optimizer(self, module: torch.nn.Module) -> torch.optim.Optimizer:
        r = self.recipe
        if r.optimizer == "rmsprop":
            return torch.optim.RMSprop(module.parameters(), lr=r.lr)
        return torch.optim.Adam(module.parameters(), lr=r.lr, betas=(r.beta1, r.beta2))

    def logits(self, real: torch.Tensor, fake: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.d_target(torch.cat([real, fake]))[:, 1]  # one batch: BN sees the mixture
        return out[:real.shape[0]], out[real.shape[0]:]

    def d_step(self, real: torch.Tensor, fake: torch.Tensor) -> dict[str, float]:
        """One D step; ``d_real`` / ``d_fake``: D's mean probability of "real" (a critic: its
        mean score)."""
        self.d.train()
        d_real, d_fake = self.logits(real, fake)
        if self.recipe.critic:
            loss_d = d_fake.mean() - d_real.mean()
            if self.recipe.loss == "wgan_gp":
                penalty = gradient_penalty(self.d, real, fake, self.rng)
                loss_d = loss_d + self.recipe.gp_weight * penalty
        else:
            loss_d = (F.binary_cross_entropy_with_logits(
                d_real, torch.full_like(d_real, self.recipe.real_label))
                + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        if self.recipe.loss == "wgan":
            with torch.no_grad():  # Arjovsky et al.: every critic parameter, batch norm's too
                for p in self.d.parameters():
                    p.clamp_(-self.recipe.clip, self.recipe.clip)
        shown = (lambda t: t) if self.recipe.critic else torch.sigmoid
        return {"loss_d": float(loss_d.detach()),
                "d_real": float(shown(d_real.detach()).mean()),
                "d_fake": float(shown(d_fake.detach()).mean())}

    def g_step(self, real: torch.Tensor, z: torch.Tensor) -> float:
        """The non-saturating generator loss ``-log D(G(z))`` (a critic's ``-D(G(z))``),
        through D on the mixed batch."""
        _, d_gen = self.logits(real, to_pixels(self.g(z)))
        if self.recipe.critic:
            loss_g = -d_gen.mean()
        else:
            loss_g = F.binary_cross_entropy_with_logits(d_gen, torch.ones_like(d_gen))
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()  # D's grads from this pass are cleared before its next step
        self.opt_g.step()
        return float(loss_g.detach())


def interpolate_gradient_norms(discriminator: torch.nn.Module, real: torch.Tensor,
                               fake: torch.Tensor, generator: torch.Generator | None = None
                               ) -> torch.Tensor:
    """``‖∇D(x̂)‖₂`` per sample on random interpolates ``x̂ = ε·real + (1 − ε)·fake`` (pixels in
    [0, 1], mapped to D's [-1, 1]; the gradient is taken in D's own input space, as Gulrajani et
    al. do), with a graph for the penalty's backward pass."""
    eps = torch.rand(real.shape[0], *([1] * (real.ndim - 1)), generator=generator)
    eps = eps.to(real.device)
    x_hat = (eps * real + (1 - eps) * fake.detach()) * 2 - 1
    x_hat.requires_grad_(True)
    out = discriminator(x_hat).reshape(-1)
    (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    return grad.flatten(1).norm(dim=1)


def gradient_penalty(discriminator: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """WGAN-GP's penalty ``E[(‖∇D(x̂)‖₂ − 1)²]`` (Gulrajani et al. 2017, Algorithm 1)."""
    norms = interpolate_gradient_norms(discriminator, real, fake, generator)
    return (norms - 1).square().mean()


def train_gan(spec: GANSpec, split: Split, *, seed: int, device: torch.device,
              recipe: GANRecipe | None = None, d_perturb: DPerturb | None = None,
              progress: bool = True, desc: str | None = None) -> GAN:
    """Train ``spec`` on ``split``'s images (labels are ignored); a critic trains on all but
    the last ``recipe.holdout`` of them and its threshold is calibrated on those."""
    recipe = recipe or spec.recipe
    holdout = recipe.holdout if recipe.critic else 0
    if len(split) < recipe.batch_size + holdout:
        raise BadInput(f"GAN training needs at least batch_size = {recipe.batch_size} images"
                       f"{f' besides the {holdout} held out' if holdout else ''}, got "
                       f"{len(split)}")
    held_out = split.x[len(split) - holdout:]
    split = Split(split.x[:len(split) - holdout], split.y[:len(split) - holdout])
    image_shape = tuple(int(s) for s in split.x.shape[1:])
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        gan = build_gan(spec, image_shape, recipe, device)
    rng = torch.Generator().manual_seed(seed)
    steps = _Steps(gan, recipe, rng)
    steps_per_epoch = len(split) // recipe.batch_size  # drop the last, smaller batch (BN)
    history: list[dict[str, float]] = []
    step = 0
    with progress_bar(total=recipe.epochs * steps_per_epoch, desc=desc or f"train {spec.name}",
                      enabled=progress, unit="step", leave=False) as bar:
        for epoch in range(recipe.epochs):
            order = torch.randperm(len(split), generator=rng)[:steps_per_epoch * recipe.batch_size]
            sums = {"loss_d": 0.0, "loss_g": 0.0, "d_real": 0.0, "d_fake": 0.0}
            g_steps = 0
            for batch in order.split(recipe.batch_size):
                real = split.x[batch].to(device)
                z = torch.randn(real.shape[0], recipe.z_dim, generator=rng).to(device)
                gan.generator.train()
                with torch.no_grad():
                    fake = to_pixels(gan.generator(z))
                if d_perturb is not None:
                    real, fake = d_perturb(steps.d_target, real, fake)
                for key, value in steps.d_step(real, fake).items():
                    sums[key] += value
                step += 1
                if step % recipe.d_steps == 0:
                    z = torch.randn(real.shape[0], recipe.z_dim, generator=rng).to(device)
                    sums["loss_g"] += steps.g_step(split.x[batch].to(device), z)
                    g_steps += 1
                bar.update(1)
            history.append(_epoch_stats(epoch, sums, steps_per_epoch, g_steps))
            bar.set_postfix({k: f"{v:.3f}" for k, v in history[-1].items() if k != "epoch"})
    recalibrate_batch_norm(gan, split, seed)
    gan.card = {"history": history}
    if recipe.critic:
        gan.card["critic_threshold"] = critic_threshold(gan, held_out.to(device), seed)
    return gan


@torch.no_grad()
def critic_threshold(gan: GAN, real: torch.Tensor, seed: int) -> float:
    """The critic's score threshold that best separates ``real`` held-out images from as many
    fresh generator samples (:func:`bench.core.usermodels.calibrate_threshold`)."""
    raw = gan.raw_target
    fake = gan.sample(real.shape[0], calibration_noise_seed(seed), real.device)
    return calibrate_threshold(raw.predict_logits(real)[:, 1], raw.predict_logits(fake)[:, 1])


def _epoch_stats(epoch: int, sums: dict[str, float], d_steps: int, g_steps: int
                 ) -> dict[str, float]:
    """An epoch's mean losses and D outputs; a NaN means training diverged."""
    stats = {"epoch": float(epoch + 1), "loss_d": sums["loss_d"] / d_steps,
             "loss_g": sums["loss_g"] / max(g_steps, 1), "d_real": sums["d_real"] / d_steps,
             "d_fake": sums["d_fake"] / d_steps}
    for key, value in stats.items():
        if value != value:
            raise BadInput(f"GAN training diverged at epoch {epoch + 1} ({key} is NaN); "
                           f"lower the learning rate")
    return stats


@torch.no_grad()
def recalibrate_batch_norm(gan: GAN, split: Split, seed: int, batches: int = 50) -> None:
    """Re-estimate G's and D's batch-norm statistics with the final networks ("precise BN",
    Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021), then leave both in eval mode.

    During training D changes fast and its running statistics lag behind, so eval-mode D
    would misjudge fresh fakes; here D sees the same real + fake mixture it was trained on.
    """
    g, d = gan.generator, gan.discriminator
    bns = [m for m in (*g.modules(), *d.modules()) if isinstance(m, torch.nn.BatchNorm2d)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the recalibration batches
    device = next(g.parameters()).device
    rng = torch.Generator().manual_seed(seed + 1)
    d_target = discriminator_target(d, gan.image_shape, name=gan.spec.name)
    n = min(gan.recipe.batch_size, len(split))
    try:
        g.train()
        d.train()
        for _ in range(batches):
            z = torch.randn(n, gan.recipe.z_dim, generator=rng).to(device)
            fake = to_pixels(g(z))
            real = split.x[torch.randint(0, len(split), (n,), generator=rng)].to(device)
            d_target.model(torch.cat([real, fake]) * 2 - 1)  # the raw D in train mode
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        g.eval()
        d.eval()


def sample_grid_png(gan: GAN, n: int = 64) -> bytes:
    """A PNG grid of ``n`` samples from the fixed noise ``GRID_SEED``."""
    import torchvision
    from PIL import Image

    images = gan.sample(n, GRID_SEED).cpu()
    grid = torchvision.utils.make_grid(images, nrow=int(n ** 0.5), padding=2, pad_value=1.0)
    array = (grid * 255).round().byte().permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(array[:, :, 0] if images.shape[1] == 1 else array).save(buf, format="PNG")
    return buf.getvalue()


def quality_classifier(dataset: Dataset) -> str | None:
    """The zoo classifier whose features judge samples of ``dataset`` (the first one built
    for its image shape), or ``None``."""
    return next((name for name in classifiers()
                 if classifier_spec(name).input_shape == tuple(dataset.input_shape)), None)


def gan_quality(gan: GAN, dataset: Dataset, real: torch.Tensor, *, seed: int,
                cache: CheckpointCache, progress: bool = True) -> dict[str, Any] | None:
    """FID and Inception-style score of ``gan``'s samples against ``real`` with the features of
    the zoo classifier trained on ``dataset`` at ``seed`` (:mod:`generative.quality`);
    ``None`` when the zoo has no classifier for its images."""
    name = quality_classifier(dataset)
    if name is None:
        log.info("no zoo classifier takes %s images: no sample quality for %s",
                 "x".join(map(str, dataset.input_shape)), gan.spec.name)
        return None
    classifier, _ = trained_classifier(name, dataset, seed=seed, device=real.device,
                                       cache=cache, progress=progress)
    fake = gan.sample(real.shape[0], eval_noise_seed(seed) + 2, real.device)
    return sample_quality(real, fake, classifier, seed=seed)


def gan_config(name: str, dataset: Dataset, *, seed: int, recipe: GANRecipe | None = None
               ) -> dict[str, Any]:
    """What a trained GAN depends on: its cache entry's config (the key hashes it)."""
    spec = gan_spec(name)
    return {
        "gan": spec.name,
        "dataset": dataset.name,
        "train_fingerprint": dataset.fingerprint("train"),
        "recipe": dataclasses.asdict(recipe or spec.recipe),
        "seed": seed,
        "code_version": GAN_CODE_VERSION,
    }


def trained_gan(name: str, dataset: Dataset, *, seed: int, device: torch.device,
                cache: CheckpointCache, progress: bool = True,
                recipe: GANRecipe | None = None) -> GAN:
    """The registered GAN ``name`` trained on ``dataset``'s train split, from the cache when
    present (kind ``gans``: weights, card and ``samples.png``)."""
    spec = gan_spec(name)
    recipe = recipe or spec.recipe
    train = dataset.split("train")
    config = gan_config(name, dataset, seed=seed, recipe=recipe)

    def restore(weights: dict[str, torch.Tensor]) -> GAN:
        gan = build_gan(spec, dataset.input_shape, recipe, device)
        gan.load_state_dict(weights)
        gan.generator.eval()
        gan.discriminator.eval()
        return gan

    def fit(key: str) -> tuple[GAN, dict[str, Any]]:
        start = time.perf_counter()
        gan = train_gan(spec, train, seed=seed, device=device, recipe=recipe, progress=progress)
        train_s = time.perf_counter() - start
        test = dataset.test.x[:QUALITY_IMAGES].to(device)
        return gan, {
            "architecture": spec.name, "summary": spec.summary, "config": config,
            "cache_key": key, "history": gan.card["history"],
            **{k: v for k, v in gan.card.items() if k == "critic_threshold"},
            "metrics": {**discriminator_accuracy(gan, test, eval_noise_seed(seed) + 1),
                        "train_s": train_s},
            "quality": gan_quality(gan, dataset, test, seed=seed, cache=cache,
                                   progress=progress),
        }

    gan, card = load_or_fit(cache, "gans", config, seed=seed, device=device, restore=restore,
                            fit=fit, state=GAN.state_dict,
                            extra_files=lambda g: {"samples.png": sample_grid_png(g)},
                            what=f"{spec.name} on {dataset.name}")
    gan.card = card
    return gan


__all__ = ["GAN", "build_gan", "train_gan", "trained_gan", "discriminator_accuracy",
           "sample_grid_png", "DPerturb"]
