"""Certified bounds in sweeps: ``certify`` in configs, rows and samples; certified training
(``ibp``, ``crown_ibp``) that bounds can certify; the invariant a certificate and an attack must
keep; refusals."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from bench.config import ConfigError, expand_cells, parse_config
from bench.core import indicators
from bench.core.bounds import bound_certificate
from bench.core.datasets import Dataset
from bench.core.norms import Norm
from bench.core.target import Certificate, Target
from bench.core.training import fit
from bench.core.zoo import TrainRecipe
from bench.failures import certificate_violations
from bench.records import PreparedTarget
from bench.runner import RunOptions
from bench.sweep import run_sweep
from bench.verification import Outcome
from defenses.certified import CertifiedTrainingParams, CrownIBPParams, certified_training
from leaderboards.store import ResultStore
from tests.conftest import make_cell


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))


def config(**sweep: Any) -> dict[str, Any]:
    return {"sweep": {"name": "cert", "n_eval": 60, **sweep},
            "models": [{"name": "my-mlp", "factory": "python", "input_shape": [1, 28, 28],
                        "num_classes": 10}],
            "defenses": [{"name": "ibp", "label": "ibp_small", "params": {
                "epochs": 6, "eps": 0.1, "warmup": 0.0, "ramp": 0.5, "monitor_samples": 200,
                "batch_size": 100}}],
            "targets": [{"model": "my-mlp", "defenses": ["ibp_small"]}],
            "attacks": [{"name": "pgd", "eps": [0.0, 0.05], "params": {"steps": 20}},
                        {"name": "ddn", "norm": "l2", "eps": [0.5, 1.0], "certify": "crown",
                         "params": {"steps": 60}},
                        {"name": "fmn", "norm": "l1", "eps": [2.0], "params": {"steps": 10}}]}


def test_certify_is_read_per_sweep_and_per_attack_and_checked() -> None:
    cells = expand_cells(parse_config(config(certify="crown-ibp"), modules={"my-mlp": mlp()}))
    by_norm = {(c.attack_name, c.threat_model.norm.value): c.certify for c in cells}
    assert by_norm[("pgd", "linf")] == "crown-ibp"
    assert by_norm[("ddn", "l2")] == "crown"  # the attack's own
    assert by_norm[("fmn", "l1")] == ""  # the bounds take Linf and L2 balls
    plain = expand_cells(parse_config(config(), modules={"my-mlp": mlp()}))
    assert {c.certify for c in plain if c.attack_name == "pgd"} == {""}
    ids = {name: {c.cell_id for c in cs if c.attack_name == name} for name, cs in
           (("pgd", cells), ("fmn", cells))}
    assert not ids["pgd"] & {c.cell_id for c in plain}  # a certified row is another cell
    assert ids["fmn"] <= {c.cell_id for c in plain}
    with pytest.raises(ConfigError, match="certify.*'ibp' \\| 'crown-ibp' \\| 'crown'"):
        parse_config(config(certify="milp"), modules={"my-mlp": mlp()})
    bad = config()
    bad["attacks"][2]["certify"] = "ibp"
    with pytest.raises(ConfigError, match="Linf and L2"):
        parse_config(bad, modules={"my-mlp": mlp()})


@pytest.fixture(scope="module")
def certified_sweep(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path
                    ) -> tuple[pd.DataFrame, pd.DataFrame]:
    out = tmp_path_factory.mktemp("certified")
    run_sweep(parse_config(config(certify="crown-ibp"), modules={"my-mlp": mlp()}),
              RunOptions(out=out, cache_dir=cache_dir, progress=False))
    store = ResultStore(out)
    return store.summary(), store.samples()


def test_rows_carry_certified_accuracy_below_the_attacked_and_never_contradicted(
        certified_sweep: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    summary, samples = certified_sweep
    bounded = summary[summary["norm"].isin(["linf", "l2"]) & summary["eps"].notna()]
    assert set(bounded["certify_method"]) == {"crown-ibp", "crown"}
    assert summary.loc[summary["norm"] == "l1", "certify_method"].isna().all()
    for _, row in bounded.iterrows():
        assert row["certified_acc"] <= row["robust_acc"] <= row["clean_acc"]
        assert row["certified_fooled"] == 0
        assert indicators.CERTIFICATE_BROKEN not in str(row["flags"])
        assert row["certify_n_forward"] >= 13 and row["certify_s"] > 0
    at_zero = bounded[(bounded["eps"] == 0.0)].iloc[0]
    assert at_zero["certified_acc"] >= at_zero["clean_acc"] - 0.02
    linf = bounded[(bounded["eps"] == 0.05)].iloc[0]
    assert linf["certified_acc"] >= 0.5  # certified training at 0.1 certifies at 0.05
    # per sample: every fooled one was reached no nearer than its certified radius
    merged = samples.merge(bounded[["cell_id", "norm", "eps"]], on="cell_id")
    fooled = merged[merged["success"] & merged["clean_correct"]
                    & merged["certified_correct"].astype(bool)]
    assert len(fooled)
    assert bool((fooled["distance"] >= fooled["certified_radius"] * (1 - 1e-6)).all())
    by_radius = merged["certified_correct"].astype(bool) & (
        merged["certified_radius"] >= merged["eps"])
    assert bool((merged["certified"].astype(bool) | ~by_radius).all())


def test_a_fooled_certified_sample_is_flagged() -> None:
    cell = make_cell("pgd", eps=0.1)
    cell = cell.__class__(**{**cell.__dict__, "certify": "crown"})
    labels = torch.tensor([0, 1, 2])
    cert = Certificate(labels.clone(), torch.full((3,), 0.2), 13, norm="linf", method="crown")
    prepared = PreparedTarget(None, Target(nn.Linear(1, 3), num_classes=3,  # type: ignore
                                           input_shape=(1,)), labels.clone(), labels,
                              bound_certificates={("crown", "linf"): (cert, 0.1)})
    zeros = torch.zeros(3)
    outcome = Outcome(labels, torch.tensor([False, True, False]), torch.tensor([1, 0, 1]).bool(),
                      zeros, zeros, zeros, distance=torch.tensor([0.0, 0.05, 0.0]))
    assert certificate_violations(cell, prepared, outcome) == 1
    quiet = Outcome(labels, torch.zeros(3, dtype=torch.bool), torch.ones(3, dtype=torch.bool),
                    zeros, zeros, zeros, distance=torch.full((3,), math.nan))
    assert certificate_violations(cell, prepared, quiet) == 0


@pytest.mark.parametrize("params", [CertifiedTrainingParams, CrownIBPParams])
def test_certified_training_certifies_what_standard_training_cannot(
        params: type, mnist5k: Dataset) -> None:
    train = mnist5k.split("train")
    base = Target(mlp(), num_classes=10, input_shape=(1, 28, 28))
    trained = certified_training(base, train, params(epochs=4, eps=0.1, warmup=0.0, ramp=0.5,
                                                     monitor_samples=200, batch_size=100),
                                 torch.Generator().manual_seed(0), progress=False)
    plain = Target(mlp(), num_classes=10, input_shape=(1, 28, 28))
    fit(plain, train, TrainRecipe(epochs=4, batch_size=100, lr=1e-3), seed=0,
        device=torch.device("cpu"), progress=False)
    test = mnist5k.split("test")
    x, y = test.x[:200], test.y[:200]
    certified = {}
    for name, target in (("certified", trained), ("plain", plain)):
        cert = bound_certificate(target.eval(), x, norm=Norm.LINF, method="crown-ibp",
                                 eps=(0.1,))
        certified[name] = float(((cert.pred == y) & cert.holds_at(0.1)).float().mean())
    assert certified["certified"] >= 0.5
    assert certified["certified"] >= certified["plain"] + 0.3
    history = trained.card["history"]
    assert history[-1]["eps"] == pytest.approx(0.1)
    assert history[-1]["monitor_certified_acc"] > history[0]["monitor_certified_acc"] + 0.05


def test_certify_on_a_randomised_defense_is_refused_in_one_line(tmp_path: Path,
                                                                cache_dir: Path) -> None:
    cfg = config(certify="ibp")
    cfg["targets"] = [{"model": "my-mlp", "defenses": ["random_resize_pad"]}]
    cfg["attacks"] = [{"name": "fgsm", "eps": [0.1]}]
    with pytest.raises(ValueError, match="cannot bound model.*randomness|preprocessing") as err:
        run_sweep(parse_config(cfg, modules={"my-mlp": mlp()}),
                  RunOptions(out=tmp_path / "r", cache_dir=cache_dir, progress=False))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "r").exists() or not any(
        p.suffix == ".parquet" for p in (tmp_path / "r").rglob("*"))


def test_certified_radius_is_a_distance_the_sample_keeps_its_label() -> None:
    torch.manual_seed(1)
    target = Target(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), num_classes=3,
                    input_shape=(4,)).eval()
    x = torch.rand(32, 4, generator=torch.Generator().manual_seed(0))
    cert = bound_certificate(target, x, norm=Norm.L2, method="crown")
    with torch.no_grad():
        pred = target(x).argmax(1)
    gen = torch.Generator().manual_seed(1)
    for _ in range(50):
        direction = torch.randn(32, 4, generator=gen)
        direction = direction / direction.norm(dim=1, keepdim=True)
        point = (x + cert.radius[:, None] * direction).clamp(0, 1)
        with torch.no_grad():
            keeps = target(point).argmax(1) == pred
        assert bool(keeps[cert.pred >= 0].all())
    assert np.isfinite(cert.radius.numpy()).all()
