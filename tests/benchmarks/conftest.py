"""Benchmark plumbing: each benchmark records (group, library, median seconds, robust accuracy);
the terminal summary prints speed ratios against the fastest peer of the same group and run.

Run the timed suite with ``pytest tests/benchmarks --benchmark-enable``; the default test run
(``--benchmark-disable`` in pyproject) executes every benchmark body once, as a smoke test.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any

import pytest
import torch

from bench.core.target import Target

ORIGINAL_RUNS: dict[str, dict[str, dict[str, Any]]] = {}
"""test_autoattack_original: case -> "original" / "standard" / "rapid" -> robust accuracy,
calls per sample, seconds, and the digits left robust (to count disagreements)."""

RESULTS: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
"""group -> library -> its score (always) and timing (when timed), for the strength assertions
and the speed-ratio summary."""


def spread_over_classes(split: Any, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` held-out images taken evenly along the split (mnist5k's test split is sorted by
    class, so its first 100 digits are all zeros: this takes 10 of each class)."""
    idx = torch.linspace(0, len(split) - 1, n).round().long()
    return split.x[idx].clone(), split.y[idx].clone()


def adversarially_trained(defense: str, model: Target, mnist5k: Any, cache_dir: Any,
                          request: pytest.FixtureRequest) -> Target:
    """The LeNet adversarially trained with ``defense`` at eps 0.3: the defense's defaults on
    every mnist5k training digit when timed, one epoch on 500 digits in the smoke run."""
    from bench.core.checkpoints import CheckpointCache
    from bench.core.datasets import Split
    from defenses import DEFENSES, fitted_defense

    train = mnist5k.split("train")
    full = bool(request.config.getoption("benchmark_enable"))
    n, params = (len(train.x), {"eps": 0.3}) if full else (
        500, {"eps": 0.3, "epochs": 1, "monitor_samples": 50, "monitor_steps": 2})
    return fitted_defense(DEFENSES.get(defense), model, Split(train.x[:n], train.y[:n]),
                          params, seed=0, cache=CheckpointCache(cache_dir),
                          progress=False).to(model.device).eval()


@pytest.fixture(scope="session")
def device() -> torch.device:
    """Benchmarks run on the GPU when there is one (peers get the same device)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="session")
def model(lenet: Target, device: torch.device) -> Target:
    """The trained LeNet on the benchmark device."""
    return copy.deepcopy(lenet).to(device).eval()


@pytest.fixture
def record(benchmark: Any) -> Any:
    """``record(group, library, score, n_images, metric)`` after ``benchmark(...)`` has run;
    ``score`` is the strength measure shown next to the speed (robust accuracy by default)."""

    def _record(group: str, library: str, score: float, n_images: int,
                metric: str = "robust_acc") -> None:
        benchmark.extra_info.update(library=library, n_images=n_images, **{metric: score})
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        result: dict[str, Any] = {"score": score}
        stats = getattr(benchmark, "stats", None)
        if stats is not None and not benchmark.disabled:
            result.update(median_s=stats.stats.median, img_per_s=n_images / stats.stats.median)
        RESULTS[group][library] = {**result, "metric": metric}

    return _record


def _original_table(tr: Any) -> None:
    tr.section("advbench standard / rapid vs the original AutoAttack (same model, digits, eps)")
    tr.write_line("| case | attack | robust acc | calls / sample | seconds | "
                  "robust to it only / to the original only | Square's budget ran |")
    tr.write_line("|---|---|---|---|---|---|---|")
    for key, runs in ORIGINAL_RUNS.items():
        reference = runs.get("original")
        for who, r in runs.items():
            versus = "" if who == "original" or reference is None else (
                f"{int((r['left'] & ~reference['left']).sum())} / "
                f"{int((~r['left'] & reference['left']).sum())}")
            square = {True: "yes", False: "no"}.get(r.get("square"), "yes")
            tr.write_line(f"| {key} | {who} | {100 * r['robust']:.1f} | {r['calls']:,.0f} | "
                          f"{r['seconds']:.0f} | {versus} | {square} |")
        if reference is not None and reference.get("checks"):
            tr.write_line(f"(the original's sanity checks on {key}: {reference['checks']})")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if ORIGINAL_RUNS:
        _original_table(terminalreporter)
    if not any("median_s" in r for libs in RESULTS.values() for r in libs.values()):
        return  # the smoke run: strength was asserted, nothing was timed
    tr = terminalreporter
    where = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    tr.section(f"advbench speed ratios on {where} (same model, data and budget; "
               f"> 1 means advbench is faster)")
    for group, libs in sorted(RESULTS.items()):
        ours = libs.get("advbench")
        for lib, r in sorted(libs.items()):
            ratio = f"{r['median_s'] and ours['median_s'] and r['median_s'] / ours['median_s']:.2f}x" \
                if ours and lib != "advbench" else "-"
            tr.write_line(f"{group:10s} {lib:12s} {r['img_per_s']:10.1f} img/s  "
                          f"{r['metric']} {r['score']:.3f}  advbench speed-up {ratio}")
