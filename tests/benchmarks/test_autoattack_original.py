"""advbench's ``standard`` and ``rapid`` cascades against the original AutoAttack
(``pyautoattack`` 0.2.0, Croce & Hein, ICML 2020, ``version="standard"``, unmodified)
on the same model, digits and eps.

Two kinds of case. Where gradients work and most digits are robust, since that is where the
cost lies: the zoo LeNet at Linf 0.1, the PGD-AT LeNet at Linf 0.3, the LeNet at L2 1.5. And
where AutoAttack's black-box member matters, Square fooling digits every white-box member
missed: the FGSM-RS LeNet at Linf 0.2 and 0.3, the 1-bit ``bit_depth`` LeNet attacked with
BPDA (both sides differentiate the binarisation as the identity) at Linf 0.3, and a held-out
masking mechanism on which none of ``rapid``'s thresholds was set (:class:`tests.masking.
Reversed`, gradients that point the wrong way) at Linf 0.1.

Model calls are counted the same way on both sides: each image's forward or backward pass
through the model counts one (a batch of 100 counts 100), the original's through a counting
wrapper (:mod:`tests.original`), whose sanity-check passes are reported apart.

With ``--benchmark-enable`` each case runs on 100 digits (10 per class) at AutoAttack's budgets
(100 steps, 9 target classes, 5000 queries; ``rapid``'s own 3 targets and its probe, the first
500 of the same 5000 queries): tens of minutes on 2 CPU cores. Per case it asserts at most one
digit more robust to advbench than to the original; where ``rapid`` skipped Square, at most 1/5
of the original's calls per sample. The default test run executes each case once on 8 digits
at tiny budgets with the strength bound only. The terminal summary
(tests/benchmarks/conftest.py) prints the table the README shows. Each case computes the
original's run itself when it is not there yet, so the cases run in any order.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch

from attacks import run_attack
from attacks.cascade import StandardParams, members
from bench.core.members import MemberStats
from bench.core.norms import Norm
from bench.core.target import Target
from defenses import DEFENSES, fitted_defense
from tests.benchmarks.conftest import ORIGINAL_RUNS as RUNS
from tests.benchmarks.conftest import adversarially_trained, spread_over_classes
from tests.masking import Reversed
from tests.original import robust, run_original

GRADIENTS_WORK = [("lenet", "linf", 0.1), ("pgd_at", "linf", 0.3), ("lenet", "l2", 1.5)]
SQUARE_MATTERS = [("fgsm_rs", "linf", 0.2), ("fgsm_rs", "linf", 0.3),
                  ("bit_depth1", "linf", 0.3), ("reversed", "linf", 0.1)]
L1 = [("lenet", "l1", 10.0)]
"""AutoAttack's L1 version (its APGD-CE, APGD-T, FAB-T, Square) against advbench's L1
``standard`` (the same four members); ``rapid`` has no L1 version."""
RUNNERS = [(c, w) for c in GRADIENTS_WORK for w in ("original", "standard", "rapid")] + [
    (c, w) for c in SQUARE_MATTERS for w in ("original", "rapid")] + [
    (c, w) for c in L1 for w in ("original", "standard")]


@pytest.fixture(scope="module")
def pgd_at(model: Target, mnist5k: Any, cache_dir: Any, request: pytest.FixtureRequest
           ) -> Target:
    """The LeNet adversarially trained with PGD at eps 0.3."""
    return adversarially_trained("pgd_at", model, mnist5k, cache_dir, request)


@pytest.fixture(scope="module")
def fgsm_rs(model: Target, mnist5k: Any, cache_dir: Any, request: pytest.FixtureRequest
            ) -> Target:
    """The LeNet trained with FGSM-RS at eps 0.3 (its defaults)."""
    return adversarially_trained("fgsm_rs", model, mnist5k, cache_dir, request)


@pytest.fixture(scope="module")
def bit_depth1(model: Target) -> Target:
    """The LeNet behind 1-bit bit-depth reduction (BPDA stand-in: the identity)."""
    return fitted_defense(DEFENSES.get("bit_depth"), model, None, {"bits": 1}, seed=0,
                          cache=None).eval()  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def reversed(model: Target) -> Target:
    """The LeNet with misleading gradients (held out from every test of ``rapid``)."""
    return Target.from_module(Reversed(model.model), input_shape=(1, 28, 28), num_classes=10,
                              name="reversed-lenet", device=model.device).eval()


def budgets(full: bool) -> dict[str, int]:
    return {"steps": 100, "target_classes": 9, "queries": 5000, "n": 100} if full else {
        "steps": 3, "target_classes": 2, "queries": 20, "n": 8}


def _target(name: str, request: pytest.FixtureRequest) -> Target:
    return request.getfixturevalue("model" if name == "lenet" else name)


def _original(key: str, target: Target, x: torch.Tensor, y: torch.Tensor, norm: str,
              eps: float, b: dict[str, int], autoattack: Any) -> dict[str, Any]:
    """The original's run of a case, computed once whichever of the case's tests asks first."""
    if "original" not in RUNS.get(key, {}):
        started = time.perf_counter()
        run = run_original(autoattack, target, x, y, eps=eps, norm=norm, steps=b["steps"],
                           target_classes=b["target_classes"], queries=b["queries"])
        RUNS.setdefault(key, {})["original"] = {
            "robust": float(robust(target, x, y, run.x_adv).float().mean()),
            "calls": run.per_sample(len(x)), "seconds": time.perf_counter() - started,
            "left": robust(target, x, y, run.x_adv), "checks": run.calls.get("checks")}
    return RUNS[key]["original"]


def _ours(version: str, target: Target, x: torch.Tensor, y: torch.Tensor, norm: str,
          eps: float, b: dict[str, int]) -> dict[str, Any]:
    params: dict[str, Any] = {"version": version, "steps": b["steps"], "queries": b["queries"]}
    if version == "standard":
        params["target_classes"] = b["target_classes"]
    started = time.perf_counter()
    res = run_attack("standard", target, x, y, eps=eps, norm=norm, params=params,
                     generator=torch.Generator(x.device).manual_seed(0), batch_size=500)
    seconds = time.perf_counter() - started
    left = robust(target, x, y, res.x_adv)
    stats = MemberStats.read(res.artifacts["members"])
    ran_square = any(m.black_box and not m.probe and s.given and not s.skipped
                     for m, s in zip(members(StandardParams(**params), Norm(norm)), stats,
                                     strict=True))
    return {"robust": float(left.float().mean()), "calls": (res.n_forward + res.n_backward)
            / len(x), "seconds": seconds, "left": left, "checks": None,
            "square": ran_square}


@pytest.mark.parametrize("case,who", RUNNERS,
                         ids=[f"{m}-{n}-{e:g}-{w}" for (m, n, e), w in RUNNERS])
def test_against_the_original(case: tuple[str, str, float], who: str, mnist5k: Any,
                              device: torch.device, original_autoattack: Any, benchmark: Any,
                              request: pytest.FixtureRequest) -> None:
    full = not benchmark.disabled
    name, norm, eps = case
    target = _target(name, request)
    b = budgets(full)
    x, y = (t.to(device) for t in spread_over_classes(mnist5k.test, b["n"]))
    key = f"{name} {norm} {eps:g}"
    reference = _original(key, target, x, y, norm, eps, b, original_autoattack)
    run = reference if who == "original" else _ours(who, target, x, y, norm, eps, b)
    RUNS[key][who] = run
    benchmark.extra_info.update(case=key, who=who, calls_per_sample=run["calls"],
                                seconds=run["seconds"])
    benchmark.pedantic(lambda: None, rounds=1)  # the run above is the measurement
    if who == "original":
        return
    assert int((run["left"] & ~reference["left"]).sum()) <= 1, (key, who)
    if full and who == "rapid" and not run["square"]:
        assert run["calls"] <= reference["calls"] / 5, (run["calls"], reference["calls"])
