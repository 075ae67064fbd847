"""Indicators of attack failure (bench.core.indicators; Pintor et al., NeurIPS 2022): each one
raised in the rows of a sweep on a model built to raise it, and none on the plain LeNet under
PGD-40 and AutoAttack's ``standard`` at its 100 steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from torch import nn

from bench.api import benchmark
from bench.core.attack_registry import ATTACKS, AttackSpec
from bench.core.indicators import CATALOG, split
from bench.core.norms import Norm
from bench.core.result import AttackResult
from bench.core.target import Target
from bench.evaluation import EvalData
from bench.records import AttackedModel, PreparedTarget
from bench.runner import run_cell
from tests.conftest import Register, make_cell, summary_values
from tests.masking import Noisy, Quantised


def run(model: nn.Module, attacks: list[Any], eps: list[float], tmp_path: Path, cache: Path,
        n_eval: int = 60) -> pd.DataFrame:
    tables = [{"name": a} if isinstance(a, str) else a for a in attacks]
    rows = benchmark(model, attacks=[{"eps": eps, **t} for t in tables], n_eval=n_eval,
                     out=tmp_path / "out", cache_dir=cache, progress=False)
    return rows[rows["cascade_member"].isna()]


def codes(rows: pd.DataFrame) -> dict[tuple[str, float], list[str]]:
    return {(a, e): split(f) for a, e, f in zip(rows["attack"], rows["eps"], rows["flags"])}


def test_every_code_has_a_threshold_an_explanation_and_a_remedy() -> None:
    for code, indicator in CATALOG.items():
        assert code == indicator.code and " " not in code
        assert indicator.threshold and indicator.explanation and indicator.remedy


def none_on_the_plain_lenet(lenet: Target, tmp_path: Path, cache_dir: Path,
                            cascade: dict[str, Any], n_eval: int) -> None:
    """PGD-40, ``standard`` and ``rapid`` at eps 0.1 on the plain LeNet raise no indicator,
    and ``rapid`` skips Square; ``cascade``: the cascades' budgets."""
    rows = run(lenet.model, [{"name": "pgd", "params": {"steps": 40}},
                             {"name": "standard", "params": cascade},
                             {"name": "standard", "params": {**cascade, "version": "rapid"}}],
               [0.1], tmp_path, cache_dir, n_eval=n_eval)
    assert len(rows) == 3 and rows["robust_acc"].between(0.2, 0.95).all()
    assert rows["flags"].isna().all(), rows[["attack", "attack_params", "flags"]]
    rapid = rows[rows["attack_params"].str.contains("rapid")].iloc[0]
    assert rapid["decision"].startswith("square skipped on ")


def test_none_on_the_plain_lenet_at_full_steps(lenet: Target, tmp_path: Path,
                                               cache_dir: Path) -> None:
    """AutoAttack's 100 steps with fewer targets and queries (3 and 300; the benchmark
    tests/benchmarks/test_indicators_budget.py runs the papers' own budgets)."""
    none_on_the_plain_lenet(lenet, tmp_path, cache_dir,
                            {"steps": 100, "target_classes": 3, "queries": 300}, n_eval=30)


def test_zero_grad_unconstrained_and_black_box_on_input_quantisation(
        lenet: Target, tmp_path: Path, cache_dir: Path) -> None:
    rows = run(Quantised(lenet.model), [
        {"name": "pgd", "params": {"steps": 10, "random_start": False}},
        {"name": "standard", "eps": [0.25],
         "params": {"version": "rapid", "steps": 10, "probe_queries": 50, "queries": 200}}],
        [0.25, 1.0], tmp_path, cache_dir)
    found = codes(rows)
    assert "zero-grad" in found[("pgd", 0.25)] and "unconstrained" not in found[("pgd", 0.25)]
    assert {"zero-grad", "unconstrained"} <= set(found[("pgd", 1.0)])
    assert {"zero-grad", "black-box-wins"} <= set(found[("standard", 0.25)])
    decision = rows[rows["attack"] == "standard"]["decision"].iloc[0]
    assert decision.startswith("square ran on ") and "zero-grad" in decision


def test_unstable_on_a_randomised_model(lenet: Target, tmp_path: Path, cache_dir: Path
                                        ) -> None:
    rows = run(Noisy(lenet.model), [{"name": "fgsm"}], [0.1], tmp_path, cache_dir)
    assert all("unstable" in c for c in codes(rows).values())


def test_incomplete_when_the_budget_is_cut_short(lenet: Target, tmp_path: Path,
                                                 cache_dir: Path) -> None:
    """PGD's 4 steps of 0.01 cannot reach eps 0.1; its 40 (the plain-LeNet test) can."""
    rows = run(lenet.model, [{"name": "pgd", "params": {"steps": 4, "step_size": 0.01}},
                             "fgsm"], [0.1], tmp_path, cache_dir)
    found = codes(rows)
    assert found[("pgd", 0.1)] == ["incomplete"]
    assert found[("fgsm", 0.1)] == []  # one step has no tail to judge


def test_near_chance_on_a_target_that_guesses(tmp_path: Path, cache_dir: Path) -> None:
    constant = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    nn.init.zeros_(constant[1].weight)
    nn.init.zeros_(constant[1].bias)  # every digit is a 0: 10% clean accuracy
    rows = run(constant, ["fgsm"], [0.1], tmp_path, cache_dir)
    assert "near-chance" in codes(rows)[("fgsm", 0.1)]


def test_near_chance_on_a_discriminator_averages_its_two_directions() -> None:
    from leaderboards.compare import eps_flags

    def pair(model: str, real: float, fake: float) -> list[dict[str, Any]]:
        return [summary_values(f"{model}-{d}", model=model, target_kind="discriminator",
                               direction=d, clean_acc=acc, robust_acc=0.0)
                for d, acc in (("real->fake", real), ("fake->real", fake))]

    rows = pd.DataFrame(pair("equilibrium", 0.55, 0.52) + pair("lopsided", 0.95, 0.3))
    flags = eps_flags(rows)
    assert flags["equilibrium-real->fake"] == flags["equilibrium-fake->real"] == ["near-chance"]
    assert flags["lopsided-real->fake"] == []  # 0.625 balanced: clear of chance + 10%


def test_silent_success_when_the_returned_point_is_not_the_one_that_crossed(
        register: Register, lenet: Target, digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    def returns_the_start(target: Target, x: torch.Tensor, y: torch.Tensor, *, eps: float,
                          norm: Norm, generator: torch.Generator, params: Any,
                          y_target: Any = None) -> AttackResult:
        zeros = torch.zeros(len(x))
        crossed = torch.ones(len(x), dtype=torch.bool)  # it says an iterate crossed...
        return AttackResult(x.clone(), torch.zeros(len(x), dtype=torch.bool), zeros, zeros,
                            zeros, 0, 0, artifacts={"crossed": crossed})  # ...returns x

    register(ATTACKS, "forgetful", AttackSpec("forgetful", returns_the_start,
                                              ATTACKS.get("fgsm").params_cls, (Norm.LINF,)))
    x, y = digits[0][::5], digits[1][::5]
    prepared = PreparedTarget(lenet, lenet, lenet.predict_logits(x).argmax(1), y)
    result = run_cell(make_cell("forgetful"), prepared, EvalData(x, y, torch.arange(len(y))),
                      AttackedModel(lenet, lenet, "eager", 16), device=torch.device("cpu"),
                      run_id="r")
    assert split(result.summary.flags) == ["silent-success"]
    honest = run_cell(make_cell("pgd", params={"steps": 10, "early_stop": True}), prepared,
                      EvalData(x, y, torch.arange(len(y))),
                      AttackedModel(lenet, lenet, "eager", 16), device=torch.device("cpu"),
                      run_id="r")
    assert "silent-success" not in split(honest.summary.flags)


@pytest.mark.parametrize("name", ["pgd", "apgd"])
def test_attacks_report_every_crossing_they_return(name: str, lenet: Target,
                                                   digits: tuple[torch.Tensor, torch.Tensor]
                                                   ) -> None:
    from attacks import run_attack

    x, y = digits
    res = run_attack(name, lenet, x, y, eps=0.1, params={"steps": 10})
    crossed = res.artifacts["crossed"]
    assert 0 < int(crossed.sum()) and not bool((crossed & ~res.success).any())
    assert not bool((res.artifacts["improving"] & res.success).any())


def test_the_readme_lists_every_indicator_as_the_catalog_has_it() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for code, indicator in CATALOG.items():
        assert f"| `{code}` | {indicator.threshold} | {indicator.explanation} |" in readme, code
