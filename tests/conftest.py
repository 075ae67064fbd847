"""Shared fixtures: a LeNet trained with the real recipe on mnist5k (once per session, in a
temporary cache), held-out digits, and tiny targets for fast contract tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from bench.checkpoints import CheckpointCache
from bench.datasets import Dataset, load_dataset
from bench.target import Target
from bench.training import trained_classifier

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("advbench-cache")


@pytest.fixture(scope="session")
def mnist5k() -> Dataset:
    return load_dataset("mnist5k")


@pytest.fixture(scope="session")
def trained_lenet(mnist5k: Dataset, cache_dir: Path) -> tuple[Target, dict[str, Any]]:
    """LeNet trained by advbench's own recipe (what `advbench run --preset quick` uses)."""
    return trained_classifier("lenet", mnist5k, seed=0, device=torch.device("cpu"),
                              cache=CheckpointCache(cache_dir), progress=False)


@pytest.fixture(scope="session")
def lenet(trained_lenet: tuple[Target, dict[str, Any]]) -> Target:
    return trained_lenet[0]


@pytest.fixture(scope="session")
def digits(mnist5k: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """200 held-out digits, 20 per class."""
    x, y = mnist5k.test.x, mnist5k.test.y
    idx = torch.cat([torch.nonzero(y == c)[:20, 0] for c in range(10)])
    return x[idx].clone(), y[idx].clone()


class TinyCNN(nn.Module):
    """A small untrained CNN with batch norm and dropout (so train/eval mode matters)."""

    def __init__(self, in_channels: int = 1, outputs: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
            nn.Dropout(0.5), nn.LazyLinear(outputs),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def make_tiny_target(kind: str = "classifier", seed: int = 0) -> Target:
    torch.manual_seed(seed)
    if kind == "discriminator":
        net = TinyCNN(1, 1)
        net(torch.zeros(2, 1, 28, 28))
        return Target(net, num_classes=2, input_shape=(1, 28, 28), mean=[0.5], std=[0.5],
                      kind="discriminator", name="tiny-d").eval()
    net = TinyCNN(1, 10)
    net(torch.zeros(2, 1, 28, 28))
    return Target(net, num_classes=10, input_shape=(1, 28, 28), mean=[0.1307], std=[0.3081],
                  name="tiny").eval()


@pytest.fixture(scope="session")
def trained_dcgan(mnist5k: Dataset, cache_dir: Path) -> Any:
    """DCGAN trained by advbench's own recipe on mnist5k (what the gan preset uses; ~2 min)."""
    from generative import trained_gan

    return trained_gan("dcgan", mnist5k, seed=0, device=torch.device("cpu"),
                       cache=CheckpointCache(cache_dir), progress=False)
