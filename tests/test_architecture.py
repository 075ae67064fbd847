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


def test_every_orchestration_module_is_in_the_top_layer() -> None:
    top = {name.strip() for name in _layers()[0].split(":")}
    modules = {f"bench.{p.stem}" for p in (ROOT / "bench").glob("*.py") if p.stem != "__init__"}
    assert modules == top, "list every bench/*.py module in .importlinter's top layer"


def test_the_foundation_is_the_bottom_layer() -> None:
    layers = _layers()
    assert layers[-1] == "bench.core"
    assert {name.strip() for name in layers[-2].split("|")} == {
        "attacks", "generative", "leaderboards"}
