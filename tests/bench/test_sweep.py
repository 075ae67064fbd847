"""Sweeps at scale, with real processes: resume after kill -9 and Ctrl-C, two sweeps writing into
one directory, --dry-run, zero-cell sweeps, the process-pool executor's retries, and Ray."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from attacks import ATTACKS
from bench.cli import main
from bench.config import expand_cells, parse_config
from bench.executors import LocalPool, missing_here
from bench.runner import RunOptions
from bench.sweep import PAUSE_ENV, estimated_calls, plan_sweep, run_sweep
from bench.worker import run_group
from leaderboards import ResultStore, load
from tests.conftest import small_params

ROOT = Path(__file__).resolve().parents[2]
EPS = [round(0.02 * i, 2) for i in range(1, 13)]
SLOW = f"""
[sweep]
name = "slow"
dataset = "mnist5k"
n_eval = 400
batch_size = 400

[[targets]]
model = "lenet"

[[attacks]]
name = "pgd"
eps = {EPS}
params = {{ steps = 30, step_size = 0.01, early_stop = false }}
"""
QUICK = SLOW.replace("steps = 30", "steps = 3").replace("n_eval = 400", "n_eval = 100")
"""The same cells, cheap: for the executors' tests, which compare results, not timings."""


def start(config: Path, out: Path, cache: Path, *extra: str, pause_after: int | None = None
          ) -> subprocess.Popen[str]:
    env = {**os.environ, "ADVBENCH_CACHE": str(cache)}
    if pause_after is not None:
        env[PAUSE_ENV] = str(pause_after)
    return subprocess.Popen([sys.executable, "-m", "bench", "run", str(config), "--out", str(out),
                             "--no-progress", *extra], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=_default_interrupt)


def _default_interrupt() -> None:
    """The sweep starts as a user's terminal starts it, with Ctrl-C's default disposition: a
    test run launched in the background inherits SIGINT ignored, which would make the
    interruption tests wait for a signal the sweep never sees."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for_cells(out: Path, n: int, proc: subprocess.Popen[str], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(list((out / "summary").glob("*.parquet"))) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"sweep ended early: {proc.communicate()}")
        time.sleep(0.05)
    raise AssertionError("sweep wrote no cells in time")


def assert_store_whole(out: Path, killed: bool = False) -> set[str]:
    """Every visible file reads as whole Parquet; each summary (one file per cell, named by it)
    has its samples and there are no other samples. ``killed``: the writer may have died
    between a cell's samples and its summary, so samples files of cells that have no summary
    are allowed (readers never use them)."""
    summaries = sorted((out / "summary").glob("*.parquet"))
    samples = {p.name for p in (out / "samples").glob("*.parquet")}
    wanted = set()
    for path in summaries:
        table = pq.read_table(path)
        assert table.num_rows == 1 and table["cell_id"][0].as_py() == path.stem
        wanted.add(f"{path.stem}-{table['run_id'][0].as_py()}.parquet")
    stored = {p.stem for p in summaries}
    unnamed = samples - wanted
    assert wanted <= samples
    if killed:
        assert not {name.rsplit("-", 1)[0] for name in unnamed} & stored, unnamed
    else:
        assert not unnamed, unnamed
    for name in samples:
        pq.read_table(out / "samples" / name)
    return stored


SMALL = SLOW.replace("n_eval = 400", "n_eval = 100").replace("steps = 30", "steps = 5")
"""The slow sweep's 12 cells at a fraction of the work: enough where the pause hook, not the
cells' duration, decides what is stored when the process is stopped."""


@pytest.fixture
def slow_config(tmp_path: Path) -> Path:
    path = tmp_path / "slow.toml"
    path.write_text(SLOW)
    return path


@pytest.fixture
def small_config(tmp_path: Path) -> Path:
    path = tmp_path / "small.toml"
    path.write_text(SMALL)
    return path


@pytest.mark.parametrize("sig,code", [(signal.SIGKILL, -signal.SIGKILL),
                                      (signal.SIGINT, 130)])
def test_interrupted_sweep_loses_only_cells_in_flight(sig: int, code: int, trained_lenet: Any,
                                                      cache_dir: Path, small_config: Path,
                                                      tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = start(small_config, out, cache_dir, pause_after=2)  # blocks after its 2nd cell
    wait_for_cells(out, 2, proc)
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    assert proc.returncode == code
    before = assert_store_whole(out, killed=sig == signal.SIGKILL)
    assert len(before) == 2
    if sig == signal.SIGINT:
        assert not (out / "claims").exists() or not list((out / "claims").iterdir())
    again = start(small_config, out, cache_dir)
    stdout, stderr = again.communicate(timeout=600)
    assert again.returncode == 0, stderr
    assert f"{len(EPS) - len(before)} cell(s) run, {len(before)} already stored" in stdout
    after = assert_store_whole(out)
    assert before < after and len(after) == len(EPS)
    assert {c.cell_id for c in expand_cells(parse_config(
        tomllib.loads(SMALL)))} == after


def test_two_sweeps_into_one_directory_store_each_cell_once(trained_lenet: Any, cache_dir: Path,
                                                            tmp_path: Path) -> None:
    # cells of about a second each: long enough that both processes are running while cells
    # remain to be claimed
    config = tmp_path / "racing.toml"
    config.write_text(SLOW.replace("n_eval = 400", "n_eval = 100").replace("steps = 30",
                                                                          "steps = 15"))
    out = tmp_path / "results"
    procs = [start(config, out, cache_dir) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for proc, (_, stderr) in zip(procs, outputs):
        assert proc.returncode == 0, stderr
    assert len(assert_store_whole(out)) == len(EPS)
    ran = [int(stdout.split(": ", 1)[1].split(" cell(s) run")[0]) for stdout, _ in outputs]
    assert sum(ran) == len(EPS), outputs  # no cell computed twice
    assert all(n > 0 for n in ran), outputs  # cells are claimed as they start: both worked


def test_dry_run_lists_cells_and_calls_and_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "slow.toml"
    config.write_text(SLOW + '\n[[attacks]]\nname = "deepfool"\neps = [0.5]\nnorm = "l2"\n')
    out, cache = tmp_path / "results", tmp_path / "cache"
    assert main(["run", str(config), "--dry-run", "--out", str(out),
                 "--cache-dir", str(cache)]) == 0
    text = capsys.readouterr().out
    assert not out.exists() and not cache.exists()
    assert f"{len(EPS) + 2} cell(s): {len(EPS) + 2} to run, 0 already stored" in text
    # PGD: 30 steps of one forward and one backward per image (one restart: no final check;
    # the runner's verification is not an attack call)
    pgd = 400 * 30 * len(EPS), 400 * 30 * len(EPS)
    deepfool = 400 * 51, 400 * 50 * 9  # 50 steps, 9 candidate classes; its eps cell reuses it
    assert f"at most {pgd[0] + deepfool[0]:,} forward and {pgd[1] + deepfool[1]:,} backward" \
        in text
    cells = expand_cells(parse_config(tomllib.loads(config.read_text())))
    assert [estimated_calls(c) for c in cells if c.attack_name == "deepfool"] == [deepfool, (0, 0)]


def test_zero_cell_sweep_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "zero.toml"
    config.write_text(SLOW.replace('model = "lenet"', 'model = "lenet"\nthreats = ["transfer"]'))
    assert main(["run", str(config), "--out", str(tmp_path / "r"), "--no-progress",
                 "--cache-dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "has no cells" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


FLAKY_STATE = "ADVBENCH_TEST_FLAKY_DIR"


def flaky_group(config: Any, options: RunOptions, run_id: str, cells: list[Any],
                pieces: Any = None) -> list[Any]:
    """Fails the first attempt of every group (and every attempt of 'always' groups)."""
    state = Path(os.environ[FLAKY_STATE])
    marker = state / cells[0].cell_id
    if cells[0].threat_model.eps == EPS[-1] or not marker.exists():
        marker.touch()
        raise RuntimeError(f"injected failure for {cells[0].cell_id[:8]}")
    return run_group(config, options, run_id, cells, pieces)


def test_pool_retries_failed_tasks_then_reports_them(trained_lenet: Any, cache_dir: Path,
                                                     tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setenv(FLAKY_STATE, str(state))
    config = parse_config(tomllib.loads(QUICK))
    options = RunOptions(out=tmp_path / "results", cache_dir=cache_dir, progress=False,
                         device="cpu", retries=1)
    plan = plan_sweep(config, options)
    # one group per cell here, so that one cell can keep failing while the others recover
    pool = LocalPool(config, options, workers=2, gpus=[], task=flaky_group)
    retried: list[tuple[str, str]] = []
    try:
        outcomes = list(pool.run([[c] for c in plan.todo], "run1", lambda cells: cells,
                                 lambda cells, why: retried.extend((c.cell_id, why)
                                                                   for c in cells)))
    finally:
        pool.close()
    assert len(retried) == len(EPS) and all("injected failure" in why for _, why in retried)
    failed = [c for c, o in outcomes if isinstance(o, BaseException)]
    assert [c.threat_model.eps for c in failed] == [EPS[-1]]
    assert "injected failure" in str(dict((c, o) for c, o in outcomes)[failed[0]])
    good = [o for c, o in outcomes if not isinstance(o, BaseException)]
    assert len(good) == len(EPS) - 1 and all(0 <= o.summary.robust_acc <= 1 for o in good)


def test_local_pool_gives_the_in_process_results(trained_lenet: Any, cache_dir: Path,
                                                 tmp_path: Path) -> None:
    config = parse_config(tomllib.loads(QUICK))
    rows = {}
    for workers in (1, 2):
        report = run_sweep(config, RunOptions(out=tmp_path / str(workers), cache_dir=cache_dir,
                                              progress=False, device="cpu", workers=workers))
        assert len(report.written) == len(EPS) and not report.failed
        rows[workers] = {r.cell_id: r.robust_acc for r in report.written}
    assert rows[1] == rows[2]
    assert_store_whole(tmp_path / "2")


def test_a_worker_process_prepares_a_sweeps_models_once_across_its_tasks(
        trained_lenet: Any, cache_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A pool process or Ray worker runs many tasks of one sweep: the base model is loaded
    (and the clean pass run) by its first task only."""
    import bench.worker

    loads = []
    real = bench.worker.trained_classifier
    monkeypatch.setattr(bench.worker, "trained_classifier",
                        lambda *a, **k: loads.append(a[0]) or real(*a, **k))
    config = parse_config(tomllib.loads(QUICK))
    options = RunOptions(out=tmp_path / "r", cache_dir=cache_dir, progress=False, device="cpu")
    cells = plan_sweep(config, options).todo
    first = run_group(config, options, "run-a", cells[:2])
    second = run_group(config, options, "run-a", cells[2:4])
    assert loads == ["lenet"] and len(first) == len(second) == 2
    run_group(config, options, "run-b", cells[:1])  # another sweep run: a fresh worker
    assert loads == ["lenet", "lenet"]


def test_a_node_reports_what_it_lacks(tmp_path: Path) -> None:
    config = parse_config(tomllib.loads(QUICK))
    assert missing_here(config) == []
    elsewhere = dataclasses.replace(config, datasets=(f"idx:{tmp_path / 'nowhere'}",))
    assert missing_here(elsewhere) == [f"data root {tmp_path / 'nowhere'} "
                                       f"(idx:{tmp_path / 'nowhere'})"]


def test_unreachable_ray_address_is_a_clear_error(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("ray")
    config = tmp_path / "slow.toml"
    config.write_text(SLOW)
    code = main(["run", str(config), "--executor", "ray", "--address", "127.0.0.1:9",
                 "--out", str(tmp_path / "r"), "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 2 and "cannot reach the Ray cluster at 127.0.0.1:9" in err
    assert not (tmp_path / "r").exists()


def test_ray_executor_runs_a_sweep_like_the_local_one(trained_lenet: Any, cache_dir: Path,
                                                      tmp_path: Path) -> None:
    """A local Ray instance: one task per base model, results written by the driver alone."""
    pytest.importorskip("ray")
    config = parse_config(tomllib.loads(QUICK))
    local = run_sweep(config, RunOptions(out=tmp_path / "local", cache_dir=cache_dir,
                                         progress=False, device="cpu"))
    remote = run_sweep(config, RunOptions(out=tmp_path / "ray", cache_dir=cache_dir,
                                          progress=False, device="cpu", executor="ray",
                                          address="local"))
    assert not remote.failed and len(remote.written) == len(EPS)
    assert ({r.cell_id: r.robust_acc for r in remote.written}
            == {r.cell_id: r.robust_acc for r in local.written})
    assert len(assert_store_whole(tmp_path / "ray")) == len(EPS)


@pytest.mark.parametrize("flags,message", [
    (["--workers", "0"], "workers must be >= 1"),
    (["--retries", "-1"], "retries must be >= 0"),
    (["--claim-ttl", "0"], "claim_ttl must be > 0 seconds"),
    (["--address", "auto"], "--address applies to --executor ray"),
    (["--executor", "ray", "--workers", "2"], "--workers applies to --executor local"),
])
def test_bad_executor_settings_exit_2(flags: list[str], message: str, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "slow.toml"
    config.write_text(SLOW)
    code = main(["run", str(config), "--out", str(tmp_path / "r"), "--no-progress",
                 "--cache-dir", str(tmp_path / "c"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists() and not (tmp_path / "c").exists()


ALONE_EPS = {"linf": 0.2, "l2": 2.0, "l1": 10.0, "l0": 3}


@pytest.mark.parametrize("name", ATTACKS.names())
def test_every_attack_alone_through_a_sweep_of_more_samples_than_one_batch(
        name: str, tmp_path: Path, cache_dir: Path, lenet: Any) -> None:
    """12 digits in batches of 5: the chunks' per-sample columns join into one cell of 12."""
    spec = ATTACKS.get(name)
    norm = spec.norms[0].value
    # an attack of one defense (SmoothAdv) runs behind it: one epoch, a 100-draw certificate
    defenses = [{"name": d, "label": d, "params": {"epochs": 1, "n": 100, "n_predict": 20}}
                for d in spec.only_on]
    config = parse_config({
        "sweep": {"name": f"alone-{name}", "n_eval": 12, "batch_size": 5, "draws": 2},
        "defenses": defenses,
        "targets": [{"model": "lenet", "defenses": [d["label"] for d in defenses] or ["none"]}],
        "attacks": [{"name": name, "norm": norm, "eps": [ALONE_EPS[norm]],
                     "params": small_params(spec)}]})
    report = run_sweep(config, RunOptions(out=tmp_path, cache_dir=cache_dir, progress=False))
    assert not report.failed and report.written
    summary, samples = load(tmp_path), ResultStore(tmp_path).samples()
    for cell_id, rows in samples.groupby("cell_id"):
        assert sorted(rows["sample_idx"]) == sorted(set(rows["sample_idx"])) and len(rows) == 12
        row = summary.set_index("cell_id").loc[cell_id]
        assert row["robust_acc"] == float((rows["clean_correct"] & rows["adv_correct"]).mean())
        if rows["queries"].notna().any():  # every sample's own count, from every chunk
            assert rows["queries"].notna().all()
            assert int(rows["queries"].sum()) + 12 == int(row["n_forward"])
