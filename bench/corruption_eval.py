"""``advbench corruptions``: the common-corruptions threat model (RobustBench's third, beside
Linf and L2). Every classifier target of a sweep (its model, each defense, each seed) is
evaluated on the sweep's samples under each corruption of the set its images take (MNIST-C for
grayscale, CIFAR-10-C at severities 1–5 for colour; :mod:`bench.core.corruptions`, drawn from
the sweep's seed), one row per target, corruption and severity in Parquet under
``<out>/corruptions/``; :mod:`leaderboards.corruptions` makes the board (mean and worst over
the corruptions).

A randomised target counts a sample as correct when every one of the sweep's draws classifies
it correctly (as the attacked rows do); a deterministic one in one fp32 pass.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import torch

from bench.config import Cell, SweepConfig, expand_cells
from bench.core.corruptions import Level, corrupt, corruption_set
from bench.core.errors import BadInput
from bench.core.target import Target
from bench.core.version import ADVBENCH_VERSION
from bench.evaluation import EvalData
from bench.runner import RunOptions
from bench.verification import judge
from bench.worker import Worker
from leaderboards.corruptions import boards, load_corruptions
from leaderboards.store import atomic_write

SCHEMA = pa.schema([
    ("dataset", pa.string()), ("split", pa.string()), ("n_samples", pa.int64()),
    ("seed", pa.int64()), ("precision", pa.string()), ("train_dataset", pa.string()),
    ("model", pa.string()), ("defense", pa.string()), ("defense_params", pa.string()),
    ("weights_sha256", pa.string()), ("draws", pa.int64()),
    ("corruption_set", pa.string()), ("corruption", pa.string()), ("severity", pa.int64()),
    ("corruption_seed", pa.int64()), ("clean_acc", pa.float64()), ("accuracy", pa.float64()),
    ("n_correct", pa.int64()), ("seconds", pa.float64()),
    ("advbench_version", pa.string()), ("created_at", pa.timestamp("us", tz="UTC")),
])
"""One row per (target, corruption, severity): the corrupted samples' accuracy beside the
clean one."""


def _correct(target: Target, x: torch.Tensor, y: torch.Tensor, draws: int, seed: int,
             batch_size: int) -> torch.Tensor:
    """``[N]``: classified correctly (by every draw of a randomised target)."""
    with target.evaluating():
        return judge(target, x, draws=draws, seed=seed, batch_size=batch_size).every(y)


def _targets(config: SweepConfig) -> list[Cell]:
    """One cell per classifier target (model, defense, seed, data set) of the sweep."""
    seen: dict[tuple[str, ...], Cell] = {}
    for cell in expand_cells(config):
        if cell.direction:
            continue  # a discriminator's classes are real/fake: corruptions are not its threat
        key = (cell.dataset, cell.model, cell.defense, str(cell.seed), cell.precision)
        seen.setdefault(key, cell)
    if not seen:
        raise BadInput(f"sweep {config.name!r} has no classifier targets; corruptions are "
                       f"evaluated on classifiers")
    return list(seen.values())


def evaluate(config: SweepConfig, options: RunOptions, names: tuple[str, ...] = (),
             progress: Callable[[str], None] | None = None, severities: tuple[int, ...] = ()
             ) -> tuple[pd.DataFrame, torch.Tensor]:
    """Every classifier target of ``config`` on its evaluated samples under the corruptions
    ``names`` at ``severities`` (default: all of its images' set), one row per target,
    corruption and severity; and the example grid (:func:`example_grid`) of the first
    target's samples."""
    worker = Worker(config, options, run_id="corruptions")
    rows = []
    corrupted: dict[tuple[str, int, str, int], torch.Tensor] = {}
    grid: torch.Tensor | None = None
    for cell in _targets(config):
        prepared = worker.prepare_target(cell)
        data = worker.eval_data(cell)
        cset = corruption_set(int(data.x.shape[1]))
        chosen = cset.select(names, severities)
        target, batch = prepared.defended, config.batch_size
        draws = prepared.draws
        if grid is None:
            grid = example_grid(data, cell.seed, chosen)
        clean = _correct(target, data.x, data.y, draws, cell.seed, batch)
        if progress:
            progress(f"{cell.model}/{cell.defense} seed {cell.seed}")
        for level in chosen:
            key = (cell.dataset, cell.seed, level.name, level.severity)
            if key not in corrupted:
                corrupted[key] = corrupt(data.x, level.name, seed=cell.seed, indices=data.idx,
                                         severity=level.severity)
            started = time.perf_counter()
            right = _correct(target, corrupted[key], data.y, draws, cell.seed, batch)
            rows.append({
                "dataset": cell.dataset, "split": cell.split, "n_samples": len(data.y),
                "seed": cell.seed, "precision": cell.precision,
                "train_dataset": cell.train_dataset, "model": cell.model,
                "defense": cell.defense, "defense_params": cell.defense_params,
                "weights_sha256": prepared.weights_sha256, "draws": draws,
                "corruption_set": cset.name, "corruption": level.name,
                "severity": level.severity, "corruption_seed": cell.seed,
                "clean_acc": float(clean.float().mean()),
                "accuracy": float(right.float().mean()), "n_correct": int(right.sum()),
                "seconds": time.perf_counter() - started,
                "advbench_version": ADVBENCH_VERSION,
                "created_at": dt.datetime.now(dt.timezone.utc),
            })
    assert grid is not None
    return pd.DataFrame(rows), grid


EXAMPLES = 10
"""Digits per corruption in the example grid."""


def example_grid(data: EvalData, seed: int, levels: list[Level]) -> torch.Tensor:
    """A grid image (torchvision's ``make_grid``) of the corruptions ``levels`` exactly as
    evaluated, one row per corruption. With one severity per corruption (MNIST-C): under a clean
    row, the first evaluated sample of each class (at most :data:`EXAMPLES`); with several
    (CIFAR-10-C): the first sample, clean and then at each severity."""
    from torchvision.utils import make_grid

    names = list(dict.fromkeys(level.name for level in levels))
    severities = sorted({level.severity for level in levels})
    if len(names) == len(levels):  # one severity per corruption
        classes = data.y.unique()[:EXAMPLES]
        pick = torch.stack([torch.nonzero(data.y == c)[0, 0] for c in classes]).cpu()
        x, idx = data.x.cpu()[pick], data.idx.cpu()[pick]
        rows = [x] + [corrupt(x, level.name, seed=seed, indices=idx, severity=level.severity)
                      for level in levels]
        return make_grid(torch.cat(rows), nrow=len(x), padding=1, pad_value=0.5)
    x, idx = data.x.cpu()[:1], data.idx.cpu()[:1]
    tiles = []
    for name in names:
        tiles.append(torch.cat([x] + [corrupt(x, name, seed=seed, indices=idx, severity=s)
                                      for s in severities]))
    return make_grid(torch.cat(tiles), nrow=len(severities) + 1, padding=1, pad_value=0.5)


def results_path(table: pd.DataFrame, out: Path, name: str) -> Path:
    """Where :func:`write` stores ``table``: under ``out/corruptions/``, named by the sweep and
    what its rows measured (a rerun of the same evaluation replaces its file, never
    another's)."""
    identity = json.dumps(sorted({(r.dataset, r.split, r.n_samples, r.seed, r.model,
                                   r.defense, r.defense_params, r.weights_sha256 or "",
                                   r.corruption, r.severity) for r in table.itertuples()}))
    digest = hashlib.sha256(identity.encode()).hexdigest()[:12]
    return out / "corruptions" / f"{name}-{digest}.parquet"


def write(table: pd.DataFrame, path: Path, grid: torch.Tensor | None = None) -> None:
    """``table`` as one Parquet file at ``path`` and ``grid`` beside it as ``<same
    name>.png``, each written whole or not at all (the rows are checked against
    :data:`SCHEMA` before either is written)."""
    arrow = pa.Table.from_pandas(table, schema=SCHEMA, preserve_index=False)
    if grid is not None:
        from torchvision.utils import save_image

        png = path.with_suffix(".png")
        tmp = png.with_name(f".{png.name}.tmp.png")
        png.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, tmp)
        os.replace(tmp, png)
    atomic_write(arrow, path)


def run(config: SweepConfig, options: RunOptions, names: tuple[str, ...] = (),
        progress: Callable[[str], None] | None = None, severities: tuple[int, ...] = ()
        ) -> tuple[Path, int]:
    """``advbench corruptions``: :func:`evaluate` and :func:`write` into ``options.out``; the
    file written and its row count. The results folder is read first (a corrupt file there
    stops the run before any evaluation) and the new rows are checked against the stored ones
    before anything is written (two disagreeing evaluations of one target are refused, and
    nothing is written)."""
    load_corruptions(options.out)
    table, grid = evaluate(config, options, names, progress, severities)
    path = results_path(table, options.out, config.name)
    boards(pd.concat([load_corruptions(options.out, without=path), table], ignore_index=True))
    write(table, path, grid)
    return path, len(table)
