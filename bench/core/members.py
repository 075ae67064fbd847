"""A cascade's members and what each did (the ``standard`` cascade, :mod:`attacks.cascade`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class CascadeMember:
    """One attack of a cascade: the name its rows carry, the registered attack and its params.
    ``conditional``: the member runs only when a failure indicator of the earlier members
    asks for it (:func:`attacks.cascade.failure_reasons`); otherwise it is skipped. ``probe``:
    a short black-box run whose margins, set against the white-box members', feed that
    decision. ``continues``: the member starts each sample from the point where the member
    before it left that sample's search (its ``x_init``), continuing one search in two parts."""

    name: str
    attack: str
    params: dict[str, Any]
    black_box: bool = False
    conditional: bool = False
    probe: bool = False
    continues: bool = False


@dataclass(frozen=True)
class MemberStats:
    """What one member of a cascade did: the samples it was given (those every earlier member
    missed), the samples it fooled, its model calls, its seconds, its gradient evaluations that
    came back zero or not finite, the samples it skipped (a conditional member no indicator
    asked for), and, for a black-box member, the samples on which it reached a higher margin
    loss than every white-box member before it. A cascade returns one per member as
    ``artifacts["members"]`` (a ``[members, fields]`` tensor, as artifacts are tensors):
    :meth:`table` writes it, :meth:`read` reads it back; a checkpoint stores them by field name
    (:meth:`named`)."""

    given: int
    fooled: int
    n_forward: int
    n_backward: int
    wall_s: float
    n_grad_unavailable: int = 0
    skipped: int = 0
    beat_white_box: int = 0

    @staticmethod
    def table(stats: Sequence[MemberStats]) -> torch.Tensor:
        """``[members, fields]``, the fields in :meth:`names` order (in memory, one run's)."""
        return torch.tensor([[getattr(s, name) for name in MemberStats.names()] for s in stats],
                            dtype=torch.float64).view(-1, len(MemberStats.names()))

    @staticmethod
    def read(table: torch.Tensor) -> list[MemberStats]:
        return [MemberStats(**MemberStats._typed(dict(zip(MemberStats.names(), row,
                                                          strict=True))))
                for row in table.tolist()]

    @staticmethod
    def names() -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(MemberStats))

    @staticmethod
    def named(stats: Sequence[MemberStats]) -> dict[str, torch.Tensor]:
        """One tensor per field, ``member.<field>`` (how a checkpoint stores them: by name,
        so a checkpoint of another field set is told apart, never misread)."""
        table = MemberStats.table(stats)
        return {f"member.{name}": table[:, k].clone()
                for k, name in enumerate(MemberStats.names())}

    @staticmethod
    def from_named(tensors: Mapping[str, torch.Tensor]) -> list[MemberStats]:
        """The stats :meth:`named` wrote; :class:`KeyError` naming a field it lacks."""
        columns = {name: tensors[f"member.{name}"].tolist() for name in MemberStats.names()}
        count = len(next(iter(columns.values())))
        return [MemberStats(**MemberStats._typed({n: columns[n][i] for n in columns}))
                for i in range(count)]

    @staticmethod
    def _typed(values: dict[str, float]) -> dict[str, Any]:
        return {n: float(v) if n == "wall_s" else int(v) for n, v in values.items()}
