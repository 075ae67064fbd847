"""Adversarial training holds at every seed: FGSM-RS and PGD-AT with their defaults, each fitted on
the LeNet trained at seeds 0, 5 and 11 (all 4,000 mnist5k training digits), evaluated with
PGD-40 (step 0.01, random start) at eps 0.3 on the first 1,000 digits of the official MNIST test
set.

The floor is the defenses' promise: FGSM-RS ≥ 75% and PGD-AT ≥ 80% robust accuracy, clean ≥ 97%,
at *each* seed (not on average). Six fits take about an hour on 2 CPU cores, so this runs only
with ``--benchmark-enable`` and the official test set in ``$ADVBENCH_MNIST_DIR`` (IDX files;
default ``../shared/data/mnist`` next to the repository); the default test run skips it (the
CI-sized check, at one seed, is
``tests/defenses/test_defenses.py::test_fgsm_rs_defaults_beat_plain_training``).
Fits come from (and go to) the advbench checkpoint cache (``$ADVBENCH_CACHE``), so after
``advbench run --preset defenses`` only the evaluation is left.

    pytest tests/benchmarks/test_advtrain_seeds.py --benchmark-enable -s
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from attacks import Attack
from bench.core.checkpoints import CheckpointCache, resolve_cache_dir
from bench.core.datasets import Dataset, load_dataset
from bench.core.training import trained_classifier
from defenses import DEFENSES, fitted_defense
from defenses.advtrain import robust_accuracy

SEEDS = (0, 5, 11)
FLOOR = {"fgsm_rs": 0.75, "pgd_at": 0.80}
CLEAN_FLOOR = 0.97
N_TEST = 1000
MNIST_DIR = Path(os.environ.get("ADVBENCH_MNIST_DIR",
                                Path(__file__).resolve().parents[3] / "shared/data/mnist"))


@pytest.fixture(scope="module")
def official_test(request: pytest.FixtureRequest) -> tuple[torch.Tensor, torch.Tensor]:
    if not request.config.getoption("benchmark_enable"):
        pytest.skip("six defense fits (about an hour on 2 CPU cores): run with --benchmark-enable")
    if not MNIST_DIR.is_dir():
        pytest.skip(f"the official MNIST test set is not at {MNIST_DIR} (set ADVBENCH_MNIST_DIR)")
    test = load_dataset(f"idx:{MNIST_DIR}").split("test")
    return test.x[:N_TEST], test.y[:N_TEST]


@pytest.mark.timeout(3600)  # one fit on 2 CPU cores: 4 to 10 minutes
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("defense", sorted(FLOOR))
def test_defense_holds_at_every_seed(defense: str, seed: int, mnist5k: Dataset,
                                     official_test: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = official_test
    cache = CheckpointCache(resolve_cache_dir())  # the user's cache: a sweep's fits are reused
    device = torch.device("cpu")
    base, _ = trained_classifier("lenet", mnist5k, seed=seed, device=device, cache=cache,
                                 progress=False)
    start = time.perf_counter()
    defended = fitted_defense(DEFENSES.get(defense), base, mnist5k.split("train"), {},
                              seed=seed, cache=cache, progress=False).eval()
    fit_s = time.perf_counter() - start
    pgd40 = Attack.create("pgd", norm="linf", eps=0.3, params={
        "steps": 40, "step_size": 0.01, "random_start": True})
    clean, robust = robust_accuracy(defended, x, y, pgd40, torch.Generator().manual_seed(0))
    card: dict[str, Any] = defended.card
    print(f"\n{defense} seed {seed}: clean {clean:.3f}, PGD-40@0.3 {robust:.3f} "
          f"(kept epoch {card.get('kept_epoch')}, collapsed at {card.get('collapsed_at_epoch')}, "
          f"fit {fit_s:.0f} s)")
    assert clean >= CLEAN_FLOOR, (defense, seed, clean)
    assert robust >= FLOOR[defense], (defense, seed, robust)
