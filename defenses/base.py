"""The defense contract and registry: each defense turns a base Target into a defended Target.

A defense is registered by name with a frozen params dataclass (the paper's defaults)::

    @register_defense("fgsm_rs", params=FGSMRSParams, build=..., check=...)
    def fgsm_rs(base, train, params, generator, *, progress=True) -> Target: ...

``fit(base_target, train_data, params, generator)`` returns the defended Target, with its
training curve in ``target.card``. :func:`fitted_defense` caches fitted defenses on disk keyed by
(defense, params, base weights, train data, seed, code version). ``none`` is the identity: the
undefended baseline every defended row is compared with.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from bench.core.checkpoints import CheckpointCache, load_or_fit, state_fingerprint
from bench.core.datasets import Split
from bench.core.errors import BadInput
from bench.core.params import parse_params
from bench.core.registry import Registry
from bench.core.target import Target

log = logging.getLogger(__name__)


class DefenseFit(Protocol):
    def __call__(self, base: Target, train: Split, params: Any, generator: torch.Generator, *,
                 progress: bool = True) -> Target: ...


@dataclass(frozen=True)
class DefenseSpec:
    """A registered defense.

    ``build(base, params)``: the defended target's architecture, untrained (to load cached
    weights into). ``check(base, params)``: raise :class:`BadInput` if the defense cannot wrap
    ``base`` (called before any training). ``trainable``: fitted and cached (``none`` is not).
    """

    name: str
    fit: DefenseFit
    params_cls: type
    build: Callable[[Target, Any], Target]
    check: Callable[[Target, Any], None]
    summary: str
    trainable: bool = True
    version: int = 1
    evaluation_params: tuple[str, ...] = ()

    def make_params(self, params: Mapping[str, Any] | Any = None) -> Any:
        return parse_params(self.params_cls, params, f"defense {self.name!r}")


DEFENSES: Registry[DefenseSpec] = Registry("defense")


def _no_check(base: Target, params: Any) -> None:
    return None


def require_classifier(base: Target, defense: str) -> None:
    """Raise :class:`BadInput` unless ``base`` is a classifier (the classifier defenses train on
    the train split's class labels)."""
    if base.kind != "classifier":
        raise BadInput(f"{defense} defends classifiers; target {base.name!r} is a GAN "
                       f"{base.kind} (its defense is robgan)")


def register_defense(
    name: str, *, params: type, build: Callable[[Target, Any], Target],
    check: Callable[[Target, Any], None] = _no_check, trainable: bool = True, version: int = 1,
    evaluation_params: tuple[str, ...] = (),
) -> Callable[[DefenseFit], DefenseFit]:
    """Register a defense's ``fit`` under ``name`` (its docstring's first line is its summary)."""

    def decorator(fit: DefenseFit) -> DefenseFit:
        summary = (fit.__doc__ or "").strip().splitlines()[0] if fit.__doc__ else ""
        DEFENSES.add(name, DefenseSpec(name, fit, params, build, check, summary, trainable,
                                       version, evaluation_params))
        return fit

    return decorator


def fitted_defense(spec: DefenseSpec, base: Target, train: Split | None, params: Any, *,
                   seed: int, cache: CheckpointCache, progress: bool = True) -> Target:
    """``spec`` fitted on ``base`` and ``train``, loaded from the cache when present; a defense
    that fits nothing (``none``) is its ``build`` and takes ``train = None``.

    The cache entry is written atomically once fitting has finished, so an interrupted fit
    leaves nothing a later run would trust.
    """
    params = spec.make_params(params)
    spec.check(base, params)
    if not spec.trainable:
        return spec.build(base, params)
    if train is None:
        raise BadInput(f"defense {spec.name!r} fits on training data; give it a train split")
    generator = torch.Generator().manual_seed(seed)
    config = {
        "defense": spec.name,
        "params": {k: v for k, v in dataclasses.asdict(params).items()
                   if k not in spec.evaluation_params},
        "base": base.name,
        "base_weights": state_fingerprint(base),
        "train_fingerprint": train.fingerprint(),
        "seed": seed,
        "code_version": spec.version,
    }

    def restore(weights: dict[str, torch.Tensor]) -> Target:
        defended = spec.build(base, params)
        defended.load_state_dict(weights)
        return defended

    def fit(key: str) -> tuple[Target, dict[str, Any]]:
        start = time.perf_counter()
        defended = spec.fit(base, train, params, generator, progress=progress)
        return defended, {"config": config, "cache_key": key,
                          "fit_s": time.perf_counter() - start, **defended.card}

    defended, card = load_or_fit(cache, "defenses", config, seed=seed, device=base.device,
                                 restore=restore, fit=fit, state=Target.state_dict,
                                 what=f"defense {spec.name} of {base.name}")
    defended.card = card
    return defended


def trainable_copy(base: Target, init: str) -> Target:
    """A copy of ``base`` (same architecture and normalisation) to hold trained weights:
    re-initialised for ``init = "scratch"``, ``base``'s own for ``"base"``; every parameter
    trainable."""
    copied = copy.deepcopy(base)
    copied.card = {}
    if init == "scratch":
        for module in copied.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset) and module is not copied:
                reset()
    for p in copied.parameters():
        p.requires_grad_(True)
    return copied


@dataclass(frozen=True)
class NoParams:
    """``none`` takes no parameters."""


@register_defense("none", params=NoParams, build=lambda base, params: base, trainable=False)
def no_defense(base: Target, train: Split, params: Any, generator: torch.Generator, *,
               progress: bool = True) -> Target:
    """No defense: the base target itself (the baseline)."""
    return base
