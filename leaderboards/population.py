"""What a number measured: the one definition every reader of the results groups rows by.

A summary row measures one attack (:data:`ATTACK`, under a ``threat``) on one *population*
(:data:`POPULATION`): a target (dataset, kind, model, direction), its defense, and what fixes
the evaluated weights and samples. Boards, ``advbench compare``, the spread over seeds and
``publish`` derive their grouping from the three keys here:

- (a) :data:`POPULATION`: rows that agree on it measured the same weights on the same samples
  at the same precision; only such rows make one figure (a board row, a worst case).
  Precision is part of it: the user chose it.
- (b) :data:`SPREAD`: the population less the seed and what the seed changes (the weights it
  trained or fitted); rows agreeing on it and differing in their seed are summarised as
  ``mean [min–max] over seeds``, never pooled.
- (c) :data:`PAIRING`: a defended row is compared with the undefended (``none``) row that
  agrees on it: the same attack on the same samples of the same base weights.

What the runner chose by timing (the execution path), the device, the CPU and the software
versions are :data:`RECORDED` in every row and shown, never split on: every adversarial is
verified on the model itself with a fresh fp32 forward, so they change the time a number took,
not the number.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

TARGET = ("dataset", "target_kind", "model", "direction")
"""What a row is about: the evaluated data set and target (a discriminator's direction)."""

DEFENSE = ("defense", "defense_params")

MEASURED = ("model_source", "weights_sha256", "train_dataset", "split", "n_samples", "seed",
            "precision", "draws")
"""Which weights (their source and SHA-256), trained on what, evaluated on which samples, at
which seed and precision, and over how many draws of a randomised target's forward."""

POPULATION = (*TARGET, *DEFENSE, *MEASURED)
"""(a) The population key: what must be equal for rows to make one figure."""

SEED_VARYING = ("seed", "weights_sha256", "base_weights_sha256")
"""What a seed changes: the seed itself and the weights trained or fitted with it."""

SPREAD = tuple(k for k in POPULATION if k not in SEED_VARYING)
"""(b) The spread key: rows agreeing on it and differing in the seed are one spread."""

ATTACK = ("attack", "attack_params", "targeted", "norm", "eps", "eps_display", "source_model",
          "cascade_member")
"""What a column measures: the attack, its params and budget, the model it was crafted on."""

PAIRING = (*(k for k in POPULATION if k not in (*DEFENSE, "weights_sha256")),
           "base_weights_sha256", *ATTACK)
"""(c) The pairing key of a defended row and its baseline: everything but the defense and the
defended weights, with the base weights in their place (a baseline's base weights are its
own). The threat is not in it: the baseline is attacked white-box, a defended row either way."""

CURVE = (*POPULATION, "threat", *(k for k in ATTACK if k not in ("eps", "eps_display")))
"""Rows that differ only in eps: one robustness curve (which must not rise with eps)."""

RECORDED = ("fast_path", "device", "batch_size", "torch_version", "advbench_version", "git_sha")
"""Recorded in every row and shown, never grouped by."""

TEXT_KEYS = ("direction", "model_source", "weights_sha256", "base_weights_sha256",
             "train_dataset", "defense_params", "source_model", "cascade_member", "fast_path")
"""Key columns that may be null (a classifier's direction, a row of an older schema): filled
with "" before grouping, so that nulls group together."""


NUMBER_KEYS = {"draws": 1}
"""Number keys that may be null, and the value a null stands for when grouping: a
deterministic target's prediction is one pass."""


def keyed(rows: pd.DataFrame, keys: Iterable[str] = (*TEXT_KEYS, *NUMBER_KEYS)
          ) -> pd.DataFrame:
    """``rows`` with the nullable text keys among ``keys`` made "" where null, and the
    nullable number keys their :data:`NUMBER_KEYS` value (a copy)."""
    out = rows.copy()
    for key in keys:
        if key in TEXT_KEYS and key in out.columns:
            out[key] = out[key].astype(object).where(out[key].notna(), "")
        elif key in NUMBER_KEYS and key in out.columns:
            out[key] = out[key].fillna(NUMBER_KEYS[key]).astype("int64")
    return out


def present(keys: Iterable[str], rows: pd.DataFrame) -> list[str]:
    """The ``keys`` that ``rows`` has as columns, in order."""
    return [k for k in keys if k in rows.columns]


__all__ = ["ATTACK", "CURVE", "PAIRING", "POPULATION", "RECORDED", "SEED_VARYING", "SPREAD",
           "keyed", "present"]
