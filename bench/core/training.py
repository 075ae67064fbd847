"""Training zoo classifiers on a dataset's train split, cached as safetensors checkpoints.

The cache key hashes (model, train-data fingerprint, recipe, seed, training code version), so a
changed recipe or data set trains anew and an unchanged one loads in milliseconds.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.core.checkpoints import CheckpointCache, load_or_fit
from bench.core.datasets import Dataset, Split
from bench.core.errors import BadInput
from bench.core.progress import progress_bar
from bench.core.target import Target
from bench.core.zoo import ModelSpec, TrainRecipe, classifier_spec, classifiers

log = logging.getLogger(__name__)

TRAINING_CODE_VERSION = 1


def make_target(spec: ModelSpec, dataset: Dataset, model: nn.Module) -> Target:
    """Wrap a zoo network as a Target with the dataset's normalisation inside."""
    return Target(model, num_classes=dataset.num_classes, input_shape=spec.input_shape,
                  bounds=(0.0, 1.0), mean=dataset.mean, std=dataset.std, name=spec.name)


def check_compatible(spec: ModelSpec, dataset: Dataset) -> None:
    if tuple(dataset.input_shape) != spec.input_shape:
        raise BadInput(
            f"model {spec.name!r} expects inputs {spec.input_shape} but dataset {dataset.name!r} "
            f"has {tuple(dataset.input_shape)}; pick a model for this data "
            f"({', '.join(n for n in classifiers() if classifier_spec(n).input_shape == tuple(dataset.input_shape)) or 'none in the zoo'})"
        )


def augment(x: torch.Tensor, recipe: TrainRecipe, generator: torch.Generator) -> torch.Tensor:
    """Random integer shifts (zero fill) up to ``recipe.max_shift`` pixels, optional h-flips."""
    if recipe.max_shift:
        s = recipe.max_shift
        n, _, h, w = x.shape
        padded = F.pad(x, (s, s, s, s))
        dy = torch.randint(0, 2 * s + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * s + 1, (n,), generator=generator)
        rows = (dy[:, None] + torch.arange(h)[None]).to(x.device)  # [n, h]
        cols = (dx[:, None] + torch.arange(w)[None]).to(x.device)  # [n, w]
        idx = torch.arange(n, device=x.device)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if recipe.hflip:
        flip = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x.contiguous()


@torch.no_grad()
def accuracy(target: Target, split: Split, device: torch.device, batch_size: int = 1000) -> float:
    correct = 0
    for xb, yb in zip(split.x.split(batch_size), split.y.split(batch_size)):
        logits = target.predict_logits(xb.to(device))
        correct += int((logits.argmax(1).cpu() == yb).sum())
    return correct / max(len(split), 1)


BatchLoss = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]
"""``(x, y) -> (mean loss, logits or None)`` for one training batch."""
Perturb = Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]
"""``(x, y, epoch) -> (x', y')``: what the model trains on instead of the clean batch."""
EpochEnd = Callable[[int, dict[str, float]], bool]
"""``(epoch, stats) -> stop``: may add entries to ``stats``; returning True ends training."""



def make_optimizer(params: list[nn.Parameter], recipe: TrainRecipe, total_steps: int
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The recipe's optimiser and its per-step learning-rate schedule."""
    if recipe.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=recipe.lr,
                                                      weight_decay=recipe.weight_decay)
    else:  # "sgd": TrainRecipe admits no other optimizer
        opt = torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum,
                              weight_decay=recipe.weight_decay, nesterov=True)
    if recipe.schedule == "onecycle":
        return opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr,
                                                        total_steps=total_steps)
    shapes: dict[str, Callable[[float], float]] = {
        # Wong et al. 2020: linear 0 -> lr over the first 2/5 of training, back to 0 at the end.
        "cyclic": lambda t: t / 0.4 if t < 0.4 else max(0.0, (1 - t) / 0.6),
        "cosine": lambda t: 0.5 * (1 + math.cos(math.pi * t)),
        "constant": lambda t: 1.0,
    }
    shape = shapes[recipe.schedule]  # TrainRecipe admits only SCHEDULES
    return opt, torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: shape(min(step + 1, total_steps) / total_steps))


def _cross_entropy(model: nn.Module) -> BatchLoss:
    def loss(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits = model(x)
        return F.cross_entropy(logits, y), logits
    return loss


def fit(model: nn.Module, split: Split, recipe: TrainRecipe, *, seed: int, device: torch.device,
        progress: bool = True, desc: str = "train", loss: BatchLoss | None = None,
        perturb: Perturb | None = None, epoch_end: EpochEnd | None = None
        ) -> list[dict[str, float]]:
    """Train ``model``'s trainable parameters (in place) on ``split`` following ``recipe``.

    By default the loss is the cross-entropy of ``model``'s logits on augmented clean batches;
    ``perturb`` replaces each batch (adversarial training), ``loss`` replaces the objective
    (denoiser training), ``epoch_end`` evaluates after each epoch and may stop training.
    Returns per-epoch stats (loss, train accuracy when logits are available, learning rate,
    and whatever ``epoch_end`` added).
    """
    if len(split) == 0:
        raise BadInput("training needs a non-empty train split")
    generator = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    steps_per_epoch = (len(split) + recipe.batch_size - 1) // recipe.batch_size
    opt, sched = make_optimizer(params, recipe, recipe.epochs * steps_per_epoch)
    loss_fn = loss or _cross_entropy(model)
    history: list[dict[str, float]] = []
    bar = progress_bar(total=recipe.epochs * steps_per_epoch, desc=desc, enabled=progress,
               unit="step", leave=False)
    was_training = model.training
    try:
        for epoch in range(recipe.epochs):
            order = torch.randperm(len(split), generator=generator)
            total_loss, correct, seen = 0.0, 0, 0
            lr = opt.param_groups[0]["lr"]
            for batch in order.split(recipe.batch_size):
                xb = augment(split.x[batch].to(device), recipe, generator)
                yb = split.y[batch].to(device)
                if perturb is not None:
                    xb, yb = perturb(xb, yb, epoch)
                model.train()
                value, logits = loss_fn(xb, yb)
                opt.zero_grad(set_to_none=True)
                value.backward()
                opt.step()
                sched.step()
                total_loss += float(value.detach()) * len(yb)
                seen += len(yb)
                if logits is not None:
                    correct += int((logits.argmax(1) == yb).sum())
                bar.update(1)
            stats: dict[str, float] = {"epoch": epoch + 1, "loss": total_loss / seen, "lr": lr}
            if loss is None:
                stats["train_acc"] = correct / seen
            model.train(was_training)
            stop = epoch_end(epoch, stats) if epoch_end is not None else False
            history.append(stats)
            bar.set_postfix({k: f"{v:.3f}" for k, v in stats.items() if k not in ("epoch", "lr")})
            if stop:
                break
    finally:
        model.train(was_training)
        bar.close()
    return history


def classifier_config(model_name: str, dataset: Dataset, *, seed: int,
                      recipe: TrainRecipe | None = None) -> dict[str, Any]:
    """What a trained zoo classifier depends on: its cache entry's config (the key hashes it)."""
    spec = classifier_spec(model_name)
    return {
        "model": spec.name,
        "dataset": dataset.name,
        "train_fingerprint": dataset.fingerprint("train"),
        "num_classes": dataset.num_classes,
        "recipe": (recipe or spec.recipe).__dict__,
        "seed": seed,
        "training_code_version": TRAINING_CODE_VERSION,
    }


def trained_classifier(
    model_name: str,
    dataset: Dataset,
    *,
    seed: int,
    device: torch.device,
    cache: CheckpointCache,
    progress: bool = True,
    recipe: TrainRecipe | None = None,
) -> tuple[Target, dict[str, Any]]:
    """Return the zoo model trained on ``dataset``'s train split, from the cache when present."""
    spec = classifier_spec(model_name)
    check_compatible(spec, dataset)
    recipe = recipe or spec.recipe
    config = classifier_config(model_name, dataset, seed=seed, recipe=recipe)

    def build() -> Target:
        return make_target(spec, dataset, spec.build(dataset.num_classes)).to(device)

    def restore(weights: dict[str, torch.Tensor]) -> Target:
        target = build()
        target.model.load_state_dict(weights)
        return target

    def train(key: str) -> tuple[Target, dict[str, Any]]:
        target = build()
        start = time.perf_counter()
        history = fit(target, dataset.split("train"), recipe, seed=seed, device=device,
                      progress=progress, desc=f"train {spec.name}")
        return target, {
            "architecture": spec.name, "summary": spec.summary, "config": config,
            "cache_key": key, "history": history,
            "metrics": {"test_acc": accuracy(target, dataset.test, device),
                        "train_s": time.perf_counter() - start},
        }

    return load_or_fit(cache, "models", config, seed=seed, device=device, restore=restore,
                       fit=train, state=lambda t: t.model.state_dict(),
                       what=f"{spec.name} on {dataset.name}")
