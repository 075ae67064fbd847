"""Sweeps on a real multi-node Ray cluster on this machine (a head and two worker nodes, each its
own raylet: ``ray.cluster_utils.Cluster``): cells spread over the nodes and record them; a node
removed while it runs a cascade; the driver killed mid-cascade; nodes that cannot run the sweep
refused before any cell."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from bench.config import parse_config
from bench.core.errors import BadInput
from bench.core.hooks import HOLD_ENV
from bench.runner import RunOptions
from bench.sweep import run_sweep
from leaderboards import ResultStore
from tests.bench.test_sweep import ROOT, _default_interrupt, assert_store_whole

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")

PGD_EPS = [round(0.02 * i, 2) for i in range(1, 9)]
CONFIG = f"""
[sweep]
name = "cluster"
dataset = "mnist5k"
n_eval = 60
batch_size = 60

[[targets]]
model = "lenet"

[[attacks]]
name = "pgd"
eps = {PGD_EPS}
params = {{ steps = 3, step_size = 0.01, early_stop = false }}

[[attacks]]
name = "standard"
eps = [0.1]
params = {{ steps = 5, target_classes = 2, queries = 40 }}
"""
CELLS = len(PGD_EPS) + 5  # the cascade's row and its four members' rows
NODE = {"num_cpus": 1, "object_store_memory": 80 * 2**20}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A head that runs no cells and two one-CPU worker nodes."""
    c = cluster_utils.Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "object_store_memory": 80 * 2**20, "include_dashboard": False})
    c.workers = [c.add_node(**NODE) for _ in range(2)]
    c.wait_for_nodes()
    yield c
    if ray.is_initialized():
        ray.shutdown()
    c.shutdown()


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(CONFIG)
    return path


def start_driver(config: Path, out: Path, cache: Path, address: str, **env: str
                 ) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench", "run", str(config), "--out", str(out), "--no-progress",
         "--executor", "ray", "--address", address, "--cache-dir", str(cache)],
        cwd=ROOT, env={**os.environ, **env}, text=True, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, preexec_fn=_default_interrupt)


def wait_held(hold: Path, proc: subprocess.Popen[str], timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while not (hold / "held").exists():
        if proc.poll() is not None:
            raise AssertionError(f"driver ended before the hold: {proc.communicate()}")
        assert time.monotonic() < deadline, "no worker reached the hold point"
        time.sleep(0.1)
    time.sleep(0.2)  # the marker is written whole right after it is created
    return dict(json.loads((hold / "held").read_text()))


@pytest.fixture(scope="module")
def in_process(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path,
               trained_lenet: Any) -> pd.DataFrame:
    """The same sweep's samples in this process, on one thread as each one-CPU Ray worker
    runs (computed once for the module's tests)."""
    out = tmp_path_factory.mktemp("in-process")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_sweep(parse_config(tomllib.loads(CONFIG)),
                  RunOptions(out=out, cache_dir=cache_dir, progress=False, device="cpu"))
    finally:
        torch.set_num_threads(threads)
    return ResultStore(out).samples()


def same_samples(a: pd.DataFrame, b: pd.DataFrame) -> None:
    key = ["cell_id", "sample_idx"]
    a, b = (t.sort_values(key).reset_index(drop=True) for t in (a, b))
    pd.testing.assert_frame_equal(a, b)


def test_a_node_lost_mid_cascade_costs_one_member_and_nothing_else(
        cluster: Any, config_path: Path, in_process: pd.DataFrame, cache_dir: Path,
        tmp_path: Path) -> None:
    """The cascade's task is held on its node right after APGD-CE's checkpoint; that node is
    removed. The driver reruns the task on the other node, which resumes after APGD-CE: every
    cell is stored once, equal per sample to an in-process run; the report names the retries."""
    hold, out = tmp_path / "hold", tmp_path / "results"
    hold.mkdir()
    started = time.monotonic()
    driver = start_driver(config_path, out, cache_dir, cluster.address,
                          **{HOLD_ENV: f"checkpoint:apgd-ce@{hold}"})
    held = wait_held(hold, driver)
    held_s = time.monotonic() - started
    node_id = held["node"].rsplit(":", 1)[1]
    doomed = [n for n in cluster.workers if n.node_id.startswith(node_id)]
    assert len(doomed) == 1, (held, [n.node_id for n in cluster.workers])
    assert (out / "partial").is_dir() and list((out / "partial").glob("*.safetensors"))
    cluster.remove_node(doomed[0])
    cluster.workers.remove(doomed[0])
    try:
        stdout, stderr = driver.communicate(timeout=300)
        wall = time.monotonic() - started
    finally:
        cluster.workers.append(cluster.add_node(**NODE))  # the next test has two nodes again
    assert driver.returncode == 0, stderr
    assert f"{CELLS} cell(s) run" in stdout and "5 retried" in stdout, stdout
    retried = [line for line in stderr.splitlines() if " retried: attempt 1 failed" in line]
    assert len(retried) == 5, stderr
    assert len(assert_store_whole(out)) == CELLS
    assert not (out / "partial").exists() and not (out / "claims").exists()
    summary = ResultStore(out).summary()
    nodes = summary.set_index("cell_id")["node"]
    cascade = summary[summary["attack"] == "standard"]
    assert nodes.str.rsplit(":", n=1).str[1].nunique() == 2  # the cells spread over both nodes
    assert not cascade["node"].str.endswith(node_id).any()  # none stored from the lost node
    assert cascade["decision"].str.contains(
        "resumed from a checkpoint after 1 of 4 members", regex=False).all()  # members' too
    per_node = nodes.str.rsplit(":", n=1).str[1].value_counts().tolist()
    print(f"\ncluster: {CELLS} cells stored once, per node {per_node}, 5 retried after the node "
          f"was removed {held_s:.0f} s in; driver wall {wall:.0f} s")
    same_samples(ResultStore(out).samples(), in_process)


def test_a_killed_driver_resumes_from_what_it_stored_and_checkpointed(
        cluster: Any, config_path: Path, in_process: pd.DataFrame, cache_dir: Path,
        tmp_path: Path) -> None:
    """The driver is killed (SIGKILL) while the cascade's task waits after APGD-T's checkpoint;
    a new driver skips the stored cells, resumes the cascade after its second member, and ends
    with the rows of an uninterrupted run."""
    hold, out = tmp_path / "hold", tmp_path / "results"
    hold.mkdir()
    driver = start_driver(config_path, out, cache_dir, cluster.address,
                          **{HOLD_ENV: f"checkpoint:apgd-t@{hold}"})
    wait_held(hold, driver)
    driver.send_signal(signal.SIGKILL)
    driver.communicate(timeout=60)
    (hold / "release").touch()  # the orphaned task may go on: it cannot store anything
    stored = len(assert_store_whole(out, killed=True))
    assert stored < CELLS
    again = start_driver(config_path, out, cache_dir, cluster.address)
    stdout, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stderr
    assert f"{CELLS - stored} cell(s) run, {stored} already stored" in stdout, stdout
    assert len(assert_store_whole(out)) == CELLS
    cascade = ResultStore(out).summary().query("attack == 'standard'")
    assert cascade["decision"].str.contains(
        "resumed from a checkpoint after 2 of 4 members (apgd-ce, apgd-t)", regex=False).all()
    same_samples(ResultStore(out).samples(), in_process)


def test_nodes_that_cannot_run_the_sweep_are_refused_before_any_cell(
        cluster: Any, tmp_path: Path, trained_lenet: Any, cache_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    options = RunOptions(out=tmp_path / "r", cache_dir=cache_dir, progress=False, device="cpu",
                         executor="ray", address=cluster.address)
    config = parse_config(tomllib.loads(CONFIG))
    monkeypatch.setattr("bench.executors.ADVBENCH_VERSION", "0.0.1-driver")
    with pytest.raises(BadInput, match=r"Ray node \S+ \(\S+\) runs advbench .+, this driver "
                                       r"0\.0\.1-driver: install the same version"):
        run_sweep(config, options)
    assert not (tmp_path / "r").exists()
    monkeypatch.undo()
    # a model module only the driver can import (on its sys.path, not beside the config)
    lib = tmp_path / "driver_only"
    lib.mkdir()
    (lib / "driver_only_net.py").write_text(
        "import torch.nn as nn\n"
        "def Net():\n    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))\n")
    monkeypatch.syspath_prepend(str(lib))
    model = ('\n[[models]]\nname = "mine"\nfactory = "driver_only_net:Net"\n'
             'input_shape = [1, 28, 28]\nnum_classes = 10\n')
    text = CONFIG.replace('model = "lenet"', 'model = "mine"') + model
    (tmp_path / "conf").mkdir()
    user = parse_config(tomllib.loads(text), base_dir=tmp_path / "conf")
    with pytest.raises(BadInput, match=r"Ray node \S+ \(\S+\) lacks module 'driver_only_net' "
                                       r"of model 'mine'"):
        run_sweep(user, options)
    assert not (tmp_path / "r").exists()
