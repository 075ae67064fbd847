"""Claims are leases: taken over when their holder died or stopped renewing them, whatever the
machines' clocks say; never twice; a holder that lost its lease stores nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from bench.config import expand_cells, parse_config
from bench.core.hooks import HOLD_ENV
from bench.runner import RunOptions
from bench.sweep import run_sweep
from leaderboards import ResultStore
from leaderboards.leases import LeaseLost
from tests.bench.test_sweep import EPS, QUICK, assert_store_whole, start
from tests.conftest import sample_values, summary_values

TTL = 0.4


def foreign_claim(root: Path, cell_id: str, **holder: Any) -> Path:
    path = root / "claims" / cell_id
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "run_id": "r0", "token": "t0",
                                "renewals": 0, **holder}))
    return path


def test_a_dead_local_holders_claim_is_taken_at_once(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)  # no ttl: only a dead process's claim can be taken
    assert store.leases.claim("c1", "r1") and store.leases.holds("c1")
    assert not ResultStore(tmp_path).leases.claim("c1", "r2")  # this live process holds it
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout)
    holder = json.loads((tmp_path / "claims" / "c1").read_text())
    (tmp_path / "claims" / "c1").write_text(json.dumps({**holder, "pid": dead}))
    other = ResultStore(tmp_path)
    assert other.leases.claim("c1", "r3") and other.leases.holds("c1")
    assert not store.leases.holds("c1")
    store.leases.release("c1")  # a lost lease is not released by its old holder
    assert (tmp_path / "claims" / "c1").exists()
    other.leases.release("c1")
    assert not (tmp_path / "claims" / "c1").exists()


def test_another_hosts_claim_is_taken_once_its_lease_went_unrenewed(tmp_path: Path) -> None:
    foreign_claim(tmp_path, "c1")
    store = ResultStore(tmp_path, claim_ttl=TTL)
    assert not store.leases.claim("c1", "r1")  # first sight: the lease may be live
    assert store.leases.claimed("c1")
    time.sleep(TTL * 1.2)
    assert not store.leases.claimed("c1")
    assert store.leases.claim("c1", "r1") and store.leases.holds("c1")
    assert json.loads((tmp_path / "claims" / "c1").read_text())["run_id"] == "r1"


def test_a_renewed_lease_is_never_taken_whatever_the_clocks_say(tmp_path: Path) -> None:
    holder = ResultStore(tmp_path, claim_ttl=TTL)
    assert holder.leases.claim("c1", "r1")
    path = tmp_path / "claims" / "c1"
    watcher = ResultStore(tmp_path, claim_ttl=TTL)
    deadline = time.monotonic() + 4 * TTL
    while time.monotonic() < deadline:
        assert holder.leases.renew(["c1"]) == []
        os.utime(path, (0, 0))  # a holder whose clock says 1970: its file times mean nothing
        assert not watcher.leases.claim("c1", "r2")
        time.sleep(TTL / 4)
    time.sleep(TTL * 1.2)  # the holder stops renewing (paused): now the lease expires
    assert watcher.leases.claim("c1", "r2")
    assert holder.leases.renew(["c1"]) == ["c1"] and not holder.leases.holds("c1")


@pytest.mark.parametrize("round_", range(5))
def test_takers_racing_for_one_expired_claim_get_it_once(tmp_path: Path, round_: int) -> None:
    foreign_claim(tmp_path, "c1")
    stores = [ResultStore(tmp_path, claim_ttl=TTL) for _ in range(8)]
    assert not any(s.leases.claim("c1", f"r{i}") for i, s in enumerate(stores))
    time.sleep(TTL * 1.2)
    barrier = threading.Barrier(len(stores))
    won: list[int] = []

    def take(i: int) -> None:
        barrier.wait()
        if stores[i].leases.claim("c1", f"r{i}"):
            won.append(i)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1, won
    assert [s.leases.holds("c1") for s in stores].count(True) == 1
    assert not [p for p in (tmp_path / "claims").iterdir() if p.name != "c1"]


def test_a_paused_sweep_whose_lease_expired_stores_nothing_twice(
        trained_lenet: Any, cache_dir: Path, tmp_path: Path) -> None:
    """Sweep A is held inside its first cell, then stopped (SIGSTOP: its renewals stop too);
    sweep B runs the other cells, waits, takes the first over once A's lease is ``ttl`` old,
    and stores it. A, woken, finishes the cell but stores nothing: one row per cell, B's."""
    config_path = tmp_path / "quick.toml"
    config_path.write_text(QUICK)
    config = parse_config(tomllib.loads(QUICK))
    first = expand_cells(config)[0]
    hold = tmp_path / "hold"
    hold.mkdir()
    out = tmp_path / "results"
    os.environ[HOLD_ENV] = f"cell:{first.cell_id}@{hold}"
    try:
        a = start(config_path, out, cache_dir, "--claim-ttl", "1.5")
    finally:
        del os.environ[HOLD_ENV]
    try:
        deadline = time.monotonic() + 120
        while not (hold / "held").exists():
            assert a.poll() is None and time.monotonic() < deadline, a.communicate()
            time.sleep(0.05)
        a.send_signal(signal.SIGSTOP)
        report = run_sweep(config, RunOptions(out=out, cache_dir=cache_dir, progress=False,
                                              device="cpu", claim_ttl=1.5))
        assert len(report.written) == len(EPS)  # the held cell included, once A's lease expired
    finally:
        a.send_signal(signal.SIGCONT)
        (hold / "release").touch()
    stdout, stderr = a.communicate(timeout=120)
    assert a.returncode == 0, stderr
    assert "0 cell(s) run" in stdout and "1 taken over by another sweep" in stdout, stdout
    assert len(assert_store_whole(out)) == len(EPS)
    row = pq.read_table(out / "summary" / f"{first.cell_id}.parquet")
    assert row["run_id"][0].as_py() == report.run_id


def _cell(store: ResultStore, cell_id: str, run_id: str) -> None:
    """Store a one-sample result of ``cell_id`` from run ``run_id`` under this store's lease."""
    store.write_cell(summary_values(cell_id, run_id), sample_values(cell_id), fenced=True)


def test_a_takeover_during_a_renewal_is_not_undone(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The holder checks its lease, then stalls before it writes the renewal (as a pause
    would); a watcher that judged the lease expired tries to take it over meanwhile. Whoever
    ends up holding the lease holds it alone: a renewal never overwrites a takeover."""
    holder, watcher = (ResultStore(tmp_path, claim_ttl=TTL) for _ in range(2))
    assert holder.leases.claim("c1", "r1")
    assert not watcher.leases.claim("c1", "r2")  # first sight
    time.sleep(TTL * 1.2)  # unrenewed: expired as the watcher sees it
    write = holder.leases._write

    def stalled(path: Path, record: Any) -> None:
        time.sleep(TTL * 1.5)
        write(path, record)

    monkeypatch.setattr(holder.leases, "_write", stalled)
    renewal = threading.Thread(target=holder.leases.renew, args=(["c1"],))
    renewal.start()
    time.sleep(TTL / 4)
    took = watcher.leases.claim("c1", "r2")
    renewal.join()
    assert watcher.leases.holds("c1") == took and holder.leases.holds("c1") != took


def test_a_sweep_whose_lease_was_taken_over_cannot_store(tmp_path: Path) -> None:
    """A's lease expires (no renewals) and B takes it over and stores the cell. A then tries
    to store: refused, its own samples file removed, B's cell untouched."""
    a, b = (ResultStore(tmp_path, claim_ttl=TTL) for _ in range(2))
    assert a.leases.claim("c1", "ra") and not b.leases.claim("c1", "rb")
    time.sleep(TTL * 1.2)
    assert b.leases.claim("c1", "rb")
    assert b.leases.fence("c1") == a.leases.fence("c1") + 1  # type: ignore[operator]
    _cell(b, "c1", "rb")
    with pytest.raises(LeaseLost):
        _cell(a, "c1", "ra")
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["c1-rb.parquet"]
    assert ResultStore(tmp_path).scan().cells == {"c1": "rb"}
    assert b.stored_fence("c1") == b.leases.fence("c1")


def test_fences_only_grow_even_after_a_lease_is_released(tmp_path: Path) -> None:
    """A stores the cell under fence 1 and releases its lease (the claim file is gone); the
    next lease of the cell gets fence 2, from the stored result, and a result stored under an
    older fence can never replace it."""
    a, b = ResultStore(tmp_path), ResultStore(tmp_path)
    assert a.leases.claim("c1", "ra") and a.leases.fence("c1") == 1
    _cell(a, "c1", "ra")
    a.leases.release("c1")
    assert not (tmp_path / "claims" / "c1").exists()
    assert b.leases.claim("c1", "rb") and b.leases.fence("c1") == 2
    _cell(b, "c1", "rb")
    assert b.stored_fence("c1") == 2
    b.leases.release("c1")
    assert a.leases.claim("c1", "ra2") and a.leases.fence("c1") == 3
