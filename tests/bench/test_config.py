from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.config import expand_cells, load_config, load_preset, parse_config, preset_names
from bench.core.errors import BadInput, ConfigError


def base() -> dict[str, Any]:
    return {
        "sweep": {"name": "t", "seed": 0, "dataset": "mnist5k", "n_eval": 10},
        "targets": [{"model": "lenet"}],
        "attacks": [{"name": "pgd", "norm": "linf", "eps": [0.1, "8/255"],
                     "params": {"steps": 3}}],
    }


def test_quick_preset_parses() -> None:
    assert "quick" in preset_names()
    cfg = load_preset("quick")
    cells = expand_cells(cfg)
    assert {(c.attack_name, c.threat_model.eps) for c in cells} == {
        (a, e) for a in ("fgsm", "pgd") for e in (0.1, 0.2, 0.3)}
    assert cfg.n_eval == 1000 and cfg.datasets == ("mnist5k",)


def test_eps_strings_keep_their_display() -> None:
    cfg = parse_config(base())
    threats = cfg.attacks[0].threats
    assert [t.eps for t in threats] == [0.1, pytest.approx(8 / 255)]
    assert [t.eps_display for t in threats] == ["0.1", "8/255"]
    assert json.loads(cfg.attacks[0].params_json)["steps"] == 3  # full params, defaults filled
    assert json.loads(cfg.attacks[0].params_json)["random_start"] is True


def test_cells_and_ids() -> None:
    data = base()
    data["sweep"]["seed"] = [0, 1]
    data["targets"] = [{"model": "lenet", "defenses": ["none"], "threats": ["adaptive", "transfer"]}]
    cells = expand_cells(parse_config(data))
    assert len(cells) == 2 * 2  # 2 seeds x 2 eps; transfer onto the undefended model is skipped
    assert len({c.cell_id for c in cells}) == 4
    again = expand_cells(parse_config(data))
    assert [c.cell_id for c in cells] == [c.cell_id for c in again]
    data["attacks"][0]["params"]["steps"] = 4
    assert not {c.cell_id for c in cells} & {c.cell_id for c in expand_cells(parse_config(data))}


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d["sweep"].update(nme="x"), "unknown key 'nme'"),
    (lambda d: d["targets"][0].update(defences=["none"]), "unknown key 'defences'"),
    (lambda d: d["attacks"][0].update(epsilon=0.1), "unknown key 'epsilon'"),
    (lambda d: d["attacks"][0]["params"].update(stepz=1), "unknown parameter.*'stepz'"),
    (lambda d: d["attacks"][0]["params"].update(steps="ten"), "'steps'.*must be int"),
    (lambda d: d["attacks"][0].update(eps=[-0.1]), "eps must be a finite number >= 0"),
    (lambda d: d["attacks"][0].update(eps=[True]), "'eps' must be numbers"),
    (lambda d: d["attacks"][0].pop("eps"), "needs 'eps'"),
    (lambda d: d["attacks"][0].update(norm="l7"), "unknown norm 'l7'"),
    (lambda d: d["attacks"][0].update(name="pgf"), "unknown attack 'pgf'"),
    (lambda d: d["targets"][0].update(model="lenett"), "unknown model 'lenett'.*did you mean 'lenet'"),
    (lambda d: d["targets"][0].update(defenses=["hgd2"]), "unknown defense 'hgd2'"),
    (lambda d: d["targets"][0].update(threats=["blackbox"]), "'threats' must be"),
    (lambda d: d["sweep"].update(precision="fp8"), "'precision' must be"),
    (lambda d: d["sweep"].update(n_eval=0), "'n_eval' must be an integer in \\[1, 2\\*\\*63 - 1\\]"),
    (lambda d: d["sweep"].update(device="tpu"), "'device' must be"),
    (lambda d: d["sweep"].update(claim_ttl=0), "'claim_ttl' must be a number of seconds > 0"),
    (lambda d: d["sweep"].update(claim_ttl="3m"), "'claim_ttl' must be a number of seconds > 0"),
    (lambda d: d.pop("attacks"), "missing required key 'attacks'"),
    (lambda d: d.update(attacks=[]), "at least one attack"),
])
def test_malformed_configs_name_the_problem(mutate: Any, match: str) -> None:
    data = base()
    mutate(data)
    with pytest.raises(BadInput, match=match):
        parse_config(data)


def test_toml_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[sweep\nname = 1")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="unknown preset"):
        load_preset("quik")


def test_errors_in_later_attacks_name_the_config_file(tmp_path: Path) -> None:
    """Every [[attacks]] entry's error names the file, the transfer-source one included."""
    path = tmp_path / "two.toml"
    path.write_text("""
[sweep]
name = "two"

[[targets]]
model = "lenet"

[[attacks]]
name = "fgsm"
eps = 0.1
source = "lenet"

[[attacks]]
name = "pgd"
eps = 0.1
params = { stepz = 3 }
""")
    with pytest.raises(ConfigError, match=r"^two\.toml \[\[attacks\]\] #2: .*unknown parameter"):
        load_config(path)
