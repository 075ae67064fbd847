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
from typing import Literal, Protocol, TypeVar

import torch
from torch import nn

from bench.core.errors import BadInput
from bench.core.registry import Registry
from bench.core.target import TargetKind

SCHEDULES = ("onecycle", "cyclic", "cosine", "constant")
OPTIMIZERS = ("adam", "sgd")


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

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise BadInput(f"epochs must be >= 1 (a training budget of zero trains nothing), "
                           f"got {self.epochs}")
        if self.batch_size < 1:
            raise BadInput(f"batch_size must be >= 1, got {self.batch_size}")
        if self.optimizer not in OPTIMIZERS:
            raise BadInput(f"unknown optimizer {self.optimizer!r}; use 'adam' or 'sgd'")
        if self.schedule not in SCHEDULES:
            raise BadInput(f"schedule must be one of {', '.join(SCHEDULES)}, got "
                           f"{self.schedule!r}")


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
    paper: str = ""  # the architecture's paper (a link)

    @property
    def shapes(self) -> str:
        return "x".join(map(str, self.input_shape))


E = TypeVar("E")


def zoo_entry(name: str, cls: type[E], what: str) -> E:
    """The zoo entry ``name`` as a ``cls``; :class:`BadInput` naming the ``what`` s (e.g.
    "classifier") of the zoo if it is another kind of entry."""
    entry = ZOO.get(name)
    if not isinstance(entry, cls):
        raise BadInput(f"model {name!r} is a {entry.kind}, not a {what}; {what}s: "
                       f"{', '.join(names_of(cls))}")
    return entry


def names_of(cls: type) -> list[str]:
    """The names of the zoo's ``cls`` entries, sorted."""
    return [n for n in ZOO.names() if isinstance(ZOO.get(n), cls)]


def classifier_spec(name: str) -> ModelSpec:
    return zoo_entry(name, ModelSpec, "classifier")


def classifiers() -> list[str]:
    return names_of(ModelSpec)


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


def mlp(num_classes: int = 10, inputs: int = 28 * 28, hidden: int = 256) -> nn.Module:
    """A fully connected ReLU network, two hidden layers of 256: the architecture furthest
    from the LeNet among MNIST's usual ones (a transfer source or target beside it, and a
    network complete bounds are cheap on)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(inputs, hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, num_classes))


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
    paper="https://doi.org/10.1109/5.726791",
))
register_model(ModelSpec(
    "mlp", lambda n: mlp(n), (1, 28, 28),
    TrainRecipe(epochs=12, batch_size=64, lr=1e-3, optimizer="adam", max_shift=2),
    "MLP, two hidden ReLU layers of 256, 28x28x1 (MNIST-like)",
))
register_model(ModelSpec(
    "resnet18_cifar", resnet18_cifar, (3, 32, 32),
    TrainRecipe(epochs=30, batch_size=128, lr=0.1, optimizer="sgd", weight_decay=5e-4,
                max_shift=4, hflip=True),
    "ResNet-18 with a 3x3 stem, 32x32x3 (CIFAR-like)",
    paper="https://arxiv.org/abs/1512.03385",
))
