"""No failure indicator on the plain LeNet at the papers' own budgets: PGD-40 and AutoAttack's
``standard`` and ``rapid`` at 100 steps, 9 target classes (``rapid``: 3) and 5,000 Square
queries, eps 0.1, 30 digits (about 6 minutes on 2 CPU cores). With ``--benchmark-enable`` only;
the default test run executes the same check at 3 targets and 300 queries
(tests/attacks/test_indicators.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.core.target import Target
from tests.attacks.test_indicators import none_on_the_plain_lenet


def test_none_on_the_plain_lenet_at_the_papers_budgets(lenet: Target, tmp_path: Path,
                                                       cache_dir: Path, benchmark: Any) -> None:
    benchmark.pedantic(lambda: None, rounds=1)  # the sweep is the measurement
    if benchmark.disabled:
        pytest.skip("the papers' budgets run with --benchmark-enable; the default run checks "
                    "the same at smaller ones (tests/attacks/test_indicators.py)")
    none_on_the_plain_lenet(lenet, tmp_path, cache_dir, {}, n_eval=30)
