"""The model zoo: one registry of the networks advbench trains itself (no pretrained weights are
downloaded), classifiers and GANs alike, each entry with its ``kind``.

A classifier is a :class:`ModelSpec` with the input shape it expects and the training recipe that
:mod:`bench.core.training` follows; its target is the classifier. A GAN (registered by
:mod:`generative.models`) is a ``discriminator`` entry: its target is the GAN's discriminator.
:func:`register_model` adds an entry (timm's ``register_model`` shape), :data:`ZOO` looks one up,
:func:`classifier_spec` returns a classifier's spec or says why the name is not one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import nn

from bench.core.errors import BadInput
from bench.core.registry import Registry
from bench.core.target import TargetKind


@dataclass(frozen=True)
class TrainRecipe:
    """How a network is trained: optimiser, learning-rate schedule (``onecycle``, ``cyclic`` —
    the triangular schedule of Wong et al. 2020 —, ``cosine`` or ``constant``), augmentation
    (random shifts in pixels, horizontal flips)."""

    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9
    max_shift: int = 0
    hflip: bool = False
    schedule: str = "onecycle"


class ZooEntry(Protocol):
    """What every zoo entry says of itself."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> TargetKind: ...

    @property
    def summary(self) -> str: ...

    @property
    def shapes(self) -> str:
        """The input shapes it takes, for listings (e.g. ``1x28x28``)."""
        ...


ZOO: Registry[ZooEntry] = Registry("model")


def register_model(entry: ZooEntry) -> ZooEntry:
    """Add ``entry`` to the zoo under its name (a name can be registered once)."""
    return ZOO.add(entry.name, entry)


@dataclass(frozen=True)
class ModelSpec:
    """A classifier: ``build(num_classes)`` makes a fresh network for ``input_shape`` inputs."""

    name: str
    build: Callable[[int], nn.Module]
    input_shape: tuple[int, int, int]
    recipe: TrainRecipe
    summary: str
    kind: Literal["classifier"] = "classifier"

    @property
    def shapes(self) -> str:
        return "x".join(map(str, self.input_shape))


def classifier_spec(name: str) -> ModelSpec:
    """The zoo classifier ``name``; :class:`BadInput` if the zoo's entry is not a classifier."""
    entry = ZOO.get(name)
    if not isinstance(entry, ModelSpec):
        raise BadInput(f"model {name!r} is a {entry.kind}, not a classifier; classifiers: "
                       f"{', '.join(classifiers())}")
    return entry


def classifiers() -> list[str]:
    return [n for n in ZOO.names() if ZOO.get(n).kind == "classifier"]


class LeNet(nn.Module):
    """A LeNet-style CNN for 28×28×1 inputs: two 5×5 conv + max-pool stages, two dense layers."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 7 * 7, 256), nn.ReLU(inplace=True), nn.Dropout(0.25),
            nn.Linear(256, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def resnet18_cifar(num_classes: int = 10) -> nn.Module:
    """torchvision's ResNet-18 with the CIFAR stem (3×3 conv, stride 1, no max-pool)."""
    import torchvision

    model = torchvision.models.resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


register_model(ModelSpec(
    "lenet", lambda n: LeNet(n), (1, 28, 28),
    TrainRecipe(epochs=12, batch_size=64, lr=1e-3, optimizer="adam", max_shift=2),
    "LeNet-style CNN, 28x28x1 (MNIST-like)",
))
register_model(ModelSpec(
    "resnet18_cifar", resnet18_cifar, (3, 32, 32),
    TrainRecipe(epochs=30, batch_size=128, lr=0.1, optimizer="sgd", weight_decay=5e-4,
                max_shift=4, hflip=True),
    "ResNet-18 with a 3x3 stem, 32x32x3 (CIFAR-like)",
))
