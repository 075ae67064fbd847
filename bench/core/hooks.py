"""Test hooks: hold a worker at a named point so that fault tests know where it stopped.

With ``$ADVBENCH_TEST_HOLD = "<point prefix>@<folder>"`` the first process to reach a matching
point (``cell:<cell_id>`` before a worker runs a cell, ``checkpoint:<piece>`` after a resumable
run saved a piece) writes ``<folder>/held`` (its node and pid, as JSON) and blocks until
``<folder>/release`` exists; later processes pass (a retried task is not held again). Unset, it
costs one environment lookup.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

HOLD_ENV = "ADVBENCH_TEST_HOLD"


def hold(point: str) -> None:
    spec = os.environ.get(HOLD_ENV)
    if not spec:
        return
    wanted, _, folder = spec.rpartition("@")
    if not wanted or not point.startswith(wanted):
        return
    from bench.core.measure import node_name

    marker = Path(folder) / "held"
    try:
        with open(marker, "x") as fh:
            json.dump({"point": point, "node": node_name(), "pid": os.getpid()}, fh)
    except FileExistsError:
        return
    while not (Path(folder) / "release").exists():
        time.sleep(0.05)


__all__ = ["HOLD_ENV", "hold"]
