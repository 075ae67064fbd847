"""Rows in flight: a streaming attack's per-row tensors, kept in step as rows finish and the
batch is refilled from the queue."""

from __future__ import annotations

import dataclasses

import torch


class InFlight:
    """A dataclass of per-row tensors (the first field indexes the samples): :meth:`keep`
    selects rows of every field, :meth:`append` adds rows to every field."""

    def __len__(self) -> int:
        first = dataclasses.fields(self)[0]  # type: ignore[arg-type]
        return int(getattr(self, first.name).shape[0])

    def keep(self, mask: torch.Tensor) -> None:
        if bool(mask.all()):
            return
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            setattr(self, f.name, getattr(self, f.name)[mask])

    def append(self, other: InFlight) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            setattr(self, f.name, torch.cat([getattr(self, f.name), getattr(other, f.name)]))


__all__ = ["InFlight"]
