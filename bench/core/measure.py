"""Throughput measurement: wall time synchronised with the device, peak memory, device names,
and the forward / forward+backward *floor* every attack's throughput is compared with."""

from __future__ import annotations

import contextlib
import enum
import functools
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.core.errors import BadInput


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


def node_name() -> str:
    """This machine's host name; inside a Ray task, ":" and the Ray node's id as well (several
    Ray nodes can share a host)."""
    name = socket.gethostname()
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        context = ray.get_runtime_context()
        if context.worker.mode == ray.WORKER_MODE:
            name += ":" + context.get_node_id()[:12]
    return name


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


class Precision(enum.StrEnum):
    """The number format an attack runs its model in (verification is always fp32). ``auto``
    is resolved per attacked model by :func:`bench.core.fastpath.resolve_precision`."""

    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"
    AUTO = "auto"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """The autocast context for ``precision`` (``fp32``: none; ``bf16`` / ``fp16``)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in ("bf16", "fp16"):
        raise ValueError(f"no autocast for precision {precision!r} (resolve 'auto' first)")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device.type, dtype=dtype)


def timed(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int
          ) -> tuple[float, Any, int | None]:
    """Median wall seconds of ``fn`` (synchronised), its last output, CUDA peak memory."""
    out = None
    for _ in range(warmup):
        out = fn()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        out = fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    peak = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
    return statistics.median(times), out, peak


def floors(target: torch.nn.Module, x: torch.Tensor, precisions: tuple[str, ...], repeats: int,
           *, warmup: int = 10, min_repeats: int = 10) -> dict[tuple[str, str], float]:
    """Images/s of a plain forward and of forward+backward to the input, per precision.

    The floor is the denominator of every throughput ratio, so it gets a generous warm-up and
    repeats by default: a cold GPU (clocks, cuDNN autotuning) would flatter every attack
    measured after it.
    """
    device = x.device
    y = torch.zeros(x.shape[0], dtype=torch.long, device=device)
    out: dict[tuple[str, str], float] = {}
    for precision in precisions:
        def forward() -> None:
            with torch.no_grad(), autocast(device, precision):
                target(x)

        def forward_backward() -> None:
            xg = x.detach().requires_grad_(True)
            with autocast(device, precision):
                loss = torch.nn.functional.cross_entropy(target(xg).float(), y)
            torch.autograd.grad(loss, xg)

        for kind, fn in (("forward", forward), ("forward+backward", forward_backward)):
            seconds, _, _ = timed(fn, device, max(min_repeats, 3 * repeats), warmup=warmup)
            out[(kind, precision)] = x.shape[0] / seconds
    return out


def floor_fraction(n_forward: int, n_backward: int, wall_s: float,
                   floor: dict[tuple[str, str], float], precision: str) -> float | None:
    """The share of the floor an attack reached: its backward passes per second over the
    forward+backward floor (gradient attacks), or its forward passes per second over the
    forward floor (gradient-free ones)."""
    if wall_s <= 0:
        return None
    if n_backward:
        return (n_backward / wall_s) / floor[("forward+backward", precision)]
    if n_forward:
        return (n_forward / wall_s) / floor[("forward", precision)]
    return None
