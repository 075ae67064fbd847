"""Leases between sweeps that are really on different machines as far as they can tell: each
sweep runs in its own UTS and pid namespace (``unshare --uts --pid --fork --mount-proc``, as
root), with a host name of its own and its own pid 1, and all of them share one results
directory. Whatever happens to a holder (paused, killed, or two sweeps racing to take its
lease over after killing it), every cell is stored once and no stored cell loses its samples file.

The unit tests at the end check the judgement those sweeps rely on: a pid is only read as dead
in the namespace it belongs to."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from bench.config import expand_cells, parse_config
from bench.core.hooks import HOLD_ENV
from leaderboards.leases import dead_here, identity
from tests.bench.test_sweep import EPS, QUICK, ROOT, assert_store_whole

TTL = "3"


def _namespaces_available() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "--uts", "--pid", "--fork", "--mount-proc", "true"],
                          capture_output=True).returncode == 0


needs_namespaces = pytest.mark.skipif(not _namespaces_available(),
                                      reason="needs root and unshare (CI runs as root)")


def sweep_in_namespace(host: str, config: Path, out: Path, cache: Path,
                       hold: Path | None = None) -> subprocess.Popen[str]:
    """``advbench run`` in new UTS and pid namespaces with host name ``host``, in a session of
    its own (so a signal to its group reaches the sweep inside)."""
    env = {**os.environ, "ADVBENCH_CACHE": str(cache)}
    env.pop(HOLD_ENV, None)
    if hold is not None:
        env[HOLD_ENV] = f"cell:{first_cell(config)}@{hold}"
    command = ["unshare", "--uts", "--pid", "--fork", "--mount-proc", "--", "sh", "-c",
               'hostname "$0" && exec "$@"', host, sys.executable, "-m", "bench", "run",
               str(config), "--out", str(out), "--no-progress", "--claim-ttl", TTL]
    return subprocess.Popen(command, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)


def first_cell(config: Path) -> str:
    return expand_cells(parse_config(tomllib.loads(config.read_text())))[0].cell_id


def held_sweep(tmp_path: Path, cache: Path) -> tuple[subprocess.Popen[str], Path, Path, str]:
    """Sweep A, held inside its first cell: (process, config, results, A's claim of it)."""
    config = tmp_path / "quick.toml"
    config.write_text(QUICK)
    out, hold = tmp_path / "results", tmp_path / "hold"
    hold.mkdir()
    a = sweep_in_namespace("sweep-a", config, out, cache, hold)
    deadline = time.monotonic() + 180
    while not (hold / "held").exists():
        assert a.poll() is None and time.monotonic() < deadline, a.communicate()
        time.sleep(0.05)
    claim = json.loads((out / "claims" / first_cell(config)).read_text())
    assert claim["host"] == "sweep-a" and claim["pid"] == 1  # its own namespaces
    return a, config, out, claim["run_id"]


def finish(proc: subprocess.Popen[str]) -> str:
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    return stdout


def stored_by(out: Path, cell_id: str) -> str:
    return str(pq.read_table(out / "summary" / f"{cell_id}.parquet")["run_id"][0].as_py())


@needs_namespaces
def test_a_paused_holder_in_another_namespace(trained_lenet: Any, cache_dir: Path,
                                              tmp_path: Path) -> None:
    """A is paused (SIGSTOP) inside its first cell; B, on another "host" whose pid 1 is B
    itself, takes A's lease over only once it went unrenewed for the TTL, and stores every
    cell. A, woken, finishes its cell and stores nothing."""
    a, config, out, run_a = held_sweep(tmp_path, cache_dir)
    os.killpg(a.pid, signal.SIGSTOP)
    try:
        b = sweep_in_namespace("sweep-b", config, out, cache_dir)
        assert "12 cell(s) run" in finish(b)
    finally:
        os.killpg(a.pid, signal.SIGCONT)
        (tmp_path / "hold" / "release").touch()
    said = finish(a)
    assert "0 cell(s) run" in said and "1 taken over by another sweep" in said, said
    assert len(assert_store_whole(out)) == len(EPS)
    assert stored_by(out, first_cell(config)) != run_a


@needs_namespaces
def test_two_sweeps_racing_for_a_killed_holders_cells(trained_lenet: Any, cache_dir: Path,
                                                      tmp_path: Path) -> None:
    """A is killed inside its first cell; B and C, each in namespaces of its own, start
    together on the same results. Neither can tell from A's pid whether it lives, so A's cell
    is taken over once its lease went unrenewed for the TTL; every cell is stored exactly
    once, between them."""
    a, config, out, run_a = held_sweep(tmp_path, cache_dir)
    os.killpg(a.pid, signal.SIGKILL)
    a.communicate(timeout=60)
    started = time.monotonic()
    b, c = (sweep_in_namespace(host, config, out, cache_dir) for host in ("sweep-b", "sweep-c"))
    said = [finish(b), finish(c)]
    assert time.monotonic() - started >= float(TTL)
    run = [int(s.split(" cell(s) run")[0].split()[-1]) for s in said]
    assert sum(run) == len(EPS), said
    assert len(assert_store_whole(out)) == len(EPS)
    assert stored_by(out, first_cell(config)) != run_a


def test_a_pid_is_read_as_dead_only_in_its_own_namespace() -> None:
    gone = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout)
    me = identity()
    assert dead_here({**me, "pid": gone})
    assert not dead_here({**me, "pid": gone, "pid_ns": "pid:[1]"})  # another namespace
    assert not dead_here({**me, "pid": gone, "host": "elsewhere"})
    assert not dead_here({**me, "pid": gone, "boot": "another-boot"})
    assert not dead_here(me)


def test_a_reused_pid_is_read_as_a_dead_holder() -> None:
    """The holder's pid now belongs to a process started at another time: the holder is
    gone."""
    me = identity()
    assert dead_here({**me, "started": str(int(me["started"]) - 1)})
