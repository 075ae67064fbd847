"""advbench's ``standard`` and ``rapid`` cascades against the original AutoAttack
(``pyautoattack`` 0.2.0, Croce & Hein, ICML 2020, ``version="standard"``, unmodified)
on the same model, digits and eps, where most digits are robust, since that is where the cost
lies: the zoo LeNet at Linf 0.1, the PGD-AT LeNet at Linf 0.3, the LeNet at L2 1.5.

Model calls are counted the same way on both sides: each image's forward or backward pass
through the model counts one (a batch of 100 counts 100), the original's through a counting
wrapper (:mod:`tests.original`), whose sanity-check passes are reported apart.

With ``--benchmark-enable`` each case runs on 100 digits (10 per class) at AutoAttack's budgets
(100 steps, 9 target classes, 5000 queries; ``rapid``'s own 3 targets and 500-query probe):
tens of minutes on 2 CPU cores. Per case it asserts at most one digit more robust to advbench
than to the original, and for ``rapid`` at most 1/5 of the original's calls per sample and 1/3
of its seconds. The default test run executes each case once on 8 digits at tiny budgets with
the strength bound only. The terminal summary (tests/benchmarks/conftest.py) prints the table
the README shows.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch

from attacks import run_attack
from bench.core.target import Target
from tests.benchmarks.conftest import ORIGINAL_RUNS as RUNS
from tests.benchmarks.conftest import adversarially_trained, spread_over_classes
from tests.original import robust, run_original

CASES = [("lenet", "linf", 0.1), ("pgd_at", "linf", 0.3), ("lenet", "l2", 1.5)]


@pytest.fixture(scope="module")
def pgd_at(model: Target, mnist5k: Any, cache_dir: Any, request: pytest.FixtureRequest
           ) -> Target:
    """The LeNet adversarially trained with PGD at eps 0.3."""
    return adversarially_trained("pgd_at", model, mnist5k, cache_dir, request)


def budgets(full: bool) -> dict[str, int]:
    return {"steps": 100, "target_classes": 9, "queries": 5000, "n": 100} if full else {
        "steps": 3, "target_classes": 2, "queries": 20, "n": 8}


def _ours(version: str, target: Target, x: torch.Tensor, y: torch.Tensor, norm: str,
          eps: float, b: dict[str, int]) -> tuple[torch.Tensor, float]:
    params: dict[str, Any] = {"version": version, "steps": b["steps"], "queries": b["queries"]}
    if version == "standard":
        params["target_classes"] = b["target_classes"]
    elif b["n"] < 100:
        params["probe_queries"] = b["queries"] // 2
    res = run_attack("standard", target, x, y, eps=eps, norm=norm, params=params,
                     generator=torch.Generator(x.device).manual_seed(0), batch_size=500)
    return res.x_adv, (res.n_forward + res.n_backward) / len(x)


@pytest.mark.parametrize("case,who", [(c, w) for c in CASES
                                      for w in ("original", "standard", "rapid")],
                         ids=[f"{m}-{n}-{e:g}-{w}" for m, n, e in CASES
                              for w in ("original", "standard", "rapid")])
def test_against_the_original(case: tuple[str, str, float], who: str, mnist5k: Any,
                              device: torch.device, original_autoattack: Any, benchmark: Any,
                              request: pytest.FixtureRequest) -> None:
    full = not benchmark.disabled
    name, norm, eps = case
    target = request.getfixturevalue("model" if name == "lenet" else name)
    b = budgets(full)
    x, y = (t.to(device) for t in spread_over_classes(mnist5k.test, b["n"]))
    key = f"{name} {norm} {eps:g}"
    started = time.perf_counter()
    if who == "original":
        run = run_original(original_autoattack, target, x, y, eps=eps, norm=norm,
                           steps=b["steps"], target_classes=b["target_classes"],
                           queries=b["queries"])
        x_adv, calls, extra = run.x_adv, run.per_sample(len(x)), run.calls.get("checks")
    else:
        x_adv, calls = _ours(who, target, x, y, norm, eps, b)
        extra = None
    seconds = time.perf_counter() - started
    left = robust(target, x, y, x_adv)
    RUNS.setdefault(key, {})[who] = {"robust": float(left.float().mean()), "calls": calls,
                                     "seconds": seconds, "left": left, "checks": extra}
    benchmark.extra_info.update(case=key, who=who, calls_per_sample=calls, seconds=seconds)
    benchmark.pedantic(lambda: None, rounds=1)  # the run above is the measurement
    if who == "original":
        return
    reference = RUNS[key].get("original")
    assert reference is not None, "the original's case runs first"
    assert int((left & ~reference["left"]).sum()) <= 1, (key, who)
    if full and who == "rapid":
        assert calls <= reference["calls"] / 5, (calls, reference["calls"])
        assert seconds <= reference["seconds"] / 3, (seconds, reference["seconds"])
