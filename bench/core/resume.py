"""Checkpoints of long attack runs, so that a killed worker, node or driver loses one piece.

AutoAttack saves its ``EvaluationState`` after each attack of its cascade (which attacks ran,
which samples are still robust); advbench's ``standard`` cascade does the same through this
module: the runner passes the run its :class:`Checkpoints`, and after each member the cascade
saves a :class:`Piece` there (its adversarials so far, which member fooled each sample, the
members' costs, the generator's state, the seconds spent); a rerun of the same attack run starts
from the last piece (:meth:`Checkpoints.resumed`) instead of the first member. The run's
randomness continues from the saved generator state, so a resumed run equals an uninterrupted
one sample for sample, and its calls and seconds add up over the pieces.

Where pieces live is the caller's choice (:class:`PieceStore`): :class:`PieceDir` keeps them as
``<key>.safetensors`` in a folder (a sweep's ``partial/`` folder on the driver's machine; Ray
workers reach it through an actor there). A piece is never a result: it is read only by a rerun
of the attack run it was written for (the ``fingerprint`` of weights and samples must match),
and the sweep removes it once every row of that run is stored.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from bench.core import hooks

log = logging.getLogger(__name__)


@dataclass
class Piece:
    """The state of an attack run after ``done`` of its pieces (``label``: the last one)."""

    done: int
    label: str
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)


class PieceStore(Protocol):
    def load(self, key: str) -> Piece | None: ...

    def save(self, key: str, piece: Piece) -> None: ...

    def drop(self, key: str) -> None: ...


META = "advbench_piece"


class PieceDir:
    """Pieces as ``<root>/<key>.safetensors`` (tensors, with the rest as JSON metadata),
    each written through a hidden temporary name and an atomic rename."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / f"{key}.safetensors"

    def load(self, key: str) -> Piece | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = json.loads((fh.metadata() or {})[META])
                tensors = {name: fh.get_tensor(name) for name in fh.keys()}
            return Piece(int(meta.pop("done")), str(meta.pop("label")), tensors, meta)
        except (OSError, SafetensorError, KeyError, ValueError, TypeError) as exc:
            log.warning("%s is not a readable checkpoint (%s); the run starts from its "
                        "beginning and overwrites it", path, exc)
            return None

    def save(self, key: str, piece: Piece) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        meta = json.dumps({**piece.meta, "done": piece.done, "label": piece.label})
        try:
            save_file({k: v.detach().cpu().contiguous() for k, v in piece.tensors.items()},
                      str(tmp), metadata={META: meta})
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def drop(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def remove_if_empty(self) -> None:
        with contextlib.suppress(OSError):
            self.root.rmdir()


@dataclass(frozen=True)
class Checkpoints:
    """Where one attack run checkpoints: pieces go into ``store`` under ``key``, and a rerun
    resumes from one only if its ``fingerprint`` (the weights and samples it ran on) matches.
    The runner hands it to an attack that checkpoints (a cascade) through the attack's call."""

    store: PieceStore
    key: str
    fingerprint: str

    def resumed(self) -> Piece | None:
        """The last piece checkpointed for this run, if it was written for the same weights
        and samples; None to start from the beginning."""
        piece = self.store.load(self.key)
        if piece is None:
            return None
        if piece.meta.get("fingerprint") != self.fingerprint:
            log.warning("checkpoint %s was written for other weights or samples; not resumed",
                        self.key)
            return None
        return piece

    def save(self, piece: Piece) -> None:
        """Save ``piece`` as this run's latest state."""
        piece.meta["fingerprint"] = self.fingerprint
        self.store.save(self.key, piece)
        hooks.hold(f"checkpoint:{piece.label}")


def fingerprint(weights: str, x: torch.Tensor, y: torch.Tensor) -> str:
    """What a piece must have been computed on to be resumed: the attacked weights' digest and
    the samples (their count and sums, cheap and order-sensitive enough for one cell's data)."""
    ramp = torch.arange(1, x.shape[0] + 1, device=x.device, dtype=torch.float64)
    weighted = float((x.flatten(1).double().sum(1) * ramp).sum()) if x.shape[0] else 0.0
    return f"{weights}:{tuple(x.shape)}:{weighted:.6e}:{int(y.long().sum())}"


__all__ = ["Checkpoints", "Piece", "PieceDir", "PieceStore", "fingerprint"]
