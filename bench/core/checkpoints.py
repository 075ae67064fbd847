"""Checkpoint cache: safetensors weights + a JSON card, in a user cache directory.

Each entry lives in ``<cache>/<kind>/<key>/`` (``model.safetensors``, ``card.json``). An entry is
written into a temporary directory and renamed into place in one step, so an interrupted training
never leaves a checkpoint that a later run would trust. Nothing is ever unpickled.

The card records the SHA-256 of the weights file. An entry whose card or weights do not read, or
whose weights no longer match the card (truncated, emptied, overwritten), is moved aside into
``<cache>/quarantine/`` with a warning naming it, and the model is fitted again into a fresh
entry; nothing is deleted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from bench.core.files import temp_dir

log = logging.getLogger(__name__)

ENV_VAR = "ADVBENCH_CACHE"


def resolve_cache_dir(flag: str | os.PathLike[str] | None = None) -> Path:
    """``--cache-dir`` beats ``$ADVBENCH_CACHE`` beats ``$XDG_CACHE_HOME/advbench`` (~/.cache)."""
    if flag:
        return Path(flag).expanduser()
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "advbench"


def config_hash(config: Any) -> str:
    """A stable short hash of a JSON-serialisable config."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def state_sha256(module: torch.nn.Module) -> str:
    """The SHA-256 of a module's parameters and buffers (names, dtypes and bytes, in name
    order): what every result row records as the weights it evaluated."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def state_fingerprint(module: torch.nn.Module) -> str:
    """A short :func:`state_sha256` (keys caches of fitted defenses by the exact base weights
    they were fitted on)."""
    return state_sha256(module)[:20]


WEIGHTS_HASH = "weights_sha256"
"""The card field holding the SHA-256 of ``model.safetensors``."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


BUNDLED = Path(__file__).resolve().parent / "bundled"
"""Checkpoints advbench ships, laid out as a cache (``<kind>/<key>/``): weights it trained with
its own recipes (the quick preset's LeNet), so that the embedded default gives the same
numbers on every CPU. An entry seeds an empty cache the first time its key is asked for."""


class CheckpointCache:
    """Load and atomically store (weights, card) pairs keyed by ``(kind, key)``; an entry
    missing here is seeded from ``bundled`` (:data:`BUNDLED`) when that holds it."""

    def __init__(self, root: Path, bundled: Path | None = BUNDLED) -> None:
        self.root = Path(root)
        self.bundled = bundled

    def entry(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def _seed(self, kind: str, key: str) -> bool:
        """Copy the bundled entry ``(kind, key)`` into the cache (atomically); False if none."""
        source = self.bundled / kind / key if self.bundled else None
        if source is None or not (source / "card.json").is_file():
            return False
        final = self.entry(kind, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_dir(final.parent, f".{key}.")
        try:
            for item in source.iterdir():
                shutil.copyfile(item, tmp / item.name)
            with contextlib.suppress(FileExistsError, OSError):
                os.rename(tmp, final)  # a concurrent seeder's identical copy may be there
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        log.info("seeded %s from the bundled checkpoint %s", final, source)
        return final.exists()

    def load(self, kind: str, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """The entry's (weights, card), or None when there is none (here or bundled) or it is
        damaged (then it is moved into quarantine, see the module doc)."""
        path = self.entry(kind, key)
        if not path.exists() and not self._seed(kind, key):
            return None
        weights, card_path = path / "model.safetensors", path / "card.json"
        try:
            card = json.loads(card_path.read_text())
            if not isinstance(card, dict):
                raise ValueError("the card is not a JSON object")
            expected = card.get(WEIGHTS_HASH)
            if expected is not None and expected != file_sha256(weights):
                raise ValueError("the weights do not match the SHA-256 in the card")
            return load_file(str(weights)), card
        except (OSError, ValueError, SafetensorError) as exc:
            aside = self._quarantine(path)
            log.warning("checkpoint cache entry %s is damaged (%s); moved it to %s and fitting "
                        "again", path, str(exc).splitlines()[0] if str(exc) else exc, aside)
            return None

    def _quarantine(self, path: Path) -> Path:
        target = self.root / "quarantine" / path.parent.name / f"{path.name}.{uuid.uuid4().hex[:8]}"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
        return target

    def save(self, kind: str, key: str, state: dict[str, torch.Tensor], card: dict[str, Any],
             extra_files: dict[str, bytes] | None = None) -> Path:
        final = self.entry(kind, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_dir(final.parent, f".{key}.")
        try:
            tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
            save_file(tensors, str(tmp / "model.safetensors"))
            for name, blob in (extra_files or {}).items():
                (tmp / name).write_bytes(blob)
            card = {**card, WEIGHTS_HASH: file_sha256(tmp / "model.safetensors")}
            (tmp / "card.json").write_text(json.dumps(card, indent=2, sort_keys=True, default=str))
            try:
                os.rename(tmp, final)
            except OSError:
                if not (final / "card.json").is_file():  # not a concurrent writer's finished entry
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return final


M = TypeVar("M")


TRAIN_THREADS = 2
"""Intra-op threads every CPU fit runs with. The order of a parallel reduction follows the thread
count, so a fit on a 2-core laptop and on a 64-core server gives the same weights only if both
use the same count (one LeNet fit: 97.8% with 2 threads, 97.5% with 1)."""


@contextlib.contextmanager
def reproducible(device: torch.device) -> Iterator[None]:
    """Run a fit as reproducibly as torch allows on ``device``: a fixed thread count on the CPU,
    deterministic cuDNN kernels on CUDA; the previous settings are restored after."""
    threads = torch.get_num_threads()
    cudnn = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    try:
        if device.type == "cpu":
            torch.set_num_threads(TRAIN_THREADS)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        yield
    finally:
        torch.set_num_threads(threads)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn


def training_environment(device: torch.device) -> dict[str, Any]:
    """What float results of training depend on besides the seed: the torch build, the device,
    the CPU's vector unit (its kernels round differently) and the intra-op thread count."""
    env: dict[str, Any] = {"torch": torch.__version__, "device": device.type,
                           "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                           "threads": torch.get_num_threads()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def load_or_fit(cache: CheckpointCache, kind: str, config: dict[str, Any], *, seed: int,
                device: torch.device, restore: Callable[[dict[str, torch.Tensor]], M],
                fit: Callable[[str], tuple[M, dict[str, Any]]],
                state: Callable[[M], dict[str, torch.Tensor]],
                extra_files: Callable[[M], dict[str, bytes]] | None = None,
                what: str = "model") -> tuple[M, dict[str, Any]]:
    """The one "load from the cache or fit, then store" of advbench (trained classifiers, GANs,
    fitted defenses).

    The entry's key hashes ``config``. On a hit, ``restore(weights)`` rebuilds the object and
    the stored card comes with it; otherwise ``fit(key)`` returns the object and its card, and
    ``state(obj)`` (plus ``extra_files(obj)``) is stored atomically. Both run with the global
    RNG seeded by ``seed`` and restored afterwards (on ``device`` too, for CUDA).
    """
    key = config_hash(config)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        hit = cache.load(kind, key)
        if hit is not None:
            weights, card = hit
            log.info("loaded %s from %s", what, cache.entry(kind, key))
            return restore(weights), card
        log.info("fitting %s (cache key %s)", what, key)
        with reproducible(device):
            value, card = fit(key)
            card = {**card, "trained_on": training_environment(device)}
    entry = cache.save(kind, key, state(value), card,
                       extra_files=extra_files(value) if extra_files else None)
    # the card as stored (with the weights' hash), so a fit and a later load return the same
    return value, json.loads((entry / "card.json").read_text())
