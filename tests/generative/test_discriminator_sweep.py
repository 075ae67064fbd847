"""GAN discriminators in sweeps: both directions, the leaderboard's discriminator section, the
comparison, and Rob-GAN (Liu & Hsieh 2019) against a plainly trained discriminator."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from attacks import ATTACKS
from attacks.gradient import IterativeParams
from bench.config import expand_cells, parse_config
from bench.core.datasets import Dataset, Split
from bench.core.norms import Norm
from bench.core.target import Target
from bench.evaluation import discriminator_data, eval_subset
from bench.runner import RunOptions
from bench.sweep import run_sweep
from defenses import DEFENSES
from defenses.robgan import RobGANParams
from generative import gan_spec, train_gan
from leaderboards import ResultStore, leaderboards
from leaderboards.compare import compare
from tests.conftest import advbench

CPU = torch.device("cpu")
CONFIG: dict[str, Any] = {
    "sweep": {"name": "gan", "dataset": "mnist5k", "n_eval": 100, "batch_size": 100},
    "targets": [{"model": "dcgan"}],
    "attacks": [{"name": "fgsm", "eps": [0.0, 0.1]},
                {"name": "pgd", "eps": [0.1], "params": {"steps": 10, "step_size": 0.025}}],
}


def test_cells_per_direction_and_classifier_ids_unchanged() -> None:
    config = parse_config(CONFIG)
    cells = expand_cells(config)
    assert sorted({c.direction for c in cells}) == ["fake->real", "real->fake"]
    assert len({c.cell_id for c in cells}) == len(cells) == 6
    one = parse_config({**CONFIG, "targets": [{"model": "sndcgan", "directions": "fake->real"}]})
    assert {c.direction for c in expand_cells(one)} == {"fake->real"}
    lenet = parse_config({**CONFIG, "targets": [{"model": "lenet"}]})
    assert {c.direction for c in expand_cells(lenet)} == {""}
    # a classifier's cell_id does not depend on the direction field (stored results stay valid)
    cell = expand_cells(lenet)[0]
    assert cell.cell_id == dataclasses.replace(cell, direction="").cell_id
    assert cell.cell_id != dataclasses.replace(cell, direction="real->fake").cell_id


def test_evaluation_data_is_balanced_and_reproducible(trained_dcgan: Any,
                                                      mnist5k: Dataset) -> None:
    real = discriminator_data(trained_dcgan, mnist5k, "test", 50, 0, "real->fake", CPU)
    fake = discriminator_data(trained_dcgan, mnist5k, "test", 50, 0, "fake->real", CPU)
    assert real.x.shape == fake.x.shape == (50, 1, 28, 28)
    assert bool((real.y == 1).all()) and bool((fake.y == 0).all())
    assert torch.equal(real.idx, eval_subset(mnist5k, "test", 50, CPU).idx)
    again = discriminator_data(trained_dcgan, mnist5k, "test", 50, 0, "fake->real", CPU)
    other = discriminator_data(trained_dcgan, mnist5k, "test", 50, 1, "fake->real", CPU)
    assert torch.equal(again.x, fake.x) and not torch.equal(other.x, fake.x)


def test_sweep_attacks_a_discriminator_in_both_directions(trained_dcgan: Any, cache_dir: Path,
                                                          tmp_path: Path) -> None:
    run_sweep(parse_config(CONFIG), RunOptions(out=tmp_path, cache_dir=cache_dir,
                                               progress=False, device="cpu"))
    store = ResultStore(tmp_path)
    summary = store.summary()
    samples = store.samples(summary)
    assert len(summary) == 6
    assert (summary["target_kind"] == "discriminator").all() and (summary["n_samples"] == 100).all()
    for direction, label in (("real->fake", 1), ("fake->real", 0)):
        rows = summary[summary["direction"] == direction]
        assert len(rows) == 3
        assert (samples[samples["cell_id"].isin(rows["cell_id"])]["label"] == label).all()
        zero = rows[(rows["attack"] == "fgsm") & (rows["eps"] == 0.0)].iloc[0]
        assert zero["robust_acc"] == zero["clean_acc"] >= 0.6, direction
        pgd = rows[rows["attack"] == "pgd"].iloc[0]
        fgsm = rows[(rows["attack"] == "fgsm") & (rows["eps"] == 0.1)].iloc[0]
        assert pgd["robust_acc"] <= zero["clean_acc"] - 0.3, direction  # undefended D is fragile
        assert pgd["robust_acc"] <= fgsm["robust_acc"] + 0.05
    (board,) = [b for b in leaderboards(summary, samples) if b.target_kind == "discriminator"]
    assert list(board.table.columns[:3]) == ["model", "defense", "direction"]
    assert sorted(board.table["direction"]) == ["fake->real", "real->fake"]
    assert "worst@0.1" in board.table.columns
    # the clean pass's margin-gradient norms: one per (target, direction), on the board after
    # clean; the L1 norm (the dual of Linf) is at least the L2 norm, as for any vector
    for col in ("margin_grad_l1", "margin_grad_l2"):
        assert summary[col].notna().all() and (summary[col] > 0).all()
        assert summary.groupby("direction")[col].nunique().eq(1).all()
    assert (summary["margin_grad_l1"] >= summary["margin_grad_l2"]).all()
    cols = list(board.table.columns)
    assert cols[cols.index("clean") + 1:cols.index("clean") + 3] == ["grad l1", "grad l2"]
    for _, row in board.table.iterrows():
        stored = summary[summary["direction"] == row["direction"]]["margin_grad_l1"].iloc[0]
        assert row["grad l1"] == stored
    table = compare(summary, samples)
    assert sorted(set(table["direction"])) == ["fake->real", "real->fake"]


def _pgd_accuracy(target: Target, x: torch.Tensor, label: int, eps: float) -> float:
    y = torch.full((x.shape[0],), label, dtype=torch.long)
    params = IterativeParams(steps=20, step_size=eps / 8, early_stop=False)
    adv = ATTACKS.get("pgd").fn(target, x, y, eps=eps, norm=Norm.LINF,
                                generator=torch.Generator().manual_seed(0), params=params)
    return float((target.predict_logits(adv.x_adv).argmax(1) == y).float().mean())


def test_robgan_discriminator_resists_pgd_where_a_plain_one_does_not(
        mnist5k: Dataset) -> None:
    """Same data, budget and seed; only Rob-GAN's PGD on D's inputs differs."""
    train = Split(mnist5k.train.x[:1000], mnist5k.train.y[:1000])
    recipe = dataclasses.replace(gan_spec("dcgan").recipe, epochs=5)
    plain = train_gan(gan_spec("dcgan"), train, seed=0, device=CPU, recipe=recipe,
                      progress=False)
    base = plain.target
    robust = DEFENSES.get("robgan").fit(base, train, RobGANParams(eps=0.1, epochs=5),
                                        torch.Generator().manual_seed(0), progress=False)
    assert robust.kind == "discriminator" and robust.card["gan"] == "dcgan"
    assert len(robust.card["history"]) == 5
    real = mnist5k.test.x[:200]
    fake = plain.sample(200, seed=5)
    plain_real, robgan_real = (_pgd_accuracy(t, real, 1, 0.1) for t in (base, robust))
    plain_fake, robgan_fake = (_pgd_accuracy(t, fake, 0, 0.1) for t in (base, robust))
    assert robgan_real >= plain_real + 0.4, (plain_real, robgan_real)
    assert robgan_fake >= plain_fake, (plain_fake, robgan_fake)


GAN_SWEEP = """
[sweep]
name = "gan-cli"
dataset = "mnist5k"
n_eval = 40
batch_size = 40

[[defenses]]
name = "robgan"
params = { epochs = 1 }

[[targets]]
model = "dcgan"
defenses = ["none", "robgan"]
threats = ["adaptive", "transfer"]
directions = ["real->fake"]

[[attacks]]
name = "pgd"
eps = [0.1]
params = { steps = 5, step_size = 0.03 }
"""


def test_cli_runs_a_defended_discriminator_sweep(trained_dcgan: Any, cache_dir: Path,
                                                 tmp_path: Path) -> None:
    config = tmp_path / "gan.toml"
    config.write_text(GAN_SWEEP)
    out = tmp_path / "results"
    proc = advbench("run", str(config), "--out", str(out), "--no-progress", cwd=tmp_path,
                    cache=cache_dir)
    assert proc.returncode == 0, proc.stderr
    assert "mnist5k · discriminator · adaptive · linf" in proc.stdout
    assert "real->fake" in proc.stdout
    summary = ResultStore(out).summary()
    assert sorted(zip(summary["defense"], summary["threat"])) == [
        ("none", "adaptive"), ("robgan", "adaptive"), ("robgan", "transfer")]
    assert set(summary["direction"]) == {"real->fake"}
    comparison = advbench("compare", str(out), cwd=tmp_path, cache=cache_dir)
    assert comparison.returncode == 0, comparison.stderr
    assert "### mnist5k · dcgan · real->fake" in comparison.stdout
    assert "robgan" in comparison.stdout
