"""Frozen params dataclasses built from config tables, shared by attacks and defenses.

Each attack and defense declares its parameters as a frozen dataclass with the paper's defaults.
:func:`parse_params` builds one from a TOML table, naming unknown keys and wrong types in the
error.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

from bench.core.errors import ConfigError


def parse_params(cls: type, params: Mapping[str, Any] | Any, owner: str) -> Any:
    """Build ``cls`` from a mapping (``None`` = defaults). ``owner`` names it in errors, e.g.
    ``"attack 'pgd'"``."""
    if params is None:
        return cls()
    if isinstance(params, cls):
        return params
    if not isinstance(params, Mapping):
        raise ConfigError(f"params for {owner} must be a table, got {params!r}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(
            f"unknown parameter(s) {', '.join(map(repr, unknown))} for {owner}; "
            f"known: {', '.join(sorted(known)) or '(none)'}"
        )
    hints = typing.get_type_hints(cls)
    for key, value in params.items():
        _check_type(owner, key, value, hints[key])
    try:
        return cls(**params)
    except ConfigError:
        raise
    except ValueError as exc:  # a __post_init__ check (BadInput is a ValueError)
        raise ConfigError(f"{owner}: {exc}") from None


def _check_type(owner: str, key: str, value: Any, hint: Any) -> None:
    """Check a config value against a field's annotation (bool, int, float, str, dict, None)."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    allowed = typing.get_args(hint) if union else (hint,)
    ok = False
    for kind in allowed:
        origin = typing.get_origin(kind) or kind
        if kind is type(None):
            ok |= value is None
        elif kind is bool:
            ok |= isinstance(value, bool)
        elif kind is float:
            ok |= isinstance(value, (int, float)) and not isinstance(value, bool)
        elif origin is tuple:
            ok |= isinstance(value, (list, tuple))
        elif isinstance(origin, type):
            ok |= isinstance(value, origin) and not (isinstance(value, bool) and origin is not bool)
        else:
            ok = True
    if not ok:
        names = " or ".join(getattr(typing.get_origin(k) or k, "__name__", str(k)) for k in allowed)
        raise ConfigError(f"parameter {key!r} of {owner} must be {names}, got {value!r}")
