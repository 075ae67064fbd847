"""Transfer sweeps: sources as one model or an ensemble, the ensemble's logits, and the
source → target matrix (CLI, Markdown, published page)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
import torch

from bench.cli import main
from bench.config import expand_cells, parse_config
from bench.core.checkpoints import CheckpointCache
from bench.core.datasets import Dataset
from bench.core.errors import BadInput, ConfigError
from bench.core.target import Target, ensemble
from bench.core.training import trained_classifier
from leaderboards import load
from leaderboards.transfer import matrices, transfer_rows
from tests.conftest import make_tiny_target

SWEEP = """
[sweep]
name = "transfer"
dataset = "mnist5k"
n_eval = 100

[[targets]]
model = "lenet"

[[targets]]
model = "mlp"

[[attacks]]
name = "mifgsm"
eps = [0.2]
params = { steps = 5 }
"""


def with_sources(*sources: str) -> str:
    return SWEEP + "".join(f'\n[[attacks]]\nname = "mifgsm"\neps = [0.2]\nparams = '
                           f'{{ steps = 5 }}\nsource = {s}\n' for s in sources)


@pytest.fixture(scope="module")
def mlp(mnist5k: Dataset, cache_dir: Path) -> Target:
    return trained_classifier("mlp", mnist5k, seed=0, device=torch.device("cpu"),
                              cache=CheckpointCache(cache_dir), progress=False)[0]


def test_sources_parse_to_one_canonical_name() -> None:
    cells = expand_cells(parse_config(tomllib.loads(with_sources('["lenet", "mlp"]',
                                                                 '"mlp"', '["mlp"]'))))
    sourced = [c for c in cells if c.source]
    assert [c.source for c in sourced] == ["lenet+mlp", "mlp", "mlp"] * 2
    assert sourced[0].sources == ("lenet", "mlp")
    assert all(c.threat == "transfer" for c in sourced)
    assert sourced[1].cell_id == sourced[2].cell_id  # a list of one is that model
    assert sourced[0].cell_id != sourced[1].cell_id


@pytest.mark.parametrize("source,message", [
    ('["lenet", "lenet"]', "distinct"), ('"lenet+mlp"', "without '\\+'"), ("[]", "list"),
    ('["lenet", "dcgan"]', "mixes classifiers and discriminators"), ('["nope"]', "nope"),
    ("3", "model name")])
def test_bad_sources_are_refused(source: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(tomllib.loads(with_sources(source)))


def test_ensemble_averages_its_members_logits(lenet: Target, mlp: Target,
                                              digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    x = digits[0][:32]
    both = ensemble([lenet, mlp], "lenet+mlp")
    with torch.no_grad(), both.evaluating():
        expected = (lenet(x) + mlp(x)) / 2
        assert torch.allclose(both(x), expected, atol=1e-5)
    x.requires_grad_(True)
    both(x).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    cifar = Target(torch.nn.Flatten(), num_classes=10, input_shape=(3, 32, 32), name="c")
    with pytest.raises(BadInput, match="must agree"):
        ensemble([lenet, cifar], "x")
    random = make_tiny_target()
    random.declared_random = True
    with pytest.raises(BadInput, match="deterministic"):
        ensemble([lenet, random], "x")


def test_transfer_matrix_from_a_sweep(lenet: Target, mlp: Target, cache_dir: Path,
                                      tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    config = tmp_path / "transfer.toml"
    config.write_text(with_sources('"lenet"', '"mlp"', '["lenet", "mlp"]'))
    out = tmp_path / "results"
    assert main(["run", str(config), "--out", str(out), "--no-progress",
                 "--cache-dir", str(cache_dir)]) == 0
    rows = load(out)
    capsys.readouterr()
    found = matrices(transfer_rows(rows))
    assert len(found) == 1
    title, table = found[0]
    assert "mifgsm linf@0.2" in title
    assert list(table.index) == ["clean", "white-box", "lenet", "lenet+mlp", "mlp"]
    assert sorted(table.columns) == ["lenet", "mlp"]
    for model in ("lenet", "mlp"):
        row = rows[(rows["model"] == model) & rows["source_model"].isna()].iloc[0]
        assert table.loc["clean", model] == pytest.approx(100 * row["clean_acc"])
        assert table.loc["white-box", model] == pytest.approx(100 * row["robust_acc"])
        # crafted on the same weights by the transfer path: the white-box number again
        assert table.loc[model, model] == pytest.approx(table.loc["white-box", model])
    # another architecture's adversarials fool fewer than the target's own
    assert table.loc["mlp", "lenet"] > table.loc["white-box", "lenet"]
    assert table.loc["lenet", "mlp"] > table.loc["white-box", "mlp"]
    assert (table.loc["white-box"] < table.loc["clean"]).all()

    assert main(["transfer", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| lenet+mlp" in text and "white-box" in text
    site = tmp_path / "site"
    assert main(["publish", str(out), "--out", str(site)]) == 0
    page = (site / "transfer.html").read_text()
    assert "lenet+mlp" in page and 'href="transfer.html"' in (site / "index.html").read_text()


def test_results_without_transfer_say_so(tmp_path: Path, cache_dir: Path, lenet: Any,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "plain.toml"
    config.write_text(SWEEP.replace('[[targets]]\nmodel = "mlp"\n', ""))
    out = tmp_path / "results"
    assert main(["run", str(config), "--out", str(out), "--no-progress",
                 "--cache-dir", str(cache_dir)]) == 0
    capsys.readouterr()
    assert main(["transfer", str(out)]) == 0
    assert "no transfer attacks" in capsys.readouterr().out
