"""``advbench attackbench``: the attacks themselves measured against each other (AttackBench:
Cinà et al., AAAI 2025), advbench's minimum-norm attacks beside the peers' implementations of
the same attacks, in one run.

Every entry attacks the same samples through its own :class:`bench.core.budget.CallBudget`
(the same per-sample budget of forward + backward passes for all; past it a sample gets no
answer), and its distance per sample is the smallest adversarial the wrapper saw it query. The
board (:func:`leaderboards.security.board_from_distances`) ranks the entries by AttackBench's
optimality against the best distance any entry reached, with success, median distance, calls
and seconds per sample. The per-sample distances are written to Parquet.
"""

from __future__ import annotations

import importlib.util
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import torch

from attacks import run_attack
from bench.core.budget import CallBudget
from bench.core.errors import BadInput
from bench.core.norms import Norm
from bench.core.target import Target
from leaderboards.store import atomic_write

Runner = Callable[[Target, torch.Tensor, torch.Tensor, int], Any]
"""``(budgeted target, x, y, budget) -> anything``: runs one attack; what it returns is not
read (the budget wrapper saw every image it queried)."""


@dataclass(frozen=True)
class Entry:
    """One implementation of one attack: its name, library, norms and runner."""

    attack: str
    library: str
    norms: tuple[Norm, ...]
    run: Runner
    module: str = ""  # the module whose presence says the library is installed

    def available(self) -> bool:
        return not self.module or importlib.util.find_spec(self.module) is not None


def _ours(name: str, steps: Callable[[int], dict[str, Any]]) -> Callable[[Norm], Runner]:
    def for_norm(norm: Norm) -> Runner:
        def run(target: Target, x: torch.Tensor, y: torch.Tensor, budget: int) -> Any:
            return run_attack(name, target, x, y, norm=norm.value, params=steps(budget))
        return run
    return for_norm


ADV_LIB_NORMS = {Norm.L0: 0, Norm.L1: 1, Norm.L2: 2, Norm.LINF: float("inf")}


def _adv_lib_fmn(norm: Norm) -> Runner:
    def run(target: Target, x: torch.Tensor, y: torch.Tensor, budget: int) -> Any:
        from adv_lib.attacks import fmn
        return fmn(target, x, y, norm=ADV_LIB_NORMS[norm], steps=budget // 2,
                   α_init=10.0 if norm is Norm.LINF else 1.0)
    return run


def _adv_lib_ddn(norm: Norm) -> Runner:
    def run(target: Target, x: torch.Tensor, y: torch.Tensor, budget: int) -> Any:
        from adv_lib.attacks import ddn
        return ddn(target, x, y, steps=budget // 2)
    return run


def _adv_lib_alma(norm: Norm) -> Runner:
    def run(target: Target, x: torch.Tensor, y: torch.Tensor, budget: int) -> Any:
        from adv_lib.attacks import alma
        return alma(target, x, y, num_steps=budget // 2, distance=norm.value,
                    **({"init_lr_distance": 0.5} if norm is Norm.L1 else {}))
    return run


def _adv_lib_cw(norm: Norm) -> Runner:
    """adv-lib's CW at an equal share of the budget per search step (at least 10 iterations:
    its early-abort check divides by a tenth of them; the budget caps the calls either way)."""
    def run(target: Target, x: torch.Tensor, y: torch.Tensor, budget: int) -> Any:
        from adv_lib.attacks import carlini_wagner_l2
        return carlini_wagner_l2(target, x, y, binary_search_steps=CW_SEARCH,
                                 max_iterations=max(10, budget // (2 * CW_SEARCH)))
    return run


CW_SEARCH = 9
"""Binary-search steps of every CW and EAD entry; each gets an equal share of the budget (a CW
step is a forward and a backward pass, an EAD step one more forward)."""


def _foolbox(cls_name: str, per_step: int = 2, **kwargs: Any) -> Callable[[Norm], Runner]:
    def for_norm(norm: Norm) -> Runner:
        def run(target: Target, x: torch.Tensor, y: torch.Tensor, budget: int) -> Any:
            import foolbox as fb
            model = fb.PyTorchModel(target, bounds=target.bounds)
            attack = getattr(fb.attacks, cls_name)(steps=max(1, budget // per_step), **kwargs)
            return attack(model, x, y, epsilons=None)[0]
        return run
    return for_norm


def _entries() -> list[tuple[str, str, tuple[Norm, ...], Callable[[Norm], Runner], str]]:
    every = (Norm.L0, Norm.L1, Norm.L2, Norm.LINF)
    return [
        ("fmn", "advbench", every, _ours("fmn", lambda b: {"steps": b // 2}), ""),
        ("ddn", "advbench", (Norm.L2,), _ours("ddn", lambda b: {"steps": b // 2}), ""),
        ("cw", "advbench", (Norm.L2,),
         _ours("cw", lambda b: {"steps": max(1, b // (2 * CW_SEARCH)),
                                "search_steps": CW_SEARCH}), ""),
        ("ead", "advbench", (Norm.L1,),
         _ours("ead", lambda b: {"steps": max(1, b // (3 * CW_SEARCH)),
                                 "search_steps": CW_SEARCH}),
         ""),
        ("fab_t", "advbench", (Norm.L1, Norm.L2, Norm.LINF),
         _ours("fab_t", lambda b: {"steps": max(1, b // 27)}), ""),
        ("deepfool", "advbench", (Norm.L2, Norm.LINF),
         _ours("deepfool", lambda b: {"steps": 50}), ""),
        ("fmn", "adv-lib", every, _adv_lib_fmn, "adv_lib"),
        ("ddn", "adv-lib", (Norm.L2,), _adv_lib_ddn, "adv_lib"),
        ("alma", "adv-lib", (Norm.L1, Norm.L2), _adv_lib_alma, "adv_lib"),
        ("cw", "adv-lib", (Norm.L2,), _adv_lib_cw, "adv_lib"),
        ("cw", "foolbox", (Norm.L2,),
         _foolbox("L2CarliniWagnerAttack", per_step=2 * CW_SEARCH,
                  binary_search_steps=CW_SEARCH), "foolbox"),
        ("ddn", "foolbox", (Norm.L2,), _foolbox("DDNAttack"), "foolbox"),
        ("fmn", "foolbox", (Norm.L2,), _foolbox("L2FMNAttack"), "foolbox"),
        ("ead", "foolbox", (Norm.L1,),
         _foolbox("EADAttack", per_step=3 * CW_SEARCH, binary_search_steps=CW_SEARCH,
                  decision_rule="L1"), "foolbox"),
        ("fmn", "foolbox", (Norm.LINF,), _foolbox("LInfFMNAttack"), "foolbox"),
        ("fmn", "foolbox", (Norm.L1,), _foolbox("L1FMNAttack"), "foolbox"),
        ("fmn", "foolbox", (Norm.L0,), _foolbox("L0FMNAttack"), "foolbox"),
    ]


def entries(norm: Norm, libraries: tuple[str, ...] | None = None,
            attacks: tuple[str, ...] | None = None) -> list[Entry]:
    """The implementations that attack in ``norm`` (of ``libraries`` and ``attacks``; default
    every installed one)."""
    out = []
    for attack, library, norms, build, module in _entries():
        if norm in norms and (libraries is None or library in libraries) and \
                (attacks is None or attack in attacks):
            entry = Entry(attack, library, norms, build(norm), module)
            if entry.available():
                out.append(entry)
    return out


def run_entry(entry: Entry, target: Target, x: torch.Tensor, y: torch.Tensor, *, norm: Norm,
              budget: int) -> dict[str, Any]:
    """One entry under its own budget: per-sample distances, calls spent and seconds (less
    the budget wrapper's own bookkeeping, as AttackBench subtracts its own)."""
    wrapper = CallBudget(target, x, y, norm=norm, budget=budget,
                         num_classes=target.num_classes, bounds=target.bounds)
    budgeted = Target(wrapper, num_classes=target.num_classes, input_shape=target.input_shape,
                      bounds=target.bounds, name=target.name)
    started = time.perf_counter()
    with budgeted.evaluating():
        entry.run(budgeted, x, y, budget)
    seconds = time.perf_counter() - started - wrapper.overhead_s
    return {"distance": wrapper.best.cpu().numpy(), "used": wrapper.used.cpu().numpy(),
            "seconds": seconds}


def attack_bench(target: Target, x: torch.Tensor, y: torch.Tensor, *, norm: Norm,
                 budget: int = 2000, libraries: tuple[str, ...] | None = None,
                 attacks: tuple[str, ...] | None = None,
                 progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Per (entry, sample): the distance it reached (inf: none), its calls, and the entry's
    seconds per sample; every entry of ``norm`` under the same ``budget``."""
    if budget < 2:
        raise BadInput(f"budget must be >= 2 calls per sample, got {budget}")
    chosen = entries(norm, libraries, attacks)
    if not chosen:
        raise BadInput(f"no attack implementation for {norm.value} among libraries "
                       f"{', '.join(libraries or ('any',))} and attacks "
                       f"{', '.join(attacks or ('any',))}")
    clean = target.predict_logits(x).argmax(1) == y
    frames = []
    for entry in chosen:
        if progress is not None:
            progress(f"{entry.attack} ({entry.library})")
        out = run_entry(entry, target, x, y, norm=norm, budget=budget)
        frames.append(pd.DataFrame({
            "attack": entry.attack, "library": entry.library, "norm": norm.value,
            "budget": budget, "sample_idx": range(len(x)), "clean_correct": clean.cpu().numpy(),
            "distance": out["distance"], "calls": out["used"],
            "seconds_per_sample": out["seconds"] / max(len(x), 1)}))
    return pd.concat(frames, ignore_index=True)


def write(table: pd.DataFrame, path: Path) -> None:
    """The per-sample distances as Parquet (written whole or not at all)."""
    table = table.assign(distance=table["distance"].where(table["distance"].map(math.isfinite)))
    atomic_write(pa.Table.from_pandas(table, preserve_index=False), path)


__all__ = ["Entry", "attack_bench", "entries", "run_entry", "write"]
