"""The layers import-linter checks in CI cover every module of the orchestration, and the
foundation's modules are exactly those of ``bench.core``."""

from __future__ import annotations

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _layers() -> list[str]:
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    raw = config["importlinter:contract:layers"]["layers"]
    return [line.strip() for line in raw.strip().splitlines()]


def test_every_orchestration_module_is_in_one_layer_above_the_plugins() -> None:
    """Each bench/*.py module stands in exactly one of the ordered orchestration layers (above
    ``defenses``), so import-linter checks which of them may import which."""
    layers = _layers()
    above = layers[:layers.index("defenses")]
    named = [name.strip() for layer in above for name in layer.replace("|", ":").split(":")]
    modules = {f"bench.{p.stem}" for p in (ROOT / "bench").glob("*.py") if p.stem != "__init__"}
    assert sorted(named) == sorted(modules), (
        "list every bench/*.py module once in .importlinter's orchestration layers")


def test_the_foundation_is_the_bottom_layer() -> None:
    layers = _layers()
    assert layers[-1] == "bench.core"
    assert {name.strip() for name in layers[-2].split("|")} == {
        "attacks", "generative", "leaderboards"}
