"""advbench: an adversarial-robustness benchmark suite for PyTorch (the spine: registry, targets,
datasets, model zoo, sweep configs, runner, measurement, CLI).

``from bench import benchmark`` benchmarks a model object from Python (:mod:`bench.api`).
"""

from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("advbench")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"


def __getattr__(name: str) -> Any:
    """``bench.benchmark``, imported on first use (it pulls in the whole pipeline)."""
    if name == "benchmark":
        from bench.api import benchmark

        return benchmark
    raise AttributeError(f"module 'bench' has no attribute {name!r}")
