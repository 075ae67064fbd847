"""Sweep configs: TOML → a frozen :class:`SweepConfig` → :class:`Cell` s.

A cell is one dataset × target × defense × threat × attack × eps × seed (× direction, for a GAN
discriminator target); its ``cell_id`` hashes everything that determines its result, so a re-run
skips cells already stored.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib.resources
import itertools
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from torch import nn

from attacks import ATTACKS, Attack, AttackSpec, ThreatModel
from bench import defaults
from bench.core.attack_registry import check_threat
from bench.core.checkpoints import config_hash
from bench.core.errors import BadInput, ConfigError, UnknownName
from bench.core.fastpath import FastPathOptions
from bench.core.measure import Precision
from bench.core.target import TargetKind
from bench.core.usermodels import KINDS, OUTPUTS, UserModel
from bench.core.zoo import ZOO
from defenses import DEFENSES
from generative.discriminator import DIRECTIONS, Direction
from generative.models import gans


class ThreatMode(enum.StrEnum):
    """How a defended target is attacked (the row's ``threat`` column): white-box through the
    whole defended target, or crafted on the undefended base (or a ``source`` model)."""

    ADAPTIVE = "adaptive"
    TRANSFER = "transfer"


PRECISIONS = tuple(p.value for p in Precision)
THREAT_MODES = tuple(m.value for m in ThreatMode)
CELL_ID_VERSION = 1

_SWEEP_KEYS = {"name", "seed", "dataset", "train_dataset", "split", "n_eval", "precision",
               "device", "batch_size", "channels_last", "compile", "draws", "claim_ttl",
               "certify"}
_TARGET_KEYS = {"model", "defenses", "threats", "directions"}
_ATTACK_KEYS = {"name", "norm", "eps", "params", "source", "certify"}
CERTIFY_METHODS = ("ibp", "crown-ibp", "crown")
"""What ``certify`` may name: the bounds of :mod:`bench.core.bounds` (``""``: none)."""
_DEFENSE_KEYS = {"name", "label", "params"}
_MODEL_KEYS = {"name", "factory", "kwargs", "weights", "input_shape", "num_classes", "bounds",
               "mean", "std", "kind", "output", "generator", "latent_shape", "output_range",
               "randomised", "preprocess", "bpda", "description", "paper", "label_only"}
_KIND_KEYS = {"classifier": ({"num_classes"}, set()),
              "discriminator": ({"generator"}, {"output", "generator"}),
              "generator": ({"latent_shape"}, {"latent_shape", "output_range"})}
"""Per kind of user model: its required keys, and the kind-specific keys it may have."""


def target_kind(model: str, models: Mapping[str, UserModel] | None = None) -> TargetKind:
    """``classifier`` for a user model (``models``, a sweep's ``[[models]]``) or a zoo
    classifier, ``discriminator`` for a zoo GAN (its discriminator is attacked); any other name
    raises, listing the zoo and the user models."""
    if models and model in models:
        kind = models[model].kind
        if kind == "generator":
            raise ConfigError(f"model {model!r} is a generator; attack the discriminator whose "
                              f"'generator' it is")
        return "discriminator" if kind == "discriminator" else "classifier"
    try:
        return ZOO.get(model).kind
    except UnknownName as exc:
        if models:
            raise UnknownName(f"{exc}; models of this config: {', '.join(models)}") from None
        raise


@dataclass(frozen=True)
class TargetConfig:
    """A ``[[targets]]`` entry. ``modes``: its ``threats`` key, how each defended version is
    attacked. ``directions``: for a GAN discriminator, which of ``real->fake`` /
    ``fake->real`` to attack (both by default); empty for a classifier."""

    model: str
    defenses: tuple[str, ...] = ("none",)
    modes: tuple[ThreatMode, ...] = (ThreatMode.ADAPTIVE,)
    directions: tuple[Direction, ...] = ()
    kind: TargetKind = "classifier"


@dataclass(frozen=True)
class DefenseConfig:
    """A defense as a sweep uses it: ``label`` names it in targets and results."""

    label: str
    name: str
    params_json: str  # canonical JSON of the defense's full params dataclass

    @property
    def params(self) -> dict[str, Any]:
        return dict(json.loads(self.params_json))

    @property
    def identity(self) -> str:
        """What the defended target depends on ("" for the undefended baseline)."""
        if self.name == "none":
            return ""
        return json.dumps({"name": self.name, "params": self.params}, sort_keys=True)


def params_json(params: Any) -> str:
    """Canonical JSON of a full params dataclass (what a cell's identity hashes)."""
    return json.dumps(dataclasses.asdict(params), sort_keys=True)


@dataclass(frozen=True)
class AttackConfig:
    """An ``[[attacks]]`` entry: the attack with its params parsed, at each of its budgets."""

    spec: AttackSpec
    threats: tuple[ThreatModel, ...]
    params: Any  # the attack's frozen params dataclass
    source: str = ""  # the model(s) the attack is crafted on (transfer), "+"-joined; "" = the target
    certify: str | None = None  # its rows' certified bound (None: the sweep's ``certify``)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def sources(self) -> tuple[str, ...]:
        """The transfer source models (several: an ensemble averaging their logits)."""
        return split_sources(self.source)

    @property
    def params_json(self) -> str:
        return params_json(self.params)

    def at(self, threat: ThreatModel) -> Attack:
        return Attack(self.spec, threat, self.params)


class Origin(enum.Enum):
    """Where a sweep's model comes from (:meth:`SweepConfig.origin`)."""

    USER = "the user's own model"
    ZOO_GAN = "a zoo GAN, trained by advbench"
    ZOO_CLASSIFIER = "a zoo classifier, trained by advbench"


@dataclass(frozen=True)
class SweepConfig:
    name: str
    seeds: tuple[int, ...]
    datasets: tuple[str, ...]
    train_dataset: str | None
    split: str
    n_eval: int
    precision: Precision
    device: str
    batch_size: int
    targets: tuple[TargetConfig, ...]
    attacks: tuple[AttackConfig, ...]
    defenses: tuple[DefenseConfig, ...] = ()
    fast: FastPathOptions = FastPathOptions()
    """How attacked models run: channels_last, torch.compile, automatic batch size."""
    models: tuple[UserModel, ...] = ()
    """The user's own models (``[[models]]``), usable wherever a zoo name is."""
    draws: int = defaults.DRAWS
    """Forward passes a randomised target's predictions are judged over."""
    certify: str = ""
    """The certified lower bound beside each row (``ibp``, ``crown-ibp``, ``crown``; ``""``:
    none); an ``[[attacks]]`` entry's ``certify`` overrides it for its rows."""
    claim_ttl: float = defaults.CLAIM_TTL_S
    """Seconds an unrenewed claim on a cell lasts before another sweep may take it over."""

    @property
    def user_models(self) -> dict[str, UserModel]:
        return {m.name: m for m in self.models}

    def user_model(self, name: str) -> UserModel | None:
        return self.user_models.get(name)

    def origin(self, model: str) -> Origin:
        """Where the target or source ``model`` comes from: the one place that decides between
        the user's own model, a zoo GAN (its discriminator is attacked) and a zoo classifier."""
        if model in self.user_models:
            return Origin.USER
        return Origin.ZOO_GAN if ZOO.get(model).kind == "discriminator" else Origin.ZOO_CLASSIFIER

    def defense(self, label: str) -> DefenseConfig:
        for d in self.defenses:
            if d.label == label:
                return d
        raise ConfigError(f"no defense labelled {label!r}")


@dataclass(frozen=True)
class Cell:
    """One unit of work; everything its result depends on."""

    sweep: str
    dataset: str
    train_dataset: str
    split: str
    n_eval: int
    model: str
    defense: str
    threat: ThreatMode  # how it is attacked; ``attack.threat`` is the norm and budget
    attack: Attack  # params parsed, threat model checked
    seed: int
    precision: Precision
    source: str = ""
    defense_params: str = ""  # DefenseConfig.identity
    direction: Direction | Literal[""] = ""  # discriminators only
    user_model: UserModel | None = None  # ``model`` is the user's own (``[[models]]``)
    user_sources: tuple[UserModel, ...] = ()  # the sources that are the user's own
    member: str = ""  # a cascade's member: the row of that member, read from the cascade's run
    draws: int = defaults.DRAWS  # forward passes a randomised target's predictions are judged over
    certify: str = ""  # the certified bound beside the row (bench.core.bounds); "" = none

    @property
    def threat_model(self) -> ThreatModel:
        return self.attack.threat

    @property
    def sources(self) -> tuple[str, ...]:
        return split_sources(self.source)

    @property
    def attack_name(self) -> str:
        return self.attack.name

    @property
    def params_json(self) -> str:
        return params_json(self.attack.params)

    @property
    def cell_id(self) -> str:
        extra: dict[str, str] = {"defense_params": self.defense_params} if self.defense_params \
            else {}
        if self.direction:
            extra["direction"] = self.direction
        if self.user_model is not None:
            extra["model_identity"] = self.user_model.identity
        if self.user_sources:
            extra["source_identity"] = "+".join(u.identity for u in self.user_sources)
        if self.member:
            extra["member"] = self.member
        if self.draws != defaults.DRAWS:
            extra["draws"] = str(self.draws)
        if self.certify:
            extra["certify"] = self.certify
        return config_hash({**extra,
            "v": CELL_ID_VERSION, "dataset": self.dataset, "train_dataset": self.train_dataset,
            "split": self.split, "n_eval": self.n_eval, "model": self.model,
            "defense": self.defense, "threat": self.threat, "attack": self.attack.name,
            "params": self.params_json, "norm": self.threat_model.norm.value,
            "eps": self.threat_model.eps, "seed": self.seed, "precision": self.precision,
            "source": self.source,
        })


def _type_error(where: str, key: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"{where}: {key!r} must be {expected}, got {value!r}")


def _check_keys(where: str, table: Any, allowed: set[str], required: set[str]) -> None:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} must be a table, got {table!r}")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r}; allowed keys: {', '.join(sorted(allowed))}"
        )
    missing = sorted(required - set(table))
    if missing:
        raise ConfigError(f"{where}: missing required key {missing[0]!r}")


def _str_list(where: str, key: str, value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) for v in items):
        raise _type_error(where, key, "a string or a non-empty list of strings", value)
    return tuple(items)


INT64_MAX = 2**63 - 1
"""The largest integer the results schema stores (int64): checked before any work starts."""


def _int(where: str, key: str, value: Any, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not \
            minimum <= value <= INT64_MAX:
        raise _type_error(where, key, f"an integer in [{minimum}, 2**63 - 1]", value)
    return value


def parse_config(data: Mapping[str, Any], source: str = "config", *,
                 base_dir: Path | None = None,
                 modules: Mapping[str, nn.Module] | None = None) -> SweepConfig:
    """Validate a parsed TOML document; every error names the file and the offending key.

    ``base_dir``: where ``[[models]]`` paths and modules are found (the config file's folder).
    ``modules``: in-memory networks that ``factory = "python"`` entries name (Python API).
    """
    _check_keys(source, data, {"sweep", "targets", "attacks", "defenses", "models"},
                {"sweep", "targets", "attacks"})
    sweep = data["sweep"]
    where = f"{source} [sweep]"
    _check_keys(where, sweep, _SWEEP_KEYS, {"name"})
    models = _parse_models(source, data.get("models", []), base_dir or Path("."), modules or {})
    defense_configs = _parse_defenses(source, data.get("defenses", []))
    targets = _parse_targets(source, data["targets"], defense_configs, models)
    attacks = _parse_attacks(source, data["attacks"], models)
    batch_raw = sweep.get("batch_size", defaults.BATCH_SIZE)
    if batch_raw != "auto" and (not isinstance(batch_raw, int) or isinstance(batch_raw, bool)
                                or batch_raw < 1):
        raise _type_error(where, "batch_size", 'an integer >= 1 or "auto"', batch_raw)
    try:
        fast = FastPathOptions(
            channels_last=FastPathOptions.check_choice("channels_last",
                                                       sweep.get("channels_last", "auto")),
            compile=FastPathOptions.check_choice("compile", sweep.get("compile", False)),
            batch_size=batch_raw)
    except BadInput as exc:
        raise ConfigError(f"{where}: {exc}") from None
    config = SweepConfig(
        **_parse_sweep(where, sweep), batch_size=defaults.BATCH_SIZE if batch_raw == "auto" else batch_raw,
        targets=targets, attacks=attacks, defenses=tuple(defense_configs), fast=fast,
        models=tuple(models.values()))
    _check_only_on(source, config)
    _check_label_only(source, config)
    return config


def _check_label_only(source: str, config: SweepConfig) -> None:
    """A target declared ``label_only`` is attacked only by attacks that read its label alone,
    or by transfer from another model."""
    label_only = sorted(m.name for m in config.models if m.label_only)
    if not label_only:
        return
    allowed = ", ".join(n for n in ATTACKS.names() if ATTACKS.get(n).label_only)
    for attack in config.attacks:
        if attack.spec.label_only:
            continue
        read = set(attack.sources) if attack.source else {t.model for t in config.targets}
        for model in sorted(read & set(label_only)):
            raise ConfigError(
                f"{source}: model {model!r} is label_only, but attack {attack.name!r} reads "
                f"more than its label; attack it with {allowed}, or by transfer from a model "
                f"that is not label_only (an [[attacks]] entry with a 'source')")


def _check_only_on(source: str, config: SweepConfig) -> None:
    """An attack of particular defenses (``only_on``) needs a target behind one of them."""
    used = {config.defense(label).name for target in config.targets
            for label in target.defenses}
    for attack in config.attacks:
        only_on = attack.spec.only_on
        if only_on and not used & set(only_on):
            raise ConfigError(f"{source}: attack {attack.name!r} attacks targets behind "
                              f"{' or '.join(only_on)}; no [[targets]] entry has one")


def _parse_sweep(where: str, sweep: Mapping[str, Any]) -> dict[str, Any]:
    """The scalar settings of ``[sweep]``."""
    name = sweep["name"]
    if not isinstance(name, str) or not name:
        raise _type_error(where, "name", "a non-empty string", name)
    seeds_raw = sweep.get("seed", 0)
    seeds = tuple(_int(where, "seed", s, 0) for s in (
        seeds_raw if isinstance(seeds_raw, list) else [seeds_raw]))
    if not seeds:
        raise _type_error(where, "seed", "an integer or a non-empty list of integers", seeds_raw)
    train_dataset = sweep.get("train_dataset")
    if train_dataset is not None and not isinstance(train_dataset, str):
        raise _type_error(where, "train_dataset", "a dataset name", train_dataset)
    split = sweep.get("split", "test")
    if split not in ("test", "train"):
        raise _type_error(where, "split", "'test' or 'train'", split)
    precision = sweep.get("precision", "fp32")
    if precision not in PRECISIONS:
        raise _type_error(where, "precision", " | ".join(map(repr, PRECISIONS)), precision)
    precision = Precision(precision)
    device = sweep.get("device", "auto")
    if not isinstance(device, str) or not (device in ("auto", "cpu") or device.startswith("cuda")):
        raise _type_error(where, "device", "'auto', 'cpu', 'cuda' or 'cuda:N'", device)
    return {"name": name, "seeds": seeds,
            "datasets": _str_list(where, "dataset", sweep.get("dataset", "mnist5k")),
            "train_dataset": train_dataset, "split": split,
            "n_eval": _int(where, "n_eval", sweep.get("n_eval", defaults.N_EVAL), 1),
            "precision": precision, "device": device,
            "draws": _int(where, "draws", sweep.get("draws", defaults.DRAWS), 1),
            "certify": _certify(where, sweep.get("certify", "none")) or "",
            "claim_ttl": _seconds(where, "claim_ttl",
                                  sweep.get("claim_ttl", defaults.CLAIM_TTL_S))}


def _certify(where: str, value: Any) -> str | None:
    """A ``certify`` setting: a method of :data:`CERTIFY_METHODS`, ``"none"`` (→ ``""``), or
    absent (``None``)."""
    if value is None:
        return None
    if value == "none":
        return ""
    if value not in CERTIFY_METHODS:
        raise _type_error(where, "certify", " | ".join(repr(m) for m in (
            *CERTIFY_METHODS, "none")), value)
    return str(value)


def _seconds(where: str, key: str, value: Any) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < 1e9:
        raise _type_error(where, key, "a number of seconds > 0", value)
    return float(value)


def _numbers(where: str, key: str, value: Any, length: int | None = None) -> tuple[float, ...]:
    if not isinstance(value, list) or not value or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value) or (
            length is not None and len(value) != length):
        size = f"{length} numbers" if length else "a non-empty list of numbers"
        raise _type_error(where, key, size, value)
    return tuple(float(v) for v in value)


def _about(where: str, m: Mapping[str, Any]) -> dict[str, Any]:
    """A user model's optional ``description`` and ``paper`` (a link), shown on its published
    page; not part of its identity."""
    out = {}
    for key in ("description", "paper"):
        value = m.get(key, "")
        if not isinstance(value, str):
            raise _type_error(where, key, "a string", value)
        out[key] = value
    return out


def _defense_keys(where: str, m: Mapping[str, Any]) -> dict[str, Any]:
    """A user model's own defense: ``randomised`` (its forward draws randomness),
    ``preprocess`` (a ``module:callable`` step on pixels before the network) and ``bpda``
    (the step's differentiable stand-in: ``module:callable`` or ``"identity"``)."""
    randomised, label_only = m.get("randomised", False), m.get("label_only", False)
    for key, flag in (("randomised", randomised), ("label_only", label_only)):
        if not isinstance(flag, bool):
            raise _type_error(where, key, "true or false", flag)
    found = {}
    for key in ("preprocess", "bpda"):
        value = m.get(key, "")
        if not isinstance(value, str) or (value and value != "identity" and (
                ":" not in value or key == "preprocess" and value == "identity")):
            raise _type_error(where, key, "'module:callable'" + (
                " or 'identity'" if key == "bpda" else ""), value)
        found[key] = value
    if found["bpda"] and not found["preprocess"]:
        raise ConfigError(f"{where}: 'bpda' is the stand-in of a 'preprocess' step; declare the "
                          f"step too")
    return {"randomised": randomised, "label_only": label_only, **found}


def _parse_models(source: str, raw: Any, base_dir: Path, modules: Mapping[str, nn.Module]
                  ) -> dict[str, UserModel]:
    """``[[models]]``: the user's own networks (:class:`bench.core.usermodels.UserModel`)."""
    if not isinstance(raw, list):
        raise ConfigError(f"{source}: [[models]] must be an array of tables")
    out: dict[str, UserModel] = {}
    for i, m in enumerate(raw):
        mw = f"{source} [[models]] #{i + 1}"
        _check_keys(mw, m, _MODEL_KEYS, {"name", "factory", "input_shape"})
        _check_model_label(mw, m["name"], m["factory"], out, modules)
        out[m["name"]] = _parse_model(mw, m, base_dir, modules)
    return _pair_discriminators(source, out)


def _check_model_label(mw: str, name: Any, factory: Any, out: Mapping[str, UserModel],
                       modules: Mapping[str, nn.Module]) -> None:
    """A model's label is an identifier of its own, no zoo name; its factory a spec string
    (``python`` exactly for a module passed in from Python)."""
    if not isinstance(name, str) or not name or not name.replace("-", "_").replace(
            ".", "_").isidentifier():
        raise _type_error(mw, "name", "a label of letters, digits, '_', '-', '.'", name)
    if name in out:
        raise ConfigError(f"{mw}: two models are labelled {name!r}; give each its own")
    if name in ZOO:
        raise ConfigError(f"{mw}: {name!r} is a zoo model's name; label yours differently")
    if not isinstance(factory, str) or (factory == "python") != (name in modules):
        raise _type_error(mw, "factory", "'module:callable', 'torchvision:<name>' or "
                          "'timm:<name>'", factory)


def _model_kind(mw: str, m: Mapping[str, Any]) -> str:
    """The entry's kind, its keys checked against what that kind needs and allows."""
    kind = m.get("kind", "classifier")
    if kind not in KINDS:
        raise ConfigError(f"{mw}: kind {kind!r} is not supported for your own models; use "
                          f"{', '.join(map(repr, KINDS))}")
    required, own = _KIND_KEYS[kind]
    foreign = sorted(k for k in set(m) - own for other, (_, keys) in _KIND_KEYS.items()
                     if other != kind and k in keys)
    if foreign:
        raise ConfigError(f"{mw}: {foreign[0]!r} does not apply to a {kind}")
    missing = sorted(required - set(m))
    if missing:
        raise ConfigError(f"{mw}: a {kind} needs {missing[0]!r}")
    return str(kind)


def _parse_model(mw: str, m: Mapping[str, Any], base_dir: Path,
                 modules: Mapping[str, nn.Module]) -> UserModel:
    """One ``[[models]]`` entry, every field checked."""
    name, kind = m["name"], _model_kind(mw, m)
    output = m.get("output", "logit")
    if output not in OUTPUTS:
        raise _type_error(mw, "output", " or ".join(map(repr, OUTPUTS)), output)
    shape = tuple(int(v) for v in _numbers(mw, "input_shape", m["input_shape"]))
    if len(shape) != 3 or min(shape) < 1:
        raise _type_error(mw, "input_shape", "[channels, height, width]", m["input_shape"])
    kwargs = m.get("kwargs", {})
    if not isinstance(kwargs, Mapping):
        raise _type_error(mw, "kwargs", "a table of keyword arguments", kwargs)
    weights = m.get("weights")
    if weights is not None and not isinstance(weights, str):
        raise _type_error(mw, "weights", "a file path", weights)
    bounds = _numbers(mw, "bounds", m.get("bounds", [0.0, 1.0]), 2)
    if not bounds[0] < bounds[1]:
        raise _type_error(mw, "bounds", "[lo, hi] with lo < hi", m["bounds"])
    norm = {k: _numbers(mw, k, m[k], shape[0]) if k in m else None for k in ("mean", "std")}
    if norm["std"] is not None and min(norm["std"]) <= 0:
        raise _type_error(mw, "std", "positive numbers", m["std"])
    latent = tuple(int(v) for v in _numbers(mw, "latent_shape", m.get("latent_shape", [1])))
    out_range = _numbers(mw, "output_range", m.get("output_range", [-1.0, 1.0]), 2)
    if min(latent) < 1 or not out_range[0] < out_range[1]:
        raise _type_error(mw, "latent_shape / output_range",
                          "positive sizes / [lo, hi] with lo < hi",
                          [m.get("latent_shape"), m.get("output_range")])
    return UserModel(
        name=name, factory=m["factory"], input_shape=shape,
        num_classes=2 if kind != "classifier" else _int(mw, "num_classes", m["num_classes"], 2),
        kwargs_json=json.dumps(dict(kwargs), sort_keys=True),
        weights=(base_dir / weights) if weights else None, bounds=(bounds[0], bounds[1]),
        mean=norm["mean"], std=norm["std"], kind=kind, base_dir=base_dir,
        module=modules.get(name), output=output, generator=m.get("generator", ""),
        latent_shape=latent if kind == "generator" else (),
        output_range=(out_range[0], out_range[1]), **_defense_keys(mw, m), **_about(mw, m))


def _pair_discriminators(source: str, out: dict[str, UserModel]) -> dict[str, UserModel]:
    """Each user discriminator with the identity of its generator (a ``[[models]]`` entry of
    kind generator making images of the discriminator's shape)."""
    for label, model in out.items():
        if model.kind != "discriminator":
            continue
        partner = out.get(model.generator)
        if partner is None or partner.kind != "generator":
            raise ConfigError(f"{source} [[models]] {label!r}: generator {model.generator!r} "
                              f"is not a [[models]] entry of kind \"generator\"")
        if partner.input_shape != model.input_shape:
            raise ConfigError(f"{source} [[models]] {label!r}: its generator "
                              f"{model.generator!r} declares images {list(partner.input_shape)}"
                              f", the discriminator takes {list(model.input_shape)}")
        out[label] = dataclasses.replace(model, generator_identity=partner.identity)
    return out


def _parse_targets(source: str, raw: Any, defense_configs: list[DefenseConfig],
                   models: Mapping[str, UserModel]) -> tuple[TargetConfig, ...]:
    """``[[targets]]``; a defense a target names without a ``[[defenses]]`` entry is added to
    ``defense_configs`` with its default params."""
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{source}: [[targets]] must list at least one target")
    targets = []
    for i, t in enumerate(raw):
        tw = f"{source} [[targets]] #{i + 1}"
        _check_keys(tw, t, _TARGET_KEYS, {"model"})
        if not isinstance(t["model"], str):
            raise _type_error(tw, "model", "a model name", t["model"])
        try:
            kind = target_kind(t["model"], models)
        except UnknownName as exc:
            raise ConfigError(f"{tw}: {exc}") from None
        defenses = _str_list(tw, "defenses", t.get("defenses", ["none"]))
        for label in defenses:
            _resolve_defense(tw, label, defense_configs)
        modes = _str_list(tw, "threats", t.get("threats", ["adaptive"]))
        for mode in modes:
            if mode not in THREAT_MODES:
                raise _type_error(tw, "threats", "a list of 'adaptive' / 'transfer'", t["threats"])
        targets.append(TargetConfig(t["model"], defenses, tuple(map(ThreatMode, modes)),
                                    _parse_directions(tw, t, kind), kind))
    return tuple(targets)


def _parse_directions(where: str, table: Mapping[str, Any], kind: TargetKind
                      ) -> tuple[Direction, ...]:
    """A discriminator's attacked directions (both by default); a classifier has none."""
    if kind != "discriminator":
        if "directions" in table:
            raise ConfigError(f"{where}: 'directions' applies to GAN discriminators "
                              f"({', '.join(gans())}), not to classifier "
                              f"{table['model']!r}")
        return ()
    directions = _str_list(where, "directions", table.get("directions", [d.value for d in DIRECTIONS]))
    for direction in directions:
        if direction not in DIRECTIONS:
            raise _type_error(where, "directions", " and/or ".join(repr(d.value) for d in DIRECTIONS),
                              table["directions"])
    return tuple(dict.fromkeys(map(Direction, directions)))


def _resolve_defense(where: str, label: str, defense_configs: list[DefenseConfig]) -> None:
    """A target's defense: a ``[[defenses]]`` label, or a registered name (default params)."""
    labels = {d.label for d in defense_configs}
    if label in labels:
        return
    if label not in DEFENSES:
        try:
            DEFENSES.get(label)
        except UnknownName as exc:
            raise ConfigError(
                f"{where}: {exc}; a target may also name the label of a [[defenses]] "
                f"entry{' (' + ', '.join(sorted(labels)) + ')' if labels else ''}"
            ) from None
    spec = DEFENSES.get(label)
    defense_configs.append(DefenseConfig(spec.name, spec.name, params_json(spec.make_params({}))))


def _parse_attacks(source: str, raw: Any, models: Mapping[str, UserModel]
                   ) -> tuple[AttackConfig, ...]:
    """``[[attacks]]``: each attack's params parsed and its threat models checked, once."""
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{source}: [[attacks]] must list at least one attack")
    return tuple(_parse_attack(f"{source} [[attacks]] #{i + 1}", a, models)
                 for i, a in enumerate(raw))


def _parse_attack(where: str, table: Any, models: Mapping[str, UserModel]) -> AttackConfig:
    _check_keys(where, table, _ATTACK_KEYS, {"name"})
    if not isinstance(table["name"], str):
        raise _type_error(where, "name", "an attack name", table["name"])
    spec = ATTACKS.get(table["name"])
    eps_raw = table.get("eps")
    if eps_raw is None and not spec.minimal:
        raise ConfigError(f"{where}: attack {spec.name!r} needs 'eps' (a number or a list)")
    eps_list = eps_raw if isinstance(eps_raw, list) else [eps_raw]
    if not eps_list and not spec.minimal:
        raise _type_error(where, "eps", "a number or a non-empty list of numbers", eps_raw)
    if spec.minimal:
        # One minimal-perturbation run; robust accuracy at each eps is derived from its norms.
        eps_list = [None] + [e for e in eps_list if e is not None]
    for e in eps_list:
        if isinstance(e, bool) or not isinstance(e, (int, float, str, type(None))):
            raise _type_error(where, "eps", "numbers (or strings like \"8/255\")", eps_raw)
    try:
        threats = tuple(ThreatModel.parse(table.get("norm", "linf"), e) for e in eps_list)
        for threat in threats:
            check_threat(spec, threat)
        params = spec.make_params(table.get("params", {}))
    except ValueError as exc:  # BadInput and ConfigError are ValueErrors
        raise ConfigError(f"{where}: {exc}") from None
    source_model = _parse_source(where, table.get("source", ""), models)
    certify = _certify(where, table.get("certify"))
    if certify and any(t.norm.value not in ("linf", "l2") for t in threats):
        raise ConfigError(f"{where}: certify = {certify!r} bounds Linf and L2 balls; this "
                          f"attack's norm is {threats[0].norm.value}")
    return AttackConfig(spec, threats, params, source_model, certify)


def split_sources(source: str) -> tuple[str, ...]:
    """A cell's ``source`` (``"a+b"``) as its models."""
    return tuple(source.split("+")) if source else ()


def _parse_source(where: str, raw: Any, models: Mapping[str, UserModel]) -> str:
    """``source``: a model name or a list of them (an ensemble), canonical ``"a+b"``."""
    if raw == "":
        return ""
    names = [raw] if isinstance(raw, str) else raw
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n
                                                           for n in names):
        raise _type_error(where, "source", "a model name or a list of model names", raw)
    if len(set(names)) != len(names) or any("+" in n for n in names):
        raise _type_error(where, "source", "distinct model names without '+'", raw)
    try:
        kinds = {target_kind(n, models) for n in names}
    except UnknownName as exc:
        raise ConfigError(f"{where}: source: {exc}") from None
    if len(kinds) > 1:
        raise ConfigError(f"{where}: source {names!r} mixes classifiers and discriminators; "
                          f"an ensemble's logits are averaged, so its models are of one kind")
    return "+".join(names)


def _parse_defenses(source: str, raw: Any) -> list[DefenseConfig]:
    """``[[defenses]]`` entries: a registered ``name``, an optional ``label``, ``params``."""
    if not isinstance(raw, list):
        raise ConfigError(f"{source}: [[defenses]] must be an array of tables")
    out: list[DefenseConfig] = []
    for i, d in enumerate(raw):
        dw = f"{source} [[defenses]] #{i + 1}"
        _check_keys(dw, d, _DEFENSE_KEYS, {"name"})
        if not isinstance(d["name"], str):
            raise _type_error(dw, "name", "a defense name", d["name"])
        spec = DEFENSES.get(d["name"])
        label = d.get("label", spec.name)
        if not isinstance(label, str) or not label or not label.replace("-", "_").replace(
                ".", "_").replace("@", "_").isidentifier():
            raise _type_error(dw, "label", "a name of letters, digits, '_', '-', '.', '@'", label)
        if any(o.label == label for o in out):
            raise ConfigError(f"{dw}: label {label!r} is used twice; give each entry its own")
        if label in DEFENSES and label != spec.name:
            raise ConfigError(f"{dw}: label {label!r} is another registered defense's name")
        out.append(DefenseConfig(label, spec.name,
                                 params_json(spec.make_params(d.get("params", {})))))
    return out


def load_config(path: str | Path) -> SweepConfig:
    """Read and validate a sweep TOML file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: invalid TOML: {exc}") from None
    return parse_config(data, source=p.name, base_dir=p.resolve().parent)


def preset_names() -> list[str]:
    files = importlib.resources.files("bench.presets").iterdir()
    return sorted(f.name[:-5] for f in files if f.name.endswith(".toml"))


def load_preset(name: str) -> SweepConfig:
    """A built-in sweep (``advbench run --preset NAME``)."""
    if name not in preset_names():
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(preset_names())}")
    text = importlib.resources.files("bench.presets").joinpath(f"{name}.toml").read_text()
    return parse_config(tomllib.loads(text), source=f"preset {name}")


def _cell_certify(config: SweepConfig, attack: AttackConfig, threat: ThreatModel) -> str:
    """The bound a cell's row carries: its attack entry's, else the sweep's where the norm is
    one the bounds take (a sweep-wide ``certify`` skips L0 and L1 rows)."""
    if attack.certify is not None:
        return attack.certify
    return config.certify if threat.norm.value in ("linf", "l2") else ""


def expand_cells(config: SweepConfig) -> list[Cell]:
    """All cells of a sweep, in a deterministic order (targets grouped so each trains once)."""
    cells = []
    for dataset, target, seed in itertools.product(config.datasets, config.targets, config.seeds):
        train_dataset = config.train_dataset or dataset
        for defense, mode in itertools.product(target.defenses, target.modes):
            identity = config.defense(defense).identity
            if not identity and mode is ThreatMode.TRANSFER:
                continue  # transfer from the undefended model to itself is the adaptive attack
            for attack in config.attacks:
                if attack.source and mode != target.modes[0]:
                    continue  # crafted on another model: one transfer cell per defense
                only_on = attack.spec.only_on
                if only_on and config.defense(defense).name not in only_on:
                    continue  # an attack of one defense (SmoothAdv) runs on that one
                directions: tuple[Direction | Literal[""], ...] = target.directions or ("",)
                for tm, direction in itertools.product(attack.threats, directions):
                    cell = Cell(
                        config.name, dataset, train_dataset, config.split, config.n_eval,
                        target.model, defense, ThreatMode.TRANSFER if attack.source else mode,
                        attack.at(tm), seed, config.precision,
                        attack.source, identity, direction,
                        config.user_model(target.model),
                        tuple(u for u in map(config.user_model, attack.sources) if u),
                        draws=config.draws,
                        certify=_cell_certify(config, attack, tm),
                    )
                    cells.append(cell)
                    cascade = attack.spec.cascade
                    if cascade is not None:  # one row per member, after the cascade's own
                        cells += [dataclasses.replace(cell, member=m.name)
                                  for m in cascade(attack.params, cell.threat_model.norm)]
    return cells
