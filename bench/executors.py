"""Where a sweep's cells run: in this process, in a pool of local processes, or on Ray.

Each executor takes groups of cells (cells sharing a trained base model) and a ``claim``
function, and yields ``(cell, CellResult)`` as cells finish, or ``(cell, exception)`` for the
cells of a task that still failed after ``options.retries`` reruns (each rerun is reported to
``retried`` with its reason: a worker's error, a lost worker or node). Cells are claimed as they
start (one at a time in process; a chunk of at most :data:`CHUNK` cells per pool or Ray task, no
more tasks in flight than there are workers), so several sweeps on one results directory split
the work. ``claim`` returns the cells this process may run. Workers never write results: the
driver (:func:`bench.sweep.run_sweep`) alone writes the store. Long attack runs checkpoint
into the sweep's ``partial/`` folder on the driver's machine (:mod:`bench.core.resume`); Ray
workers on other nodes reach it through an actor placed on the driver's node.
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
from pathlib import Path
from typing import Any, Protocol, cast

from bench.config import Cell, SweepConfig
from bench.core.errors import BadInput
from bench.core.measure import node_name
from bench.core.resume import Piece, PieceDir, PieceStore
from bench.core.usermodels import load_callable
from bench.core.version import ADVBENCH_VERSION
from bench.records import CellResult
from bench.rows import attack_run_id
from bench.runner import RunOptions
from bench.worker import Worker, run_group

log = logging.getLogger(__name__)

Outcome = tuple[Cell, "CellResult | BaseException"]
GroupTask = Callable[[SweepConfig, RunOptions, str, list[Cell], PieceStore | None],
                     list[CellResult]]
Claim = Callable[[list[Cell]], list[Cell]]
Retried = Callable[[list[Cell], str], None]
PARTIAL = "partial"
"""The results directory's folder of checkpoints of unfinished attack runs."""


def partial_dir(options: RunOptions) -> PieceDir:
    return PieceDir(Path(options.out).resolve() / PARTIAL)


def _no_report(cells: list[Cell], reason: str) -> None:
    pass

CHUNK = 4
"""Most cells one pool or Ray task takes (and claims) at a time."""


class Executor(Protocol):
    def run(self, groups: list[list[Cell]], run_id: str, claim: Claim,
            retried: Retried = _no_report) -> Iterator[Outcome]: ...

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

    def run(self, groups: list[list[Cell]], run_id: str, claim: Claim,
            retried: Retried = _no_report) -> Iterator[Outcome]:
        worker = Worker(self.config, self.options, run_id, partial_dir(self.options))
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
           claim: Claim, slots: int, retried: Retried) -> Iterator[Outcome]:
    """Claim and submit chunks of cells as tasks, at most ``slots`` in flight; rerun a failed
    task up to ``retries`` times (telling ``retried`` why), then report its cells as failed.
    ``done`` waits for finished handles, ``result`` reads (or raises) one."""
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
                    reason = _reason(exc)
                    log.warning("task of %d cell(s) failed (%s); retry %d of %d",
                                len(group), reason, attempt + 1, retries)
                    retried(group, f"attempt {attempt + 1} failed: {reason}")
                    pending[submit(group)] = (group, attempt + 1)
                    continue
                yield from ((cell, exc) for cell in group)
                continue
            yield from zip(group, results)
        refill()


def _reason(exc: BaseException) -> str:
    """An error in one line: its type and first line (a Ray error's own type, not the task's
    traceback)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


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

    def run(self, groups: list[list[Cell]], run_id: str, claim: Claim,
            retried: Retried = _no_report) -> Iterator[Outcome]:
        options, pieces = self.options, partial_dir(self.options)

        def submit(group: list[Cell]) -> Future[list[CellResult]]:
            return self.pool.submit(self.task, self.config, options, run_id, group, pieces)

        def done(handles: list[Any]) -> list[Any]:
            return list(wait(handles, return_when=FIRST_COMPLETED).done)

        yield from _drive(submit, done, lambda f: f.result(), groups, self.options.retries,
                          claim, self.workers, retried)

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


class RayPieces:
    """:class:`bench.core.resume.PieceStore` through a Ray actor of the :class:`PieceDir` of
    the sweep's ``partial/`` folder, placed on the driver's node, for workers on any node."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def load(self, key: str) -> Piece | None:
        import ray

        return cast("Piece | None", ray.get(self.handle.load.remote(key)))

    def save(self, key: str, piece: Piece) -> None:
        import ray

        ray.get(self.handle.save.remote(key, piece))

    def drop(self, key: str) -> None:
        import ray

        ray.get(self.handle.drop.remote(key))


def missing_here(config: SweepConfig) -> list[str]:
    """What this machine lacks to run ``config``'s cells: a data set root, a user model's
    weights file or module (each named)."""
    missing = []
    for name in dict.fromkeys([*config.datasets, *filter(None, [config.train_dataset])]):
        _, sep, where = name.partition(":")
        root = where.split("?", 1)[0]  # imagefolder:<dir>?size=32
        if sep and not Path(root).expanduser().exists():
            missing.append(f"data root {root} ({name})")
    for model in config.models:
        if model.weights is not None and not Path(model.weights).is_file():
            missing.append(f"weights {model.weights} of model {model.name!r}")
        for spec in (model.factory, model.preprocess, model.bpda):
            if spec and spec != "identity":
                try:
                    load_callable(model.name, spec, model.base_dir)
                except BadInput:
                    missing.append(f"module {spec.partition(':')[0]!r} of model "
                                   f"{model.name!r} (not importable from {model.base_dir} or "
                                   f"the environment)")
    return missing


def node_facts(config: SweepConfig) -> tuple[str, str, list[str]]:
    """(node, advbench version, what it lacks to run ``config``): a Ray node's answer to the
    driver's check before the first cell."""
    return node_name(), ADVBENCH_VERSION, missing_here(config)


FORWARDED_ENV = "ADVBENCH_"
"""Environment variables the driver passes on to Ray tasks (cache folder, test hooks)."""


class RayExecutor:
    """One Ray task per chunk of cells (``num_gpus=1`` when the sweep runs on CUDA); a failed
    task (an error, a lost worker or node) is rerun by the driver up to ``retries`` times on
    any node, and each rerun is reported. Before the first cell every node that can run a task
    is asked for its advbench version and what it lacks (:func:`node_facts`)."""

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
            env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
            try:
                ray.init(address=None if address == "local" else address,
                         include_dashboard=False, log_to_driver=False,
                         ignore_reinit_error=True, runtime_env={"env_vars": env})
            except ConnectionError as exc:
                raise BadInput(f"cannot reach a Ray cluster at {address!r}: {exc}") from None
        try:
            device = options.device or config.device
            gpus = device.startswith("cuda") or (
                device == "auto" and ray.cluster_resources().get("GPU", 0) > 0)
            resource = "GPU" if gpus else "CPU"
            check_nodes(ray, config, resource)
            self.remote = ray.remote(num_gpus=1 if gpus else 0, max_retries=0)(task)
            self.config, self.options = config, options
            resources = ray.cluster_resources()
            self.slots = max(1, int(resources.get(resource, 1)))
            here = ray.get_runtime_context().get_node_id()
            server = ray.remote(num_cpus=0)(PieceDir).options(
                scheduling_strategy=_on_node(here)).remote(partial_dir(options).root)
            self.pieces = RayPieces(server)
        except BaseException:
            self.close()
            raise

    def run(self, groups: list[list[Cell]], run_id: str, claim: Claim,
            retried: Retried = _no_report) -> Iterator[Outcome]:
        ray = self.ray
        options = self.options

        def submit(group: list[Cell]) -> Any:
            return self.remote.remote(self.config, options, run_id, group, self.pieces)

        def done(handles: list[Any]) -> list[Any]:
            ready, _ = ray.wait(handles, num_returns=1)
            return ready

        yield from _drive(submit, done, ray.get, groups, retries=options.retries, claim=claim,
                          slots=self.slots, retried=retried)

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


def _on_node(node_id: str) -> Any:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)


NODE_CHECK_S = 120.0


def check_nodes(ray: Any, config: SweepConfig, resource: str) -> None:
    """:class:`BadInput` naming the first node (of those with ``resource`` to run a task) whose
    advbench version differs from the driver's or that lacks what ``config`` needs."""
    nodes = [n for n in ray.nodes() if n.get("Alive") and n["Resources"].get(resource, 0) > 0]
    if not nodes:
        raise BadInput(f"the Ray cluster has no live node with a {resource} to run cells on")
    probe = ray.remote(num_cpus=0, max_retries=1)(node_facts)
    handles = [probe.options(scheduling_strategy=_on_node(n["NodeID"])).remote(config)
               for n in nodes]
    try:
        answers = ray.get(handles, timeout=NODE_CHECK_S)
    except Exception as exc:  # noqa: BLE001 - a node that cannot even import advbench
        raise BadInput(f"a Ray node could not run advbench's node check ({_reason(exc)}); "
                       f"install advbench (and its dependencies) on every node") from None
    for node, (name, version, missing) in zip(nodes, answers, strict=True):
        where = f"Ray node {name} ({node['NodeManagerAddress']})"
        if version != ADVBENCH_VERSION:
            raise BadInput(f"{where} runs advbench {version}, this driver {ADVBENCH_VERSION}: "
                           f"install the same version on every node")
        if missing:
            raise BadInput(f"{where} lacks {'; '.join(missing)}: every node needs the data "
                           f"and the models' files and modules at the same paths")


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


__all__ = ["CHUNK", "PARTIAL", "chunks", "Executor", "InProcess", "LocalPool", "RayExecutor",
           "check_nodes", "make_executor", "missing_here", "node_facts", "partial_dir"]
