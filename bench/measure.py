"""Throughput measurement: wall time synchronised with the device, peak memory, device names."""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import subprocess
import time
from collections.abc import Iterator
from typing import Any
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.errors import BadInput


def resolve_device(name: str) -> torch.device:
    """``auto`` → the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BadInput(f"unknown device {name!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BadInput(f"device {name!r} asked for, but no CUDA device is available; use 'auto'")
    return device


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Measurement:
    wall_s: float = 0.0
    peak_mem_bytes: int | None = None


@contextlib.contextmanager
def measure(device: torch.device) -> Iterator[Measurement]:
    """Time a block with the device synchronised at both ends; record CUDA peak memory.

    On the CPU there is no allocator statistic for one block, so ``peak_mem_bytes`` stays None.
    """
    result = Measurement()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    start = time.perf_counter()
    try:
        yield result
    finally:
        synchronize(device)
        result.wall_s = time.perf_counter() - start
        if device.type == "cuda":
            result.peak_mem_bytes = int(torch.cuda.max_memory_allocated(device))


@functools.cache
def git_sha() -> str | None:
    """The advbench source tree's git commit, when it is a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5, env={**os.environ})
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """The autocast context for ``precision`` (``fp32``: none; ``bf16`` / ``fp16``)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device.type, dtype=dtype)
