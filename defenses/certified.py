"""Certified training: networks trained on a certified bound of their worst-case loss, so that
IBP and CROWN (:mod:`bench.core.bounds`) certify them.

- ``ibp``: Gowal, Dvijotham, Stanforth, Bunel, Qin, Uesato, Arandjelovic, Mann & Kohli, "On the
  Effectiveness of Interval Bound Propagation for Training Verifiably Robust Models", 2018 —
  the loss ``κ·CE(z(x), y) + (1 − κ)·CE(ẑ, y)``, ``ẑ`` the worst-case logits IBP bounds
  (``ẑ_y − ẑ_j`` = the lower bound of the margin ``z_y − z_j``); after a clean warm-up, eps
  ramps up linearly from 0 and κ from 1 down to ``kappa_end`` (0.5); MNIST is trained at a
  larger eps than it is tested at (0.2 for 0.1).
- ``crown_ibp``: Zhang, Chen, Xiao, Gowal, Stanforth, Li, Boning & Hsieh, "Towards Stable and
  Efficient Training of Verifiably Robust Neural Networks", ICLR 2020 — the same loss on
  ``β``·CROWN-IBP + ``(1 − β)``·IBP, β ramping from 1 down to 0 with eps.

Both train the network from scratch (``init = "scratch"``) or fine-tune it (``"base"``); the
network must be one the bounds take (a chain of supported layers, no BatchNorm: its batch
statistics would bound another network than the one evaluated). Each epoch records the
held-out monitor set's clean and IBP-certified accuracy at the training eps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bench.core.bounds import Region, margin_spec, training_bounds
from bench.core.datasets import Split
from bench.core.errors import BadInput
from bench.core.network import Network, network_of
from bench.core.norms import Norm
from bench.core.target import Target
from bench.core.training import fit
from bench.core.zoo import TrainRecipe
from defenses.base import register_defense, require_classifier, trainable_copy


@dataclass(frozen=True)
class CertifiedTrainingParams:
    """Certified-training parameters (Gowal et al. 2018's MNIST schedule, scaled to the epochs).

    ``eps``: the Linf training budget (tested at about half of it). ``warmup``: share of the
    epochs trained clean; ``ramp``: share over which eps rises linearly to ``eps`` (and κ falls
    from 1 to ``kappa_end``, β from ``beta_start`` to 0). ``beta_start``: CROWN-IBP's weight of
    the CROWN-IBP bound at the ramp's start (0: IBP alone). ``init``: ``"scratch"``
    re-initialises the network, ``"base"`` fine-tunes it. ``monitor_samples``: training digits
    held out for the per-epoch curve.
    """

    eps: float = 0.2
    warmup: float = 0.05
    ramp: float = 0.5
    kappa_end: float = 0.5
    beta_start: float = 0.0
    init: str = "scratch"
    epochs: int = 60
    batch_size: int = 50
    lr: float = 1e-3
    max_shift: int = 1
    monitor_samples: int = 500

    def __post_init__(self) -> None:
        if not self.eps > 0:
            raise BadInput(f"eps must be > 0, got {self.eps}")
        if not (0 <= self.warmup < 1 and 0 < self.ramp <= 1 and self.warmup + self.ramp <= 1):
            raise BadInput(f"warmup and ramp are shares of the epochs: 0 <= warmup, 0 < ramp, "
                           f"warmup + ramp <= 1; got {self.warmup} and {self.ramp}")
        if not 0 <= self.kappa_end <= 1 or not 0 <= self.beta_start <= 1:
            raise BadInput(f"kappa_end and beta_start must lie in [0, 1], got "
                           f"{self.kappa_end} and {self.beta_start}")
        if self.init not in ("base", "scratch"):
            raise BadInput(f"init must be 'base' or 'scratch', got {self.init!r}")
        if self.monitor_samples < 1:
            raise BadInput("monitor_samples must be >= 1")
        self.recipe()

    def recipe(self) -> TrainRecipe:
        return TrainRecipe(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                           optimizer="adam", max_shift=self.max_shift, schedule="cosine")

    def schedule(self, progress: float) -> tuple[float, float, float]:
        """(eps, κ, β) at ``progress`` (the share of training done): clean during the
        warm-up, then linear ramps, then constant."""
        ramp = min(max((progress - self.warmup) / self.ramp, 0.0), 1.0)
        return (self.eps * ramp, 1.0 - (1.0 - self.kappa_end) * ramp,
                self.beta_start * (1.0 - ramp))


@dataclass(frozen=True)
class CrownIBPParams(CertifiedTrainingParams):
    """Zhang et al. 2020: β ramps from 1 (CROWN-IBP) to 0 (IBP) with eps."""

    beta_start: float = 1.0


def build_certified(base: Target, params: CertifiedTrainingParams) -> Target:
    """A copy of ``base`` to hold the trained weights (re-initialised for ``init = scratch``)."""
    return trainable_copy(base, params.init)


def check_certified(base: Target, params: CertifiedTrainingParams) -> None:
    require_classifier(base, "certified training")
    batchnorm = [m for m in base.model.modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if batchnorm:
        raise BadInput(f"certified training takes networks without BatchNorm (its batch "
                       f"statistics would bound another network than the one evaluated); "
                       f"{base.name!r} has {type(batchnorm[0]).__name__}")
    with base.evaluating():
        network_of(base)  # refuses an unsupported layer, naming it


def robust_cross_entropy(network: Network, x: torch.Tensor, y: torch.Tensor, eps: float,
                         bounds: tuple[float, float], beta: float) -> torch.Tensor:
    """CE of the worst-case logits: ``[0, −m_j]`` with ``m_j`` the certified lower bounds of
    the margins ``z_y − z_j`` (Gowal et al. 2018, Eq. 7)."""
    num_classes = int(network.ops[-1].out_shape[0])
    region = Region(x, torch.full((x.shape[0],), eps, dtype=x.dtype, device=x.device),
                    Norm.LINF, *bounds)
    margins = training_bounds(network, region, margin_spec(y, num_classes, x.dtype), beta)
    worst = torch.cat([torch.zeros_like(margins[:, :1]), -margins], dim=1)
    return F.cross_entropy(worst, torch.zeros_like(y))


@torch.no_grad()
def certified_accuracy(network: Network, x: torch.Tensor, y: torch.Tensor, eps: float,
                       bounds: tuple[float, float]) -> tuple[float, float]:
    """(clean accuracy, IBP-certified accuracy at ``eps``) of ``network`` on ``(x, y)``."""
    clean = network.forward(x).argmax(1) == y
    region = Region(x, torch.full((x.shape[0],), eps, dtype=x.dtype, device=x.device),
                    Norm.LINF, *bounds)
    margins = training_bounds(network, region, margin_spec(y, int(network.ops[-1].out_shape[0]),
                                                           x.dtype), 0.0)
    certified = clean & (margins.amin(1) > 0)
    return float(clean.float().mean()), float(certified.float().mean())


def certified_training(base: Target, train: Split, params: CertifiedTrainingParams,
                       generator: torch.Generator, *, progress: bool = True) -> Target:
    """Train a copy of ``base`` on the certified bound of its worst-case cross-entropy."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    target = build_certified(base, params)
    network = network_of(target, dtype=torch.float32)  # the live parameters
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    held, kept = order[:params.monitor_samples], order[params.monitor_samples:]
    if not len(kept):
        raise BadInput(f"monitor_samples = {params.monitor_samples} leaves no training data")
    fit_split = Split(train.x[kept], train.y[kept])
    monitor_x, monitor_y = train.x[held].to(target.device), train.y[held].to(target.device)
    steps = params.epochs * -(-len(fit_split) // params.batch_size)
    done = [0]

    def loss(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        eps, kappa, beta = params.schedule(done[0] / steps)
        done[0] += 1
        logits = network.forward(x)
        natural = F.cross_entropy(logits, y)
        if eps == 0:
            return natural, logits
        robust = robust_cross_entropy(network, x, y, eps, target.bounds, beta)
        return kappa * natural + (1 - kappa) * robust, logits

    def epoch_end(epoch: int, stats: dict[str, float]) -> bool:
        eps, kappa, beta = params.schedule(done[0] / steps)
        clean, certified = certified_accuracy(network, monitor_x, monitor_y, params.eps,
                                              target.bounds)
        stats.update(eps=eps, kappa=kappa, beta=beta, monitor_clean_acc=clean,
                     monitor_certified_acc=certified)
        return False

    history = fit(target, fit_split, params.recipe(), seed=seed, device=target.device,
                  progress=progress, desc=f"certified training eps={params.eps:g}", loss=loss,
                  epoch_end=epoch_end)
    target.name = f"{base.name}+certified"
    target.card = {"history": history}
    return target


@register_defense("ibp", params=CertifiedTrainingParams, build=build_certified,
                  check=check_certified)
def ibp_training(base: Target, train: Split, params: CertifiedTrainingParams,
                 generator: torch.Generator, *, progress: bool = True) -> Target:
    """IBP certified training (Gowal et al. 2018): certified by IBP and CROWN."""
    return certified_training(base, train, params, generator, progress=progress)


@register_defense("crown_ibp", params=CrownIBPParams, build=build_certified,
                  check=check_certified)
def crown_ibp_training(base: Target, train: Split, params: CertifiedTrainingParams,
                       generator: torch.Generator, *, progress: bool = True) -> Target:
    """CROWN-IBP certified training (Zhang et al., ICLR 2020): β·CROWN-IBP + (1−β)·IBP."""
    return certified_training(base, train, params, generator, progress=progress)
