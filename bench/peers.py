"""The peers' attacks at advbench's budgets: foolbox, torchattacks and IBM ART.

One adapter per (group, library), shared by ``advbench perf`` (:mod:`bench.perf`) and the
benchmarks in ``tests/benchmarks``. Each adapter builds the peer's attack for a target, inputs and
budget, and returns a ``run()`` that attacks and returns the adversarial images on the inputs'
device (for ``uap``, the one universal perturbation). Budgets follow each library's spelling of
the same attack: FGSM at eps; PGD with ``steps`` steps of ``step`` from a random start (foolbox,
torchattacks, ART each draw their own); DeepFool L2 with 50 steps; the one-pixel attack with
torchattacks' differential evolution; the universal perturbation with ART's DeepFool inner attack.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from bench.core.target import Target

PeerRun = Callable[[], torch.Tensor]

LIBRARIES = {"foolbox": "foolbox", "torchattacks": "torchattacks", "art": "art"}
"""Each peer library and the module that tells whether it is installed."""

PEERS: dict[str, tuple[str, ...]] = {
    "fgsm": ("foolbox", "torchattacks", "art"),
    "pgd10": ("foolbox", "torchattacks", "art"),
    "deepfool": ("foolbox", "art"),
    "onepixel": ("torchattacks",),
    "uap": ("art",),
    "apgd": ("torchattacks",),
    "standard": ("torchattacks",),
}
"""Which peers have each attack group."""


class CountingModel(torch.nn.Module):
    """``target`` counting its per-image forward and backward passes (a batch of 100 counts
    100), as advbench's attacks count their own: a peer's model calls, set beside ours.
    Passes run under :meth:`counting_as` are counted in that phase (e.g. a peer's sanity
    checks), the rest in ``"attack"``."""

    def __init__(self, target: torch.nn.Module) -> None:
        super().__init__()
        self.target = target
        self.phase = "attack"
        self.calls: dict[str, dict[str, int]] = {}
        for name in ("num_classes", "bounds", "input_shape"):  # what the adapters read
            if hasattr(target, name):
                setattr(self, name, getattr(target, name))

    def _count(self, kind: str, n: int) -> None:
        phase = self.calls.setdefault(self.phase, {"forward": 0, "backward": 0})
        phase[kind] += n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.target(x)
        n = x.shape[0]
        self._count("forward", n)
        if out.requires_grad:
            out.register_hook(lambda grad: self._count("backward", n))
        return out

    @contextlib.contextmanager
    def counting_as(self, phase: str) -> Iterator[None]:
        before, self.phase = self.phase, phase
        try:
            yield
        finally:
            self.phase = before

    def counted(self, run: Callable[[], torch.Tensor]) -> Callable[[], tuple[torch.Tensor,
                                                                            dict[str, int]]]:
        """``run`` (attacking through this model) returning its images and the attack
        phase's ``n_forward`` / ``n_backward`` of that run alone."""
        def once() -> tuple[torch.Tensor, dict[str, int]]:
            self.calls = {}
            out = run()
            calls = self.calls.get("attack", {"forward": 0, "backward": 0})
            return out, {"n_forward": calls["forward"], "n_backward": calls["backward"]}
        return once


def available(library: str) -> bool:
    return importlib.util.find_spec(LIBRARIES[library]) is not None


def fgsm(library: str, target: Target, x: torch.Tensor, y: torch.Tensor, eps: float) -> PeerRun:
    """Linf FGSM at ``eps``."""
    if library == "foolbox":
        import foolbox as fb

        return _foolbox(fb.attacks.FGSM(), target, x, y, eps)
    if library == "torchattacks":
        import torchattacks

        return lambda: torchattacks.FGSM(target, eps=eps)(x, y)
    from art.attacks.evasion import FastGradientMethod

    return _art(FastGradientMethod(_art_classifier(target, x.device), eps=eps,
                                   batch_size=len(x)), x, y)


def pgd(library: str, target: Target, x: torch.Tensor, y: torch.Tensor, eps: float,
        step: float, steps: int) -> PeerRun:
    """Linf PGD: ``steps`` steps of ``step`` from a random start in the eps ball."""
    if library == "foolbox":
        import foolbox as fb

        return _foolbox(fb.attacks.LinfPGD(steps=steps, abs_stepsize=step), target, x, y, eps)
    if library == "torchattacks":
        import torchattacks

        return lambda: torchattacks.PGD(target, eps=eps, alpha=step, steps=steps)(x, y)
    from art.attacks.evasion import ProjectedGradientDescent

    return _art(ProjectedGradientDescent(_art_classifier(target, x.device), eps=eps,
                                         eps_step=step, max_iter=steps, batch_size=len(x),
                                         verbose=False), x, y)


def deepfool(library: str, target: Target, x: torch.Tensor, y: torch.Tensor,
             steps: int = 50) -> PeerRun:
    """Minimal L2 DeepFool, ``steps`` steps (ART: over all classes' gradients)."""
    if library == "foolbox":
        import foolbox as fb

        return _foolbox(fb.attacks.L2DeepFoolAttack(steps=steps), target, x, y, None)
    from art.attacks.evasion import DeepFool

    return _art(DeepFool(_art_classifier(target, x.device), max_iter=steps,
                         nb_grads=target.num_classes, batch_size=len(x), verbose=False), x, None)


def onepixel(library: str, target: Target, x: torch.Tensor, y: torch.Tensor,
             generations: int = 10, popsize: int = 10) -> PeerRun:
    """torchattacks' one-pixel attack: its DE uses ``max(1, popsize // d) * d`` members for the
    ``d = 2 + C`` parameters of a pixel, over ``generations`` generations."""
    import torchattacks

    return lambda: torchattacks.OnePixel(target, pixels=1, steps=generations,
                                         popsize=popsize)(x, y)


def onepixel_population(channels: int, popsize: int = 10) -> int:
    """The population torchattacks' DE really uses for ``popsize`` (see :func:`onepixel`)."""
    d = 2 + channels
    return max(1, popsize // d) * d


def uap(library: str, target: Target, fit_x: torch.Tensor, eps: float,
        target_fooling_rate: float = 0.8, passes: int = 1) -> PeerRun:
    """ART's universal perturbation (Linf ``eps``, DeepFool inner attack) fitted on ``fit_x``
    until its fooling rate reaches ``target_fooling_rate`` or ``passes`` passes are done."""
    from art.attacks.evasion import UniversalPerturbation

    def run() -> torch.Tensor:
        attack = UniversalPerturbation(_art_classifier(target, fit_x.device), attacker="deepfool",
                                       delta=1 - target_fooling_rate, max_iter=passes, eps=eps,
                                       norm=np.inf, verbose=False)
        attack.generate(fit_x.cpu().numpy())
        return torch.from_numpy(attack.noise[0]).float().to(fit_x.device)
    return run


def apgd(library: str, target: Target, x: torch.Tensor, y: torch.Tensor, eps: float,
         steps: int) -> PeerRun:
    """Linf APGD with cross-entropy, ``steps`` steps, one restart."""
    import torchattacks

    return lambda: torchattacks.APGD(target, eps=eps, steps=steps, loss="ce",
                                     n_restarts=1)(x, y)


def autoattack(library: str, target: Target, x: torch.Tensor, y: torch.Tensor, eps: float,
               steps: int, queries: int) -> PeerRun:
    """AutoAttack's standard cascade from torchattacks' members at AutoAttack's budgets
    (``torchattacks.AutoAttack`` itself keeps its members' 10-step defaults): APGD-CE, APGD-T
    and multi-targeted FAB with ``steps`` steps over the 9 other classes, then Square with
    ``queries`` queries, each on the samples the earlier ones missed (``MultiAttack``)."""
    import torchattacks

    classes = target.num_classes
    return lambda: torchattacks.MultiAttack([
        torchattacks.APGD(target, eps=eps, steps=steps, loss="ce", n_restarts=1),
        torchattacks.APGDT(target, eps=eps, steps=steps, n_classes=classes, n_restarts=1),
        torchattacks.FAB(target, eps=eps, steps=steps, multi_targeted=True, n_classes=classes,
                         n_restarts=1),
        torchattacks.Square(target, eps=eps, n_queries=queries, n_restarts=1)])(x, y)


def _foolbox(attack: Any, target: Target, x: torch.Tensor, y: torch.Tensor,
             eps: float | None) -> PeerRun:
    import foolbox as fb

    model = fb.PyTorchModel(target, bounds=target.bounds, device=x.device)
    return lambda: attack(model, x, y, epsilons=eps)[1]


def _art_classifier(target: Target, device: torch.device) -> Any:
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(
        target, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(target.input_shape),
        nb_classes=target.num_classes, clip_values=target.bounds,
        device_type="gpu" if device.type == "cuda" else "cpu")


def _art(attack: Any, x: torch.Tensor, y: torch.Tensor | None) -> PeerRun:
    def run() -> torch.Tensor:
        kwargs = {} if y is None else {"y": y.cpu().numpy()}
        return torch.from_numpy(attack.generate(x.cpu().numpy(), **kwargs)).to(x.device)
    return run


__all__ = ["PEERS", "PeerRun", "apgd", "autoattack", "available", "deepfool", "fgsm",
           "onepixel", "onepixel_population", "pgd", "uap"]
