"""The CLI end to end, as a user runs it: real processes, real Parquet files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from bench.cli import main
from bench.core.zoo import ZOO, ModelSpec, TrainRecipe
from leaderboards import SUMMARY_SCHEMA, load
from tests.conftest import BrokenLinear, Register, advbench

SMALL = """
[sweep]
name = "small"
seed = 0
dataset = "mnist5k"
n_eval = 60
batch_size = 25

[[targets]]
model = "lenet"

[[attacks]]
name = "fgsm"
eps = [0.0, 0.2]

[[attacks]]
name = "pgd"
norm = "linf"
eps = [0.2]
params = { steps = 3, step_size = 0.1 }
"""


@pytest.fixture
def small_config(tmp_path: Path) -> Path:
    path = tmp_path / "small.toml"
    path.write_text(SMALL)
    return path


def test_run_writes_typed_parquet_and_prints_a_leaderboard(
        trained_lenet: Any, cache_dir: Path, small_config: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = advbench("run", str(small_config), "--out", str(out), "--no-progress",
                    cwd=tmp_path, cache=cache_dir)
    assert proc.returncode == 0, proc.stderr
    assert "3 cell(s) run, 0 already stored" in proc.stdout
    assert "| lenet" in proc.stdout and "fgsm@0.2" in proc.stdout and "worst@0.2" in proc.stdout
    files = sorted((out / "summary").glob("*.parquet"))
    assert len(files) == 3
    assert pq.read_schema(files[0]).remove_metadata() == SUMMARY_SCHEMA.remove_metadata()
    df = load(out)
    assert len(df) == 3 and df["n_samples"].eq(60).all()
    assert df["clean_acc"].dtype == "float64" and df["eps"].dtype == "float64"
    zero = df[df["eps"] == 0.0].iloc[0]
    assert zero["robust_acc"] == zero["clean_acc"]  # eps = 0 reproduces clean accuracy exactly
    assert (df["robust_acc"] <= df["clean_acc"]).all()
    pgd = df[df["attack"] == "pgd"].iloc[0]
    # early stop: fooled digits leave the loop, so at most 3 steps x 60 digits
    assert 0 < pgd["n_backward"] <= 3 * 60 and pgd["img_per_s"] > 0 and pgd["device"].startswith("cpu")
    assert pgd["torch_version"] == torch.__version__
    # the floor: the LeNet's forward+backward images/s, and the share PGD's backward passes
    # reached (PGD's steps are forward+backward passes, so it is of the floor's order)
    assert pgd["floor_img_per_s"] > 0 and 0.05 < pgd["floor_fraction"] < 3
    # every row of a classifier records its clean pass's margin-gradient norms too (one
    # clean pass: the same on all three rows); L1 >= L2 for any vector
    assert df["margin_grad_l1"].nunique() == 1 and df["margin_grad_l2"].nunique() == 1
    assert df["margin_grad_l1"].iloc[0] >= df["margin_grad_l2"].iloc[0] > 0
    assert not list(out.rglob(".*"))  # no temporary files left behind

    again = advbench("run", str(small_config), "--out", str(out), "--no-progress",
                     cwd=tmp_path, cache=cache_dir)
    assert again.returncode == 0 and "0 cell(s) run, 3 already stored" in again.stdout
    assert len(list((out / "summary").glob("*.parquet"))) == 3

    forced = advbench("run", str(small_config), "--out", str(out), "--no-progress", "--force",
                      cwd=tmp_path, cache=cache_dir)
    assert forced.returncode == 0 and "3 cell(s) run" in forced.stdout
    assert len(load(out)) == 3  # recomputed cells replace, never duplicate

    # a plain Parquet reader (as DuckDB's read_parquet('results/summary/*.parquet')) sees one
    # row per cell, and one samples file per cell
    assert pq.read_table(out / "summary").num_rows == 3
    assert len(list((out / "samples").glob("*.parquet"))) == 3

    csv = advbench("leaderboard", str(out), "--format", "csv", cwd=tmp_path, cache=cache_dir)
    assert csv.returncode == 0 and csv.stdout.startswith("dataset,target_kind,threat,norm,model")
    ranked = advbench("leaderboard", str(out), "--rank-by", "fgsm@0.2", cwd=tmp_path,
                      cache=cache_dir)
    assert ranked.returncode == 0 and "Ranked by fgsm@0.2, highest first." in ranked.stdout
    unknown = advbench("leaderboard", str(out), "--rank-by", "fgsm@0.9", cwd=tmp_path,
                       cache=cache_dir)
    assert unknown.returncode == 2 and "no leaderboard has the column 'fgsm@0.9'" in unknown.stderr


def test_list_commands(tmp_path: Path) -> None:
    proc = advbench("list", "attacks", cwd=tmp_path, cache=tmp_path)
    assert proc.returncode == 0
    assert {line.split()[0] for line in proc.stdout.splitlines()} >= {"fgsm", "bim", "pgd"}
    proc = advbench("list", "models", "res*", cwd=tmp_path, cache=tmp_path)
    assert proc.stdout.split()[0] == "resnet18_cifar"
    proc = advbench("list", "flags", cwd=tmp_path, cache=tmp_path)
    codes = [line.split()[0] for line in proc.stdout.splitlines()]
    assert proc.returncode == 0 and {"zero-grad", "black-box-wins", "near-chance"} <= set(codes)
    assert all("remedy:" in line for line in proc.stdout.splitlines())


DEFENSE_TABLE = """[[defenses]]
name = "hgd"
params = {{ {} }}

[[targets]]
defenses = ["hgd"]"""

BAD = {
    "unknown attack": ("name = \"fgsm\"", "name = \"fgsn\"", "unknown attack 'fgsn'"),
    "unknown model": ("model = \"lenet\"", "model = \"lenet5\"", "unknown model 'lenet5'"),
    "unknown dataset": ("dataset = \"mnist5k\"", "dataset = \"mnist10k\"",
                        "unknown dataset 'mnist10k'"),
    "negative eps": ("eps = [0.0, 0.2]", "eps = [-0.2]", "eps must be a finite number >= 0"),
    "eps above range": ("eps = [0.0, 0.2]", "eps = [2.0]", "exceeds the largest meaningful"),
    "mistyped key": ("n_eval = 60", "n_evals = 60", "unknown key 'n_evals'"),
    "seed beyond int64": ("seed = 0", "seed = 9223372036854775808",
                          "'seed' must be an integer in [0, 2**63 - 1]"),
    "mistyped param": ("steps = 3", "stesp = 3", "unknown parameter(s) 'stesp'"),
    "too many samples": ("n_eval = 60", "n_eval = 5000", "n_eval = 5000 exceeds the 1000"),
    "invalid toml": ("[sweep]", "[sweep", "invalid TOML"),
    "model/data mismatch": ("model = \"lenet\"", "model = \"resnet18_cifar\"",
                            "expects inputs (3, 32, 32)"),
    "unknown defense": ("model = \"lenet\"", "model = \"lenet\"\ndefenses = [\"hgdd\"]",
                        "unknown defense 'hgdd'"),
    "zero training budget": ("[[targets]]", DEFENSE_TABLE.format("epochs = 0"),
                             "a training budget of zero trains nothing"),
    "denoiser cannot wrap": ("[[targets]]", DEFENSE_TABLE.format("depth = 3"),
                             "needs H and W divisible by 8"),
    "robgan on a classifier": ("model = \"lenet\"", "model = \"lenet\"\ndefenses = [\"robgan\"]",
                               "robgan trains a zoo GAN's discriminator anew; target 'lenet' "
                               "is a classifier"),
    "classifier defense on a GAN": ("model = \"lenet\"",
                                    "model = \"dcgan\"\ndefenses = [\"fgsm_rs\"]",
                                    "adversarial training defends classifiers; target 'dcgan' is "
                                    "a GAN discriminator (its defense is robgan)"),
    "directions on a classifier": ("model = \"lenet\"",
                                   "model = \"lenet\"\ndirections = [\"real->fake\"]",
                                   "'directions' applies to GAN discriminators"),
    "unknown direction": ("model = \"lenet\"", "model = \"dcgan\"\ndirections = [\"up\"]",
                          "'directions' must be 'real->fake' and/or 'fake->real'"),
    "unknown certify method": ("n_eval = 60", "n_eval = 60\ncertify = \"milp\"",
                               "'certify' must be 'ibp' | 'crown-ibp' | 'crown' | 'none'"),
    "transfer across kinds": ("name = \"fgsm\"", "name = \"fgsm\"\nsource = \"dcgan\"",
                              "crafted on 'dcgan', a discriminator, but target 'lenet' is a "
                              "classifier"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_exits_2_with_one_line_and_no_files(case: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    old, new, message = BAD[case]
    assert old in SMALL
    config = tmp_path / "bad.toml"
    config.write_text(SMALL.replace(old, new, 1))
    out = tmp_path / "results"
    code = main(["run", str(config), "--out", str(out), "--no-progress",
                 "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("advbench: error:"), err
    assert message in lines[0]
    assert not out.exists()
    assert not (tmp_path / "cache").exists()  # nothing trained or cached for a bad request


def test_bad_input_in_a_real_process(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(SMALL.replace("n_eval = 60", "n_evals = 60"))
    proc = advbench("run", str(config), "--out", str(tmp_path / "results"), cwd=tmp_path,
                    cache=tmp_path / "cache")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "advbench: error: bad.toml [sweep]: unknown key 'n_evals'; allowed keys: batch_size, "
        "certify, channels_last, claim_ttl, compile, dataset, device, draws, n_eval, name, precision, "
        "seed, split, train_dataset"]
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("argv,message", [
    (["run", "nope.toml"], "does not exist"),
    (["leaderboard", "nowhere"], "does not exist"),
    (["run", "--preset", "nope"], "unknown preset"),
])
def test_missing_config_and_results(argv: list[str], message: str, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_damaged_results_directory_is_refused_before_writing_then_repaired(
        trained_lenet: Any, cache_dir: Path, small_config: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    assert advbench("run", str(small_config), "--out", str(out), "--no-progress",
                    cwd=tmp_path, cache=cache_dir).returncode == 0
    summary = next((out / "summary").glob("*.parquet"))
    summary.write_bytes(summary.read_bytes()[:100])  # truncated, as by a full disk
    before = _files(out)
    for command in (["run", str(small_config), "--out", str(out), "--force", "--no-progress"],
                    ["leaderboard", str(out)], ["compare", str(out)],
                    ["publish", str(out), "--out", str(tmp_path / "site")]):
        proc = advbench(*command, cwd=tmp_path, cache=cache_dir)
        assert proc.returncode == 2, (command, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and f"{summary} is not a readable Parquet file" in lines[0]
        assert "advbench doctor" in lines[0]
        assert _files(out) == before  # nothing written, nothing lost
    repaired = advbench("run", str(small_config), "--out", str(out), "--repair",
                        cwd=tmp_path, cache=cache_dir)
    assert repaired.returncode == 0, repaired.stderr
    # progress bars on, but stderr is a pipe: no bar redraws or escapes in the log
    assert "\r" not in repaired.stderr and "\x1b[" not in repaired.stderr
    assert f"moved {summary} -> {out / 'quarantine' / 'summary' / summary.name}" in repaired.stdout
    assert "1 cell(s) run, 2 already stored" in repaired.stdout  # the damaged cell, recomputed
    assert (out / "quarantine" / "summary" / summary.name).read_bytes() == before[
        str(summary.relative_to(out))]
    assert len(load(out)) == 3
    doctor = advbench("doctor", str(out), cwd=tmp_path, cache=cache_dir)
    assert doctor.returncode == 0 and "3 whole cell(s), 0 file(s) moved aside" in doctor.stdout


def test_an_out_that_is_a_file_is_refused(small_config: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results"
    out.write_text("mine")
    assert main(["run", str(small_config), "--out", str(out), "--no-progress",
                 "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a file" in err[0] and out.read_text() == "mine"
    assert not (tmp_path / "cache").exists()  # refused before any training


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any directory")
def test_an_unwritable_out_is_refused(small_config: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results"
    out.mkdir()
    out.chmod(0o500)
    try:
        assert main(["run", str(small_config), "--out", str(out), "--no-progress",
                     "--cache-dir", str(tmp_path / "cache")]) == 2
    finally:
        out.chmod(0o700)
    assert "is not writable" in capsys.readouterr().err


@pytest.mark.parametrize("mode,message", [("nan", "returned NaN or infinite logits"),
                                          ("shape", "must return [N, 10] logits")])
def test_broken_models_fail_cleanly_before_writing(mode: str, message: str, tmp_path: Path,
                                                   small_config: Path, register: Register,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    spec = ModelSpec(f"broken_{mode}", lambda n: BrokenLinear(mode), (1, 28, 28),
                     TrainRecipe(epochs=1, batch_size=500, lr=1e-3), "broken")
    register(ZOO, spec.name, spec)
    small_config.write_text(SMALL.replace("model = \"lenet\"", f"model = \"{spec.name}\""))
    out = tmp_path / "results"
    code = main(["run", str(small_config), "--out", str(out), "--no-progress",
                 "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    out.mkdir()  # a folder the user made is never removed, even when a run fails
    assert main(["run", str(small_config), "--out", str(out), "--no-progress",
                 "--cache-dir", str(tmp_path / "cache")]) == 2
    assert out.is_dir() and not list(out.iterdir())


MINIMAL_AND_UNIVERSAL = """
[sweep]
name = "more"
seed = 0
dataset = "mnist5k"
n_eval = 40

[[targets]]
model = "lenet"

[[attacks]]
name = "deepfool"
norm = "l2"
eps = [0.5, 1.0, 2.0]
params = { steps = 20 }

[[attacks]]
name = "uap"
norm = "linf"
eps = [0.3]
params = { max_passes = 1, max_fit = 300 }

[[attacks]]
name = "onepixel"
norm = "l0"
eps = [2]
params = { population = 20, generations = 2 }
"""


def test_minimal_curve_universal_artifacts_and_transfer(trained_lenet: Any, cache_dir: Path,
                                                        tmp_path: Path) -> None:
    config = tmp_path / "more.toml"
    # A transfer UAP: fitted on LeNet, evaluated on LeNet again through the 'source' key, so the
    # transfer row must reproduce the adaptive row exactly (same model, seed and data).
    config.write_text(MINIMAL_AND_UNIVERSAL + '\n[[attacks]]\nname = "uap"\nnorm = "linf"\n'
                      'eps = [0.3]\nsource = "lenet"\nparams = { max_passes = 1, max_fit = 300 }\n')
    out = tmp_path / "results"
    code = main(["run", str(config), "--out", str(out), "--no-progress",
                 "--cache-dir", str(cache_dir)])
    assert code == 0
    df = load(out)
    deepfool = df[df["attack"] == "deepfool"].sort_values("eps", na_position="first")
    assert deepfool["eps"].isna().iloc[0]  # the minimal run itself, then the derived curve
    assert list(deepfool["eps"].iloc[1:]) == [0.5, 1.0, 2.0]
    curve = list(deepfool["robust_acc"].iloc[1:])
    assert curve == sorted(curve, reverse=True)
    assert deepfool["n_forward"].nunique() == 1  # one run fills the whole curve
    assert deepfool["rho_adv"].iloc[0] > 0
    uap = df[df["attack"] == "uap"].set_index("threat")
    assert uap.loc["transfer", "source_model"] == "lenet"
    assert uap.loc["transfer", "robust_acc"] == uap.loc["adaptive", "robust_acc"]
    assert 0 < uap.loc["adaptive", "fooling_rate"] <= 1
    folders = list((out / "artifacts").iterdir())
    assert len(folders) == 2
    for folder in folders:
        assert (folder / "perturbation.safetensors").is_file()
        assert (folder / "perturbation.png").read_bytes()[:4] == b"\x89PNG"
    onepixel = df[df["attack"] == "onepixel"].iloc[0]
    assert onepixel["mean_l0"] != onepixel["mean_l0"] or onepixel["mean_l0"] <= 2  # NaN: none fooled


DEFENDED = """
[sweep]
name = "defended"
dataset = "mnist5k"
n_eval = 60
batch_size = 60

[[defenses]]
name = "hgd"
label = "hgd-tiny"
params = { attacks = ["fgsm"], epochs = 1, width = 8, eps_min = 0.1 }

[[targets]]
model = "lenet"
defenses = ["none", "hgd-tiny"]
threats = ["adaptive", "transfer"]

[[attacks]]
name = "fgsm"
eps = [0.2]
"""


def test_defended_sweep_and_compare(trained_lenet: Any, cache_dir: Path, tmp_path: Path) -> None:
    """A defense from a [[defenses]] entry, attacked adaptively and by transfer; the rows say
    which, `advbench compare` puts them beside the baseline, and a re-run fits nothing."""
    config = tmp_path / "defended.toml"
    config.write_text(DEFENDED)
    out = tmp_path / "results"
    proc = advbench("run", str(config), "--out", str(out), "--no-progress", cwd=tmp_path,
                    cache=cache_dir)
    assert proc.returncode == 0, proc.stderr
    df = load(out).sort_values(["defense", "threat"])
    assert df[["defense", "threat"]].values.tolist() == [
        ["hgd-tiny", "adaptive"], ["hgd-tiny", "transfer"], ["none", "adaptive"]]
    assert df["defense_params"].iloc[0].startswith('{"name": "hgd"')
    assert pd.isna(df["defense_params"].iloc[2])
    base = df[df["defense"] == "none"].iloc[0]
    transfer = df[(df["defense"] == "hgd-tiny") & (df["threat"] == "transfer")].iloc[0]
    assert transfer["robust_acc"] > base["robust_acc"]  # the denoiser undoes transferred FGSM
    entries = list((cache_dir / "defenses").iterdir())
    assert any((e / "card.json").is_file() for e in entries)

    proc = advbench("compare", str(out), cwd=tmp_path, cache=cache_dir)
    assert proc.returncode == 0, proc.stderr
    assert "Δ vs none [95% CI]" in proc.stdout and "hgd-tiny" in proc.stdout
    lines = [ln for ln in proc.stdout.splitlines() if "| hgd-tiny" in ln and "transfer" in ln]
    assert len(lines) == 1 and "+" in lines[0]
    proc = advbench("compare", str(out), "--format", "csv", cwd=tmp_path, cache=cache_dir)
    assert proc.stdout.splitlines()[0].startswith("dataset,model,direction,seed,attack")

    proc = advbench("run", str(config), "--out", str(out), "--no-progress", "--force",
                    cwd=tmp_path, cache=cache_dir)
    assert proc.returncode == 0, proc.stderr
    assert len(list((cache_dir / "defenses").iterdir())) == len(entries)  # loaded, not refitted
