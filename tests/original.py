"""The original AutoAttack (``pyautoattack`` 0.2.0, the ``original_autoattack`` fixture)
run the way advbench counts its own model calls: every image's forward or backward pass
through the model counts one (a batch of 200 counts 200), with the passes of its sanity checks
(randomness, output range, dynamic layers) counted apart from the attack's.

For tests and benchmarks only: advbench never imports the original.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from bench.core.target import Target
from bench.peers import CountingModel

ORIGINAL_NORMS = {"linf": "Linf", "l2": "L2", "l1": "L1"}
"""advbench's norm names in the original's spelling."""

CHECKS = ("check_randomized", "check_range_output", "check_dynamic", "check_n_classes")


@dataclass
class OriginalRun:
    """The original's adversarials, its model calls (``calls["attack"]`` and
    ``calls["checks"]``, each ``{"forward": ..., "backward": ...}``) and its seconds."""

    x_adv: torch.Tensor
    calls: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: float = 0.0

    def per_sample(self, n: int) -> float:
        """Forward + backward passes of the evaluation (its clean pass included, as advbench's
        cascade counts its own; the checks apart) per evaluated sample."""
        attack = self.calls.get("attack", {"forward": 0, "backward": 0})
        return (attack["forward"] + attack["backward"]) / n if n else 0.0


def run_original(autoattack: Any, target: Target, x: torch.Tensor, y: torch.Tensor, *,
                 eps: float, norm: str, steps: int = 100, target_classes: int = 9,
                 queries: int = 5000, seed: int = 0, batch_size: int = 500) -> OriginalRun:
    """``AutoAttack(version="standard")``, unmodified, at the given budgets (its defaults:
    100 steps, 9 target classes, 5000 queries), on ``target`` wrapped to count its calls."""
    from pyautoattack import checks
    from pyautoattack.autoattack import AutoAttack

    model = CountingModel(target).eval()
    adversary = AutoAttack(model, norm=ORIGINAL_NORMS[norm], eps=eps, version="standard",
                           seed=seed, device=str(x.device))
    adversary.verbose = False
    adversary.apgd.n_iter = adversary.apgd_targeted.n_iter = adversary.fab.n_iter = steps
    adversary.apgd_targeted.n_target_classes = adversary.fab.n_target_classes = target_classes
    adversary.square.n_queries = queries
    originals = {name: getattr(checks, name) for name in CHECKS}

    def counted(check: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            with model.counting_as("checks"):
                return check(*args, **kwargs)
        return wrapped

    try:
        for name, check in originals.items():
            setattr(checks, name, counted(check))
        with target.evaluating():
            started = time.perf_counter()
            x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
            seconds = time.perf_counter() - started
    finally:
        for name, check in originals.items():
            setattr(checks, name, check)
    return OriginalRun(x_adv.detach(), model.calls, seconds)


def robust(target: Target, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor
           ) -> torch.Tensor:
    """``[N]`` bool: clean-correct and still correct on ``x_adv`` (a fresh forward)."""
    return (target.predict_logits(x).argmax(1) == y) & (
        target.predict_logits(x_adv).argmax(1) == y)
