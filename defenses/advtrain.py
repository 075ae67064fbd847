"""Adversarial training: train on adversarial examples made by a registered attack.

- PGD adversarial training: Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning
  Models Resistant to Adversarial Attacks", ICLR 2018 (MNIST: eps 0.3, 40 steps of 0.01).
- Fast FGSM with random start: Wong, Rice, Kolter, "Fast is better than free: Revisiting
  adversarial training", ICLR 2020 — one signed-gradient step of 1.25·eps from a uniform start,
  a cyclic learning rate, and a guard against *catastrophic overfitting*: robust accuracy under
  PGD on held-out training images is checked every epoch; when it collapses, training stops.
- Early stopping: Rice, Wong, Kolter, "Overfitting in adversarially robust deep learning",
  ICML 2020 — with the guard on, the weights of the epoch with the best monitor robust accuracy
  are the ones kept, whether or not training collapsed.

Any registered attack that takes an eps budget can be the inner attack; a fraction of each batch
can stay clean (``clean_fraction``); eps can ramp up linearly over the first epochs
(``eps_warmup``). Every epoch records clean and PGD robust accuracy on the held-out
monitor set; the curve is saved with the checkpoint card.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from attacks import ATTACKS, Attack, ThreatModel
from bench.core.datasets import Split
from bench.core.errors import BadInput
from bench.core.target import Target
from bench.core.training import fit
from bench.core.zoo import TrainRecipe
from defenses.base import register_defense, require_classifier, trainable_copy


@dataclass(frozen=True)
class AdvTrainParams:
    """Adversarial-training parameters (defaults: Madry et al.'s MNIST PGD training at eps 0.3
    with random start, in fewer, larger steps: 7 steps of 0.2·eps travel 1.4·eps, as the paper's
    40 steps of 0.01 travel 1.33·eps; a cyclic learning rate and early stopping on the monitor).

    ``attack`` / ``attack_params``: the inner attack and its params. ``step_rel``: set the inner
    attack's ``step_size`` to ``step_rel · eps`` (follows eps during warm-up). ``clean_fraction``:
    share of each batch left clean. ``eps_warmup``: share of the epochs over which
    eps ramps up linearly. ``init``: ``"base"`` fine-tunes the base weights,
    ``"scratch"`` re-initialises them. ``max_shift``: random shifts of up to that many pixels
    (4,000 training digits need them). ``monitor_samples``: train images held out for the
    per-epoch curve (PGD with ``monitor_steps`` steps at ``eps``). ``guard``: keep the weights
    of the epoch (after the warm-up) with the best monitor robust accuracy (early stopping, Rice
    et al. 2020), and stop training when it falls more than ``guard_drop`` below that best
    (catastrophic overfitting, Wong et al. 2020).
    """

    eps: float = 0.3
    norm: str = "linf"
    attack: str = "pgd"
    attack_params: dict[str, Any] = field(default_factory=lambda: {"steps": 7,
                                                                    "random_start": True})
    step_rel: float | None = 0.2
    clean_fraction: float = 0.0
    eps_warmup: float = 0.2
    init: str = "base"
    epochs: int = 15
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 5e-3
    schedule: str = "cyclic"
    weight_decay: float = 0.0
    max_shift: int = 2
    monitor_samples: int = 500
    monitor_steps: int = 10
    guard: bool = True
    guard_drop: float = 0.2

    def __post_init__(self) -> None:
        if not self.eps > 0:
            raise BadInput(f"eps must be > 0, got {self.eps}")
        if not 0 <= self.clean_fraction < 1:
            raise BadInput(f"clean_fraction must lie in [0, 1), got {self.clean_fraction}")
        if not 0 <= self.eps_warmup < 1:
            raise BadInput(f"eps_warmup (the share of epochs over which eps ramps up) must lie "
                           f"in [0, 1), got {self.eps_warmup}")
        if self.init not in ("base", "scratch"):
            raise BadInput(f"init must be 'base' or 'scratch', got {self.init!r}")
        self.recipe()  # validates the training recipe
        if self.monitor_samples < 1 or self.monitor_steps < 1:
            raise BadInput("monitor_samples and monitor_steps must be >= 1")
        if not 0 < self.guard_drop <= 1:
            raise BadInput(f"guard_drop must lie in (0, 1], got {self.guard_drop}")
        self.inner_attack(self.eps)  # validates attack, norm and attack_params

    def inner_attack(self, eps: float) -> Attack:
        """The inner attack at budget ``eps``, its params parsed."""
        spec = ATTACKS.get(self.attack)
        if spec.minimal or spec.needs_fit_data:
            raise BadInput(f"attack {spec.name!r} cannot be the inner attack of adversarial "
                           f"training (it needs an eps budget and no training data)")
        params = dict(self.attack_params)
        if self.step_rel is not None:
            if "step_size" not in {f.name for f in dataclasses.fields(spec.params_cls)}:
                raise BadInput(f"step_rel needs an inner attack with a step_size; "
                               f"{spec.name!r} has none")
            params["step_size"] = self.step_rel * eps
        return Attack.create(spec, norm=self.norm, eps=eps, params=params)

    def monitor_attack(self) -> Attack:
        """PGD of the per-epoch curve: ``monitor_steps`` steps of 2.5·eps/steps, random start."""
        return Attack.create("pgd", norm=self.norm, eps=self.eps, params={
            "steps": self.monitor_steps, "step_size": 2.5 * self.eps / self.monitor_steps,
            "random_start": True})

    @property
    def warmup_epochs(self) -> int:
        return int(self.eps_warmup * self.epochs + 1e-9)

    def eps_at(self, epoch: int) -> float:
        """The training budget at ``epoch`` (0-based): a linear ramp over the warm-up."""
        if epoch >= self.warmup_epochs:
            return self.eps
        return self.eps * (epoch + 1) / (self.warmup_epochs + 1)

    def recipe(self) -> TrainRecipe:
        return TrainRecipe(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                           optimizer=self.optimizer, weight_decay=self.weight_decay,
                           max_shift=self.max_shift, schedule=self.schedule)


@dataclass(frozen=True)
class FGSMRSParams(AdvTrainParams):
    """Wong et al. 2020: trained from scratch with one step of 1.25·eps from a uniform start in
    the eps ball, a cyclic learning rate and early stopping on a PGD check; eps ramped up over
    the first 20% of the epochs and 2-pixel random shifts, which a training set as small as
    mnist5k's 4,000 digits needs, and batches of 32. Fine-tuning the trained LeNet instead
    (``init = "base"``), or batches of 64, left some seeds far less robust."""

    attack_params: dict[str, Any] = field(default_factory=lambda: {"steps": 1,
                                                                    "random_start": True})
    step_rel: float | None = 1.25
    init: str = "scratch"
    epochs: int = 30


def build_adversarially_trained(base: Target, params: AdvTrainParams) -> Target:
    """A copy of ``base`` (same architecture and normalisation) to hold the trained weights."""
    return trainable_copy(base, params.init)


def robust_accuracy(target: Target, x: torch.Tensor, y: torch.Tensor, attack: Attack,
                    generator: torch.Generator, batch_size: int = 500) -> tuple[float, float]:
    """(clean accuracy, robust accuracy under ``attack``) of ``target`` on ``(x, y)``."""
    clean = target.predict_logits(x).argmax(1) == y
    x_adv = attack(target, x, y, generator=generator, batch_size=batch_size).x_adv
    robust = clean & (target.predict_logits(x_adv).argmax(1) == y)
    return int(clean.sum()) / len(y), int(robust.sum()) / len(y)


def adversarial_training(base: Target, train: Split, params: AdvTrainParams,
                         generator: torch.Generator, *, progress: bool = True) -> Target:
    """Train a copy of ``base`` on adversarial examples of the inner attack."""
    device = base.device
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    target = build_adversarially_trained(base, params)
    monitor_attack = params.monitor_attack()
    inner: dict[float, Attack] = {}  # the inner attack at each budget, parsed once
    fit_split, monitor = _hold_out(train, params.monitor_samples, seed)
    monitor_x, monitor_y = monitor.x.to(device), monitor.y.to(device)
    attack_gen = torch.Generator(device=device).manual_seed(seed)
    monitor_seed = seed + 1

    def perturb(x: torch.Tensor, y: torch.Tensor, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        eps = params.eps_at(epoch)
        if eps not in inner:
            inner[eps] = params.inner_attack(eps)
        n_clean = int(round(params.clean_fraction * x.shape[0]))
        adv = inner[eps](target, x[n_clean:], y[n_clean:], generator=attack_gen)
        return torch.cat([x[:n_clean], adv.x_adv.detach()]), y

    best: dict[str, Any] = {"robust": -1.0, "epoch": 0, "state": None}

    def epoch_end(epoch: int, stats: dict[str, float]) -> bool:
        clean, robust = robust_accuracy(
            target, monitor_x, monitor_y, monitor_attack,
            torch.Generator(device=device).manual_seed(monitor_seed))
        stats.update(eps=params.eps_at(epoch), monitor_clean_acc=clean, monitor_robust_acc=robust)
        warm = epoch >= params.warmup_epochs
        if params.guard and warm and robust > best["robust"]:
            best.update(robust=robust, epoch=epoch + 1,
                        state={k: v.detach().clone() for k, v in target.state_dict().items()})
        if params.guard and warm and robust < best["robust"] - params.guard_drop:
            stats["collapsed"] = 1.0
            return True
        return False

    history = fit(target, fit_split, params.recipe(), seed=seed, device=device,
                  progress=progress, desc=f"advtrain {params.attack}@{params.eps:g}",
                  perturb=perturb, epoch_end=epoch_end)
    target.name = f"{base.name}+advtrain"
    target.card = _restore_best(target, history, best)
    return target


def _hold_out(train: Split, n: int, seed: int) -> tuple[Split, Split]:
    """``train`` less ``n`` random images, and those ``n`` (the per-epoch monitor set)."""
    if n >= len(train):
        raise BadInput(f"monitor_samples = {n} leaves no training data in a train split of "
                       f"{len(train)}")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    held, kept = order[:n], order[n:]
    return Split(train.x[kept], train.y[kept]), Split(train.x[held], train.y[held])


def _restore_best(target: Target, history: list[dict[str, float]], best: dict[str, Any]
                  ) -> dict[str, Any]:
    """Load the best epoch's weights back when the guard kept one (after a collapse or at the
    end); the card says which epoch's were kept and where training collapsed."""
    collapsed = bool(history and history[-1].get("collapsed"))
    restore = best["state"] is not None
    if restore:
        target.load_state_dict(best["state"])
    kept_stats = history[best["epoch"] - 1] if restore else history[-1]
    return {
        "history": history,
        "collapsed_at_epoch": history[-1]["epoch"] if collapsed else None,
        "kept_epoch": kept_stats["epoch"],
        "metrics": {"monitor_clean_acc": kept_stats["monitor_clean_acc"],
                    "monitor_robust_acc": kept_stats["monitor_robust_acc"]},
    }


def _check(base: Target, params: AdvTrainParams) -> None:
    require_classifier(base, "adversarial training")
    ThreatModel.parse(params.norm, params.eps).check_against(base.bounds, base.input_shape)


@register_defense("pgd_at", params=AdvTrainParams, build=build_adversarially_trained,
                  check=_check)
def pgd_at(base: Target, train: Split, params: AdvTrainParams, generator: torch.Generator, *,
           progress: bool = True) -> Target:
    """PGD adversarial training (Madry et al. 2018); any registered attack as the inner one."""
    return adversarial_training(base, train, params, generator, progress=progress)


@register_defense("fgsm_rs", params=FGSMRSParams, build=build_adversarially_trained,
                  check=_check)
def fgsm_rs(base: Target, train: Split, params: FGSMRSParams, generator: torch.Generator, *,
            progress: bool = True) -> Target:
    """Fast FGSM adversarial training with random start and overfitting guard (Wong et al. 2020)."""
    return adversarial_training(base, train, params, generator, progress=progress)
