"""Benchmark plumbing: each benchmark records (group, library, median seconds, robust accuracy);
the terminal summary prints speed ratios against the fastest peer of the same group and run.

Run the timed suite with ``pytest tests/benchmarks --benchmark-enable``; the default test run
(``--benchmark-disable`` in pyproject) executes every benchmark body once, as a smoke test.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest

RESULTS: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)


@pytest.fixture
def record(benchmark: Any) -> Any:
    """``record(group, library, robust_acc, n_images)`` after ``benchmark(...)`` has run."""

    def _record(group: str, library: str, robust_acc: float, n_images: int) -> None:
        benchmark.extra_info.update(library=library, robust_acc=robust_acc, n_images=n_images)
        stats = getattr(benchmark, "stats", None)
        if stats is not None and not benchmark.disabled:
            RESULTS[group][library] = {"median_s": stats.stats.median, "robust_acc": robust_acc,
                                       "img_per_s": n_images / stats.stats.median}

    return _record


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS:
        return
    tr = terminalreporter
    tr.section("advbench speed ratios (same model, data and budget; > 1 means advbench is faster)")
    for group, libs in sorted(RESULTS.items()):
        ours = libs.get("advbench")
        for lib, r in sorted(libs.items()):
            ratio = f"{r['median_s'] and ours['median_s'] and r['median_s'] / ours['median_s']:.2f}x" \
                if ours and lib != "advbench" else "-"
            tr.write_line(f"{group:10s} {lib:12s} {r['img_per_s']:10.0f} img/s  "
                          f"robust_acc {r['robust_acc']:.3f}  advbench speed-up {ratio}")
