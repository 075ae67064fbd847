"""Common corruptions, RobustBench's third threat model beside Linf and L2: MNIST-C for
grayscale images (:mod:`.mnist_c`, each corruption at the benchmark's one severity) and
CIFAR-10-C for colour ones (:mod:`.cifar10_c`, severities 1–5), chosen by the images' channels.

:func:`corrupt` draws image ``i`` of a batch from ``default_rng([seed, k, i])`` (MNIST-C) or
``default_rng([seed, k, severity, i])`` (CIFAR-10-C), ``k`` the corruption's place in its set and
``i`` the image's index in its data set, so a corrupted image depends on the seed, the
severity and its index only (not on the batch it is in).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bench.core.corruptions.cifar10_c import CIFAR10_C, SEVERITIES
from bench.core.corruptions.mnist_c import MNIST_C, Corruption
from bench.core.errors import BadInput

__all__ = ["MNIST_C", "CIFAR10_C", "Corruption", "Level", "CorruptionSet", "SETS",
           "corruption_set", "corrupt"]


@dataclass(frozen=True)
class Level:
    """One corruption at one severity of a set (0: a corruption without a scale)."""

    name: str
    severity: int
    summary: str


@dataclass(frozen=True)
class CorruptionSet:
    """A benchmark's corruptions for images of ``channels`` channels, in its order."""

    name: str
    channels: int
    levels: tuple[Level, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(level.name for level in self.levels))

    def check(self, name: str) -> None:
        """:class:`BadInput` listing the set's corruptions if ``name`` is not one of them."""
        if name not in self.names:
            raise BadInput(f"unknown {self.name} corruption {name!r}; its corruptions: "
                           f"{', '.join(self.names)}")

    def select(self, names: tuple[str, ...] = (), severities: tuple[int, ...] = ()
               ) -> list[Level]:
        """The levels of the corruptions ``names`` at ``severities`` (default: all); an unknown
        name or a severity the set does not have is a :class:`BadInput` listing the valid
        ones."""
        for name in names:
            self.check(name)
        have = sorted({level.severity for level in self.levels})
        for severity in severities:
            if severity not in have:
                raise BadInput(f"{self.name} has no severity {severity}; its severities: "
                               f"{', '.join(map(str, have))}")
        chosen = [level for level in self.levels
                  if (not names or level.name in names)
                  and (not severities or level.severity in severities or level.severity == 0)]
        if not chosen:
            asked = [level for level in self.levels if not names or level.name in names]
            raise BadInput(f"none of the chosen {self.name} corruptions has severity "
                           f"{', '.join(map(str, severities))}; theirs: " + ", ".join(
                               f"{level.name} {level.severity}" for level in asked))
        return chosen


SETS: dict[str, CorruptionSet] = {
    "mnist-c": CorruptionSet("mnist-c", 1, tuple(
        Level(c.name, c.severity, c.summary) for c in MNIST_C.values())),
    "cifar10-c": CorruptionSet("cifar10-c", 3, tuple(
        Level(name, severity, summary) for name, (_, summary) in CIFAR10_C.items()
        for severity in SEVERITIES)),
}
"""The corruption sets by name."""


def corruption_set(channels: int) -> CorruptionSet:
    """The set for images of ``channels`` channels; :class:`BadInput` for a count none has."""
    for cset in SETS.values():
        if cset.channels == channels:
            return cset
    raise BadInput(f"no corruption set for {channels}-channel images; MNIST-C takes 1 channel "
                   f"(grayscale), CIFAR-10-C 3 (RGB)")


def corrupt(x: torch.Tensor, name: str, seed: int, indices: torch.Tensor | None = None,
            severity: int | None = None) -> torch.Tensor:
    """``x`` (``[N, C, H, W]`` in [0, 1]) under the corruption ``name`` of its channels' set at
    ``severity`` (MNIST-C: its one severity, the default; CIFAR-10-C: 1–5, required), each
    image drawn from its own generator (see the module's doc; ``indices``: the images' indices
    in their data set, default ``0 .. N − 1``), clipped to [0, 1]."""
    if x.ndim != 4:
        raise BadInput(f"corruptions take images [N, C, H, W], got shape {tuple(x.shape)}")
    cset = corruption_set(x.shape[1])
    cset.check(name)
    if x.numel() and not (float(x.min()) >= 0 and float(x.max()) <= 1):
        raise BadInput(f"corruptions take images in [0, 1], got values in "
                       f"[{float(x.min()):.3g}, {float(x.max()):.3g}]")
    where = range(len(x)) if indices is None else [int(i) for i in indices]
    if len(where) != len(x):
        raise BadInput(f"{len(where)} indices for {len(x)} images")
    k = cset.names.index(name)
    if cset.name == "mnist-c":
        fixed = MNIST_C[name].severity
        if severity not in (None, fixed):
            raise BadInput(f"MNIST-C's {name} has the one severity {fixed}, not {severity}")
        images = x[:, 0].detach().cpu().double().numpy()

        def one(image: np.ndarray, i: int) -> np.ndarray:
            return MNIST_C[name].fn(image.copy(), np.random.default_rng([seed, k, i]))
    else:
        if severity not in SEVERITIES:
            raise BadInput(f"CIFAR-10-C's {name} takes a severity in 1–5, got {severity}")
        images = x.detach().cpu().double().permute(0, 2, 3, 1).numpy()
        fn, level = CIFAR10_C[name][0], int(severity)

        def one(image: np.ndarray, i: int) -> np.ndarray:
            return fn(image.copy(), np.random.default_rng([seed, k, level, i]), level)
    out = np.stack([np.clip(one(img, i), 0, 1) for i, img in zip(where, images, strict=True)]) \
        if len(images) else images
    result = torch.from_numpy(np.ascontiguousarray(out)).to(dtype=x.dtype, device=x.device)
    return result.unsqueeze(1) if cset.channels == 1 else result.permute(0, 3, 1, 2).contiguous()
