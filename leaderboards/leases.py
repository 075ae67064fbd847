"""Leases on cells: which sweep computes a cell, held while it works and fenced when it stores.

A claim file ``claims/<cell_id>`` holds its holder's identity, a random token, a fence number
and a renewal counter. The fence grows with every new holder of a cell: one more than the last
claim's and than the fence the cell's stored result was written with. Every change of a claim
(taking it, renewing it, taking it over, releasing it) and every commit of a result happens
while holding the cell's lock ``claims/.<cell_id>.lock`` (created exclusively), so a takeover
can never fall between a holder's check and its write (Kleppmann's fencing tokens, "How to do
distributed locking", 2016: a writer whose lease was taken over is refused at the store).

A lease may be taken over when its holder is known dead, or when it has not changed for
``ttl`` seconds of the watcher's own monotonic clock (machines' clocks are never compared).
"Known dead" needs the holder's process to be one this process can see: the same host name,
kernel boot and pid namespace, and then either no process of that pid or one started at
another time (a reused pid). A holder in another container or namespace is never judged dead
by its pid; only its silence expires it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

LOCK_WAIT_S = 5.0
"""How long a claim or a commit waits for a cell's lock that another process holds."""
LOCK_STALE_S = 30.0
"""A cell's lock unchanged for this long (or ``ttl``, if longer) was left by a process that
stopped inside its few milliseconds of work; it is removed. A holder paused that long inside
them is the one case the lock does not cover."""


class LeaseLost(Exception):
    """This process's lease of a cell is no longer the current one: it must not store."""


@cache
def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _started(pid: int) -> str | None:
    """The start time (clock ticks after boot) of process ``pid`` as this process sees it;
    None when there is no such process (or no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def identity() -> dict[str, Any]:
    """Who this process is, as far as another process can check it is still alive."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "boot": _boot_id(),
            "pid_ns": _pid_namespace(), "started": _started(pid)}


def dead_here(holder: Mapping[str, Any]) -> bool:
    """Whether ``holder`` is a process this one can see and that no longer runs."""
    me = identity()
    if any(holder.get(key) != me[key] for key in ("host", "boot", "pid_ns")):
        return False  # another machine, boot or pid namespace: its pid means nothing here
    try:
        pid = int(holder["pid"])
    except (KeyError, ValueError, TypeError):
        return False
    if me["pid_ns"] is None:  # no /proc: the signal check is all there is
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except (PermissionError, OverflowError):
            return False
        return False
    started = _started(pid)
    return started is None or (holder.get("started") is not None
                               and started != holder["started"])


def read_text(path: Path) -> str | None:
    """A claim or lock file's text; None when there is none."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        return "<unreadable>"  # watched like any other claim: it expires unless it changes


def parse_holder(text: str | None) -> dict[str, Any] | None:
    try:
        holder = json.loads(text) if text is not None else None
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


class Leases:
    """The leases of the cells of one results directory (``folder`` = its ``claims/``).
    ``ttl``: seconds after which an unrenewed lease of another process may be taken over
    (never, by default). ``stored_fence(cell_id)``: the fence the cell's stored result was
    written with (0 when none)."""

    def __init__(self, folder: Path, ttl: float, stored_fence: Callable[[str], int]) -> None:
        self.folder = folder
        self.ttl = ttl
        self.stored_fence = stored_fence
        self._mine: dict[str, tuple[str, int]] = {}  # cell_id -> (token, fence) of our lease
        self._seen: dict[str, tuple[str, float]] = {}  # name -> (text, first seen)

    def path(self, cell_id: str) -> Path:
        return self.folder / cell_id

    @contextlib.contextmanager
    def locked(self, cell_id: str, wait: float = LOCK_WAIT_S) -> Iterator[bool]:
        """Hold ``cell_id``'s lock (yields True), or yield False when another process held it
        for ``wait`` seconds. A lock left by a dead process, or unchanged for ``ttl``, is
        removed."""
        self.folder.mkdir(parents=True, exist_ok=True)
        lock = self.folder / f".{cell_id}.lock"
        deadline = time.monotonic() + wait
        while True:
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                break
            except FileExistsError:
                text = read_text(lock)
                if text is not None and self._expired(lock.name, text,
                                                      max(self.ttl, LOCK_STALE_S)):
                    lock.unlink(missing_ok=True)
                    continue
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.01)
        try:
            os.write(fd, json.dumps({**identity(), "token": uuid.uuid4().hex}).encode())
            yield True
        finally:
            os.close(fd)
            lock.unlink(missing_ok=True)

    def claim(self, cell_id: str, run_id: str) -> bool:
        """Take ``cell_id``'s lease for this process; False while another holder's lease is
        live (:meth:`_expired`) or its lock stays busy."""
        with self.locked(cell_id) as ok:
            if not ok:
                return False
            path = self.path(cell_id)
            text = read_text(path)
            if text is not None and not self._expired(cell_id, text):
                return False
            previous = parse_holder(text) or {}
            fence = max(int(previous.get("fence", 0)), self.stored_fence(cell_id)) + 1
            token = uuid.uuid4().hex
            self._write(path, {**identity(), "run_id": run_id, "token": token, "fence": fence,
                               "renewals": 0})
            self._mine[cell_id] = (token, fence)
            self._seen.pop(cell_id, None)
            return True

    def _write(self, path: Path, holder: Mapping[str, Any]) -> None:
        tmp = self.folder / f".{path.name}.{uuid.uuid4().hex}.tmp"
        tmp.write_text(json.dumps(holder))
        os.replace(tmp, path)

    def _current(self, cell_id: str) -> dict[str, Any] | None:
        """The claim of ``cell_id`` when it is this process's lease."""
        holder = parse_holder(read_text(self.path(cell_id)))
        mine = self._mine.get(cell_id)
        if holder is None or mine is None or holder.get("token") != mine[0]:
            return None
        return holder

    def holds(self, cell_id: str) -> bool:
        """Whether this process still holds ``cell_id``'s lease."""
        return self._current(cell_id) is not None

    def fence(self, cell_id: str) -> int | None:
        """The fence of this process's lease of ``cell_id``."""
        mine = self._mine.get(cell_id)
        return None if mine is None else mine[1]

    @contextlib.contextmanager
    def fenced(self, cell_id: str) -> Iterator[int]:
        """Hold ``cell_id``'s lock while this process's lease is the current one and no result
        of a later fence is stored; yields the fence to store with. :class:`LeaseLost`
        otherwise (nothing may be written)."""
        with self.locked(cell_id, wait=max(LOCK_WAIT_S, min(self.ttl, 60.0))) as ok:
            fence = self.fence(cell_id)
            if not ok or fence is None or self._current(cell_id) is None \
                    or self.stored_fence(cell_id) >= fence:
                raise LeaseLost(f"cell {cell_id}: this sweep's lease is no longer current")
            yield fence

    def renew(self, cell_ids: Iterable[str]) -> list[str]:
        """Renew the leases of ``cell_ids`` (the counter in each claim file changes, so
        watchers see it live); returns those another sweep has taken over meanwhile. A cell
        whose lock is busy is renewed at the next call."""
        lost = []
        for cell_id in cell_ids:
            with self.locked(cell_id, wait=0.2) as ok:
                if not ok:
                    continue
                holder = self._current(cell_id)
                if holder is None:
                    lost.append(cell_id)
                    continue
                holder["renewals"] = int(holder.get("renewals", 0)) + 1
                self._write(self.path(cell_id), holder)
        return lost

    def release(self, cell_id: str) -> None:
        """Drop this process's lease of ``cell_id`` (one another sweep took over stays)."""
        with self.locked(cell_id) as ok:
            if ok and self.holds(cell_id):
                self.path(cell_id).unlink(missing_ok=True)
        self._mine.pop(cell_id, None)

    def _expired(self, name: str, text: str, ttl: float | None = None) -> bool:
        """Whether the claim (or lock) reading ``text`` may be taken over: its holder is
        :func:`dead_here`, or it has not changed for ``ttl`` (default: the leases') seconds of
        this process's clock."""
        ttl = self.ttl if ttl is None else ttl
        holder = parse_holder(text)
        if holder is not None and dead_here(holder):
            return True
        now = time.monotonic()
        seen = self._seen.get(name)
        if seen is None or seen[0] != text:
            self._seen[name] = (text, now)
            return ttl <= 0
        return now - seen[1] >= ttl

    def claimed(self, cell_id: str) -> bool:
        """Whether a live lease holds ``cell_id``."""
        text = read_text(self.path(cell_id))
        return text is not None and not self._expired(cell_id, text)

    def live_holders(self) -> set[int]:
        """The pids of the live processes this one can see that hold leases here."""
        me = identity()
        pids = set()
        for path in self.folder.glob("*") if self.folder.is_dir() else ():
            if path.name.startswith("."):
                continue
            holder = parse_holder(read_text(path))
            if holder is not None and all(holder.get(k) == me[k]
                                          for k in ("host", "boot", "pid_ns")) \
                    and not dead_here(holder):
                pids.add(int(holder.get("pid", -1)))
        return pids


__all__ = ["LeaseLost", "Leases", "dead_here", "identity"]
