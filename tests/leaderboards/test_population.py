"""The one population definition, checked against every reader: two stored cells that differ in
one key at a time, read by the boards, the spread over seeds and ``compare``.

(a) cells that differ in a population key are never one board row; (b) cells that differ in
their seed (and weights) alone make a spread, and differing in any other spread key too makes
none; (c) a defended cell is paired with its baseline exactly when they agree on the pairing
key; what is only recorded (the execution path, the device) splits nothing."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from leaderboards import ResultStore, leaderboards
from leaderboards.compare import compare, seed_spread
from leaderboards.population import PAIRING, POPULATION, RECORDED, SEED_VARYING, SPREAD
from leaderboards.schema import summary_row
from tests.conftest import sample_values, summary_values

BASE = "a" * 64
OTHER: dict[str, Any] = {
    "dataset": "mnist", "target_kind": "discriminator", "model": "lenet-b",
    "direction": "real->fake", "defense": "fgsm_rs", "defense_params": '{"eps": 0.3}',
    "model_source": "mynets:cnn", "weights_sha256": "b" * 64, "base_weights_sha256": "c" * 64,
    "train_dataset": "idx:/data", "split": "train", "n_samples": 5, "seed": 1,
    "precision": "bf16", "draws": 5, "attack": "fgsm", "attack_params": '{"steps": 7}', "targeted": True,
    "norm": "l2", "eps": 0.2, "eps_display": "0.2", "source_model": "resnet",
    "cascade_member": "apgd-ce", "fast_path": "channels_last", "device": "cuda:0",
    "batch_size": 64, "torch_version": "9.9", "advbench_version": "9.9", "git_sha": "f00",
}
"""A second value for every key."""


def cell(cell_id: str, adv: tuple[bool, ...] = (True, False, True, False), **fields: Any
         ) -> tuple[dict[str, Any], dict[str, Any]]:
    """A stored cell: LeNet at seed 0 attacked by PGD, with ``fields`` changed."""
    n = int(fields.get("n_samples", len(adv)))
    adv = (adv * 2)[:n]
    values = summary_values(cell_id, **{"weights_sha256": BASE, "base_weights_sha256": BASE,
                                        "attack_run": cell_id, "robust_acc": sum(adv) / n,
                                        **fields})
    samples = sample_values(cell_id, adv)
    samples["sample_idx"] = np.arange(n)
    return values, samples


def stored(tmp_path: Path, *cells: tuple[dict[str, Any], dict[str, Any]]) -> ResultStore:
    store = ResultStore(tmp_path)
    for summary, samples in cells:
        store.write_cell(summary_row(summary), samples)
    return store


def board_rows(store: ResultStore) -> int:
    return sum(len(b.table) for b in leaderboards(store.summary(), store.samples()))


@pytest.mark.parametrize("key", POPULATION)
def test_a_population_key_splits_board_rows(key: str, tmp_path: Path) -> None:
    """(a) Two cells of one column that differ in ``key`` are two board rows (pooled, they
    would be one row, or refused as a clash)."""
    store = stored(tmp_path, cell("c1"), cell("c2", **{key: OTHER[key]}))
    assert board_rows(store) == 2


@pytest.mark.parametrize("key", ["fast_path", "device", "batch_size", "torch_version"])
def test_a_recorded_key_splits_nothing(key: str, tmp_path: Path) -> None:
    """Two attacks on one population, run on different paths or devices: one board row."""
    assert key in RECORDED
    store = stored(tmp_path, cell("c1"), cell("c2", attack="fgsm", **{key: OTHER[key]}))
    assert board_rows(store) == 1
    base, defended = cell("b"), cell("d", defense="fgsm_rs", weights_sha256="d" * 64,
                                      **{key: OTHER[key]})
    table = compare(*_read(stored(tmp_path / "pair", base, defended)))
    assert not math.isnan(float(table.loc[table["defense"] == "fgsm_rs", "delta"].iloc[0]))


def _read(store: ResultStore) -> tuple[Any, Any]:
    return store.summary(), store.samples()


def _spreads(store: ResultStore) -> tuple[int, int]:
    """How many spread rows the boards and compare make."""
    boards = leaderboards(*_read(store))
    return (sum(len(b.spread) for b in boards), len(seed_spread(compare(*_read(store)))))


def test_the_seed_and_its_weights_alone_make_a_spread(tmp_path: Path) -> None:
    store = stored(tmp_path, cell("s0"), cell("s1", seed=1, weights_sha256="b" * 64,
                                              base_weights_sha256="b" * 64))
    assert _spreads(store) == (1, 1)


@pytest.mark.parametrize("key", SPREAD)
def test_any_other_spread_key_prevents_a_spread(key: str, tmp_path: Path) -> None:
    """(b) Seeds 0 and 1 whose rows differ in ``key`` too measure different things."""
    assert key not in SEED_VARYING
    store = stored(tmp_path, cell("s0"), cell("s1", seed=1, weights_sha256="b" * 64,
                                              **{key: OTHER[key]}))
    assert _spreads(store) == (0, 0)


def _delta(tmp_path: Path, **changed: Any) -> float:
    """Δ vs none of a defended cell whose base agrees with the baseline but for ``changed``."""
    defended = {"defense": "fgsm_rs", "defense_params": '{"eps": 0.3}',
                "weights_sha256": "d" * 64, **changed}
    table = compare(*_read(stored(tmp_path, cell("b"), cell("d", **defended))))
    return float(table.loc[table["defense"] == "fgsm_rs", "delta"].iloc[0])


def test_a_defended_cell_pairs_with_the_baseline_of_its_base_weights(tmp_path: Path) -> None:
    assert _delta(tmp_path / "same") == pytest.approx(0.0)
    assert _delta(tmp_path / "transfer", threat="transfer") == pytest.approx(0.0)


@pytest.mark.parametrize("key", PAIRING)
def test_a_pairing_key_that_differs_leaves_no_baseline(key: str, tmp_path: Path) -> None:
    """(c) A baseline of other base weights, samples, seed, precision or attack is no
    baseline: Δ stays empty rather than compare two different things."""
    changed = {key: OTHER[key]}
    if key == "eps":
        changed["eps_display"] = OTHER["eps_display"]
    assert math.isnan(_delta(tmp_path, **changed))
