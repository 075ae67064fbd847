"""``advbench corruptions``: the common-corruptions threat model (RobustBench's third, beside
Linf and L2). Every classifier target of a sweep (its model, each defense, each seed) is
evaluated on the sweep's samples under each MNIST-C corruption (:mod:`bench.core.corruptions`,
drawn from the sweep's seed), one row per target and corruption in Parquet under
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
from bench.core.corruptions import MNIST_C, corrupt, corruption
from bench.core.errors import BadInput
from bench.core.target import Target
from bench.core.version import ADVBENCH_VERSION
from bench.evaluation import EvalData
from bench.runner import RunOptions
from bench.verification import judge
from bench.worker import Worker
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
"""One row per (target, corruption): the corrupted samples' accuracy beside the clean one."""

CORRUPTION_SET = "mnist-c"


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
             progress: Callable[[str], None] | None = None
             ) -> tuple[pd.DataFrame, torch.Tensor]:
    """Every classifier target of ``config`` on its evaluated samples under the corruptions
    ``names`` (default: all of MNIST-C), one row per target and corruption; and the example
    grid (:func:`example_grid`) of the first target's samples."""
    chosen = [corruption(n) for n in names] if names else list(MNIST_C.values())
    worker = Worker(config, options, run_id="corruptions")
    rows = []
    corrupted: dict[tuple[str, int, str], torch.Tensor] = {}
    grid: torch.Tensor | None = None
    for cell in _targets(config):
        prepared = worker.prepare_target(cell)
        data = worker.eval_data(cell)
        target, batch = prepared.defended, config.batch_size
        draws = prepared.draws
        if grid is None:
            grid = example_grid(data, cell.seed, tuple(spec.name for spec in chosen))
        clean = _correct(target, data.x, data.y, draws, cell.seed, batch)
        if progress:
            progress(f"{cell.model}/{cell.defense} seed {cell.seed}")
        for spec in chosen:
            key = (cell.dataset, cell.seed, spec.name)
            if key not in corrupted:
                corrupted[key] = corrupt(data.x, spec.name, seed=cell.seed, indices=data.idx)
            started = time.perf_counter()
            right = _correct(target, corrupted[key], data.y, draws, cell.seed, batch)
            rows.append({
                "dataset": cell.dataset, "split": cell.split, "n_samples": len(data.y),
                "seed": cell.seed, "precision": cell.precision,
                "train_dataset": cell.train_dataset, "model": cell.model,
                "defense": cell.defense, "defense_params": cell.defense_params,
                "weights_sha256": prepared.weights_sha256, "draws": draws,
                "corruption_set": CORRUPTION_SET, "corruption": spec.name,
                "severity": spec.severity, "corruption_seed": cell.seed,
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


def example_grid(data: EvalData, seed: int, names: tuple[str, ...]) -> torch.Tensor:
    """A grid image (torchvision's ``make_grid``): the first evaluated sample of each class
    (at most :data:`EXAMPLES`), clean in the first row, then under each of the corruptions
    ``names`` exactly as evaluated."""
    from torchvision.utils import make_grid

    classes = data.y.unique()[:EXAMPLES]
    pick = torch.stack([torch.nonzero(data.y == c)[0, 0] for c in classes]).cpu()
    x, idx = data.x.cpu()[pick], data.idx.cpu()[pick]
    rows = [x] + [corrupt(x, n, seed=seed, indices=idx) for n in names]
    return make_grid(torch.cat(rows), nrow=len(x), padding=1, pad_value=0.5)


def write(table: pd.DataFrame, out: Path, name: str, grid: torch.Tensor | None = None) -> Path:
    """``table`` as one Parquet file under ``out/corruptions/``, named by the sweep and what
    its rows measured (a rerun of the same evaluation replaces its file, never another's),
    and ``grid`` beside it as ``<same name>.png``."""
    identity = json.dumps(sorted({(r.dataset, r.split, r.n_samples, r.seed, r.model,
                                   r.defense, r.defense_params, r.weights_sha256 or "",
                                   r.corruption) for r in table.itertuples()}))
    digest = hashlib.sha256(identity.encode()).hexdigest()[:12]
    path = out / "corruptions" / f"{name}-{digest}.parquet"
    if grid is not None:
        from torchvision.utils import save_image

        png = path.with_suffix(".png")
        tmp = png.with_name(f".{png.name}.tmp.png")
        png.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, tmp)
        os.replace(tmp, png)
    atomic_write(pa.Table.from_pandas(table, schema=SCHEMA, preserve_index=False), path)
    return path
