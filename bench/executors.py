"""Where a sweep's cells run: in this process, in a pool of local processes, or on Ray.

Each executor takes groups of cells (cells sharing a trained base model) and a ``claim``
function, and yields ``(cell, CellResult)`` as cells finish, or ``(cell, exception)`` for the
cells of a task that still failed after ``options.retries`` reruns. Cells are claimed as they
start (one at a time in process; a chunk of at most :data:`CHUNK` cells per pool or Ray task, no
more tasks in flight than there are workers), so several sweeps on one results directory split
the work. ``claim`` returns the cells this process may run. Workers never write results: the
driver (:func:`bench.sweep.run_sweep`) alone writes the store.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import socket
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, Protocol

from bench.config import Cell, SweepConfig
from bench.core.errors import BadInput
from bench.records import CellResult
from bench.rows import attack_run_id
from bench.runner import RunOptions
from bench.worker import Worker, run_group

log = logging.getLogger(__name__)

Outcome = tuple[Cell, "CellResult | BaseException"]
GroupTask = Callable[[SweepConfig, RunOptions, str, list[Cell]], list[CellResult]]
Claim = Callable[[list[Cell]], list[Cell]]

CHUNK = 4
"""Most cells one pool or Ray task takes (and claims) at a time."""


class Executor(Protocol):
    def run(self, groups: list[list[Cell]], run_id: str, claim: Claim) -> Iterator[Outcome]: ...

    def close(self) -> None: ...


def chunks(groups: list[list[Cell]], size: int = CHUNK) -> list[list[Cell]]:
    """Each group cut into runs of about ``size`` cells, never between cells read from one
    attack run (a minimal attack's eps rows, a cascade's member rows), which would repeat it."""
    out = []
    for group in groups:
        runs: list[list[Cell]] = []
        for cell in group:
            if runs and attack_run_id(runs[-1][-1]) == attack_run_id(cell):
                runs[-1].append(cell)
            else:
                runs.append([cell])
        parts = math.ceil(len(group) / size)
        step = math.ceil(len(group) / parts)
        chunk: list[Cell] = []
        for run in runs:
            if chunk and len(chunk) + len(run) > step:
                out.append(chunk)
                chunk = []
            chunk += run
        if chunk:
            out.append(chunk)
    return out


class InProcess:
    """All cells in this process, on one device. Every target is prepared (trained, fitted,
    clean pass) before the first attack, so a bad model fails before anything is written; each
    cell is claimed just before it runs. An error stops the sweep (the cells already written
    stay)."""

    def __init__(self, config: SweepConfig, options: RunOptions) -> None:
        self.config, self.options = config, options

    def run(self, groups: list[list[Cell]], run_id: str, claim: Claim) -> Iterator[Outcome]:
        worker = Worker(self.config, self.options, run_id)
        cells = [cell for group in groups for cell in group]
        worker.prepare(cells)
        for cell in cells:
            if claim([cell]):
                yield cell, worker.run_one(cell)

    def close(self) -> None:
        pass


def _pin_device(devices: Any) -> None:
    """Pool initializer: give this worker process one GPU of the queue (before CUDA starts)."""
    os.environ["CUDA_VISIBLE_DEVICES"] = str(devices.get())


def _drive(submit: Callable[[list[Cell]], Any], done: Callable[[list[Any]], list[Any]],
           result: Callable[[Any], list[CellResult]], groups: list[list[Cell]], retries: int,
           claim: Claim, slots: int) -> Iterator[Outcome]:
    """Claim and submit chunks of cells as tasks, at most ``slots`` in flight; rerun a failed
    task up to ``retries`` times, then report its cells as failed. ``done`` waits for finished
    handles, ``result`` reads (or raises) one."""
    queue = deque(chunks(groups))
    pending: dict[Any, tuple[list[Cell], int]] = {}

    def refill() -> None:
        while queue and len(pending) < slots:
            mine = claim(queue.popleft())
            if mine:
                pending[submit(mine)] = (mine, 0)

    refill()
    while pending:
        for handle in done(list(pending)):
            group, attempt = pending.pop(handle)
            try:
                results = result(handle)
            except Exception as exc:  # noqa: BLE001 - reported per cell, not lost
                if attempt < retries:
                    log.warning("task of %d cell(s) failed (%s); retry %d of %d",
                                len(group), exc, attempt + 1, retries)
                    pending[submit(group)] = (group, attempt + 1)
                    continue
                yield from ((cell, exc) for cell in group)
                continue
            yield from zip(group, results)
        refill()


class LocalPool:
    """``workers`` spawned processes; on CUDA each is pinned to one visible GPU."""

    def __init__(self, config: SweepConfig, options: RunOptions, workers: int,
                 gpus: list[int], task: GroupTask = run_group) -> None:
        self.config, self.options, self.task, self.workers = config, options, task, workers
        context = multiprocessing.get_context("spawn")
        initializer: Callable[..., None] | None = None
        initargs: tuple[Any, ...] = ()
        if gpus:
            queue = context.Queue()
            for i in range(workers):
                queue.put(gpus[i % len(gpus)])
            initializer, initargs = _pin_device, (queue,)
        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=context,
                                        initializer=initializer, initargs=initargs)

    def run(self, groups: list[list[Cell]], run_id: str, claim: Claim) -> Iterator[Outcome]:
        options = self.options

        def submit(group: list[Cell]) -> Future[list[CellResult]]:
            return self.pool.submit(self.task, self.config, options, run_id, group)

        def done(handles: list[Any]) -> list[Any]:
            return list(wait(handles, return_when=FIRST_COMPLETED).done)

        yield from _drive(submit, done, lambda f: f.result(), groups, self.options.retries,
                          claim, self.workers)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _check_reachable(address: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise BadInput(f"Ray address must be 'auto' or 'host:port', got {address!r}")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except OSError as exc:
        raise BadInput(f"cannot reach the Ray cluster at {address} ({exc}); start it with "
                       f"'ray start --head' or pass the head node's address") from None


class RayExecutor:
    """One Ray task per group (``num_gpus=1`` when the sweep runs on CUDA), retried by Ray up
    to ``retries`` times on errors and lost workers; results return to the driver."""

    def __init__(self, config: SweepConfig, options: RunOptions,
                 task: GroupTask = run_group) -> None:
        try:
            import ray
        except ImportError:
            raise BadInput("--executor ray needs Ray: pip install 'advbench[ray]'") from None
        self.ray = ray
        address = options.address
        if address not in (None, "auto", "local"):
            _check_reachable(address)
        self.started = not ray.is_initialized()
        if self.started:
            try:
                ray.init(address=None if address == "local" else address,
                         include_dashboard=False, log_to_driver=False,
                         ignore_reinit_error=True)
            except ConnectionError as exc:
                raise BadInput(f"cannot reach a Ray cluster at {address!r}: {exc}") from None
        device = options.device or config.device
        gpus = device.startswith("cuda") or (
            device == "auto" and ray.cluster_resources().get("GPU", 0) > 0)
        self.remote = ray.remote(num_gpus=1 if gpus else 0, max_retries=options.retries,
                                 retry_exceptions=True)(task)
        self.config, self.options = config, options
        resources = ray.cluster_resources()
        self.slots = max(1, int(resources.get("GPU", 0) if gpus else resources.get("CPU", 1)))

    def run(self, groups: list[list[Cell]], run_id: str, claim: Claim) -> Iterator[Outcome]:
        ray = self.ray
        options = self.options

        def submit(group: list[Cell]) -> Any:
            return self.remote.remote(self.config, options, run_id, group)

        def done(handles: list[Any]) -> list[Any]:
            ready, _ = ray.wait(handles, num_returns=1)
            return ready

        # Ray already retried each task: report what still fails.
        yield from _drive(submit, done, ray.get, groups, retries=0, claim=claim,
                          slots=self.slots)

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


def make_executor(config: SweepConfig, options: RunOptions) -> Executor:
    """The executor ``options`` ask for."""
    if options.executor == "ray":
        return RayExecutor(config, options)
    gpus: list[int] = []
    device = options.device or config.device
    if device in ("auto", "cuda"):
        import torch

        gpus = list(range(torch.cuda.device_count()))
    workers = options.workers if options.workers is not None else max(len(gpus), 1)
    if workers == 1:
        return InProcess(config, options)
    return LocalPool(config, options, workers, gpus)


__all__ = ["CHUNK", "chunks", "Executor", "InProcess", "LocalPool", "RayExecutor", "make_executor"]
