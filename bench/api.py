"""``bench.benchmark``: benchmark a model object from Python, in the shape RobustBench users know.

It builds the sweep a ``[[models]]`` config would (the module is the model, ``factory =
"python"``), runs it in this process, writes the same results store as ``advbench run`` (so
``advbench leaderboard / compare / publish`` read it) and returns the summary rows of its cells
as a pandas DataFrame.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

from bench import defaults
from bench.config import expand_cells, parse_config
from bench.core.checkpoints import resolve_cache_dir
from bench.core.datasets import load_dataset
from bench.core.errors import BadInput
from bench.runner import RunOptions
from bench.sweep import run_sweep
from leaderboards.store import ResultStore


def _attack_tables(attacks: Sequence[str | Mapping[str, Any]], eps: Any, norm: str
                   ) -> list[dict[str, Any]]:
    """Attack names take ``eps`` and ``norm``; a mapping is an ``[[attacks]]`` table."""
    if isinstance(attacks, (str, Mapping)) or not attacks:
        raise BadInput("attacks must be a non-empty list of attack names or [[attacks]] tables")
    tables = []
    for attack in attacks:
        if isinstance(attack, str):
            table: dict[str, Any] = {"name": attack, "norm": norm}
            if eps is not None:
                table["eps"] = list(eps) if isinstance(eps, (list, tuple)) else [eps]
            tables.append(table)
        elif isinstance(attack, Mapping):
            tables.append({"norm": norm, **attack})
        else:
            raise BadInput(f"attacks: {attack!r} is neither an attack name nor a table")
    return tables


def benchmark(model: nn.Module, *, dataset: str = "mnist5k",
              attacks: Sequence[str | Mapping[str, Any]], eps: Any = None, norm: str = "linf",
              name: str = "model", input_shape: Sequence[int] | None = None,
              num_classes: int | None = None, bounds: tuple[float, float] = (0.0, 1.0),
              mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
              defenses: Sequence[str] = ("none",), threats: Sequence[str] = ("adaptive",),
              n_eval: int = defaults.N_EVAL, seed: int | Sequence[int] = 0, split: str = "test",
              train_dataset: str | None = None, precision: str = "fp32", device: str = "auto",
              batch_size: int = defaults.BATCH_SIZE, draws: int = defaults.DRAWS,
              out: str | os.PathLike[str] = "results",
              cache_dir: str | os.PathLike[str] | None = None, force: bool = False,
              progress: bool = True) -> pd.DataFrame:
    """Attack ``model`` (a classifier taking ``[N, *input_shape]`` pixels in ``bounds``, with
    ``mean``/``std`` applied inside the target) on ``dataset`` and return the summary rows.

    ``attacks``: names (each at every ``eps`` under ``norm``) or ``[[attacks]]`` tables, e.g.
    ``["fgsm", {"name": "pgd", "eps": [0.1], "params": {"steps": 40}}]``. ``defenses`` and
    ``threats`` are a target's keys; every other argument is the ``[sweep]`` key of that name.
    ``input_shape`` and ``num_classes`` default to the dataset's. Raises
    :class:`bench.core.errors.BadInput` with one line for anything that cannot run.
    """
    if not isinstance(model, nn.Module):
        raise BadInput(f"model must be a torch.nn.Module, got {type(model).__name__}")
    data = load_dataset(dataset)
    entry: dict[str, Any] = {
        "name": name, "factory": "python",
        "input_shape": list(input_shape or data.input_shape),
        "num_classes": num_classes or data.num_classes, "bounds": list(bounds)}
    entry.update({k: list(v) for k, v in (("mean", mean), ("std", std)) if v is not None})
    sweep: dict[str, Any] = {
        "name": f"benchmark-{name}", "dataset": dataset, "n_eval": n_eval,
        "seed": list(seed) if isinstance(seed, Sequence) else seed, "split": split,
        "precision": precision, "device": device, "batch_size": batch_size, "draws": draws}
    if train_dataset:
        sweep["train_dataset"] = train_dataset
    config = parse_config({
        "sweep": sweep, "models": [entry],
        "targets": [{"model": name, "defenses": list(defenses), "threats": list(threats)}],
        "attacks": _attack_tables(attacks, eps, norm)},
        source="benchmark()", modules={name: model})
    run_sweep(config, RunOptions(out=Path(out), cache_dir=resolve_cache_dir(cache_dir),
                                 force=force, progress=progress))
    cells = {cell.cell_id for cell in expand_cells(config)}
    rows = ResultStore(out).summary()
    return rows[rows["cell_id"].isin(cells)].reset_index(drop=True)


__all__ = ["benchmark"]
