"""advbench: an adversarial-robustness benchmark suite for PyTorch (the spine: registry, targets,
datasets, model zoo, sweep configs, runner, measurement, CLI).

``from bench import benchmark`` benchmarks a model object from Python (:mod:`bench.api`).
"""

from typing import Any

from bench.core.version import ADVBENCH_VERSION

__version__ = ADVBENCH_VERSION


def __getattr__(name: str) -> Any:
    """``bench.benchmark``, imported on first use (it pulls in the whole pipeline)."""
    if name == "benchmark":
        from bench.api import benchmark

        return benchmark
    raise AttributeError(f"module 'bench' has no attribute {name!r}")
