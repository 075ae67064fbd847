"""advbench: an adversarial-robustness benchmark suite for PyTorch (the spine: registry, targets,
datasets, model zoo, sweep configs, runner, measurement, CLI)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("advbench")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"
