"""The sweep's semantic checks: what :mod:`bench.config` (which checks each table's keys,
types and values) cannot know without loading data and building models. Everything here runs
before any training or writing."""

from __future__ import annotations

import torch

from bench.config import Origin, SweepConfig, target_kind
from bench.core.datasets import Dataset, load_dataset
from bench.core.errors import BadInput
from bench.core.target import Target
from bench.core.training import check_compatible, make_target
from bench.core.usermodels import UserModel
from bench.core.zoo import classifier_spec
from bench.evaluation import evaluated_split
from defenses import DEFENSES
from generative.models import gan_spec
from generative.training import build_gan


def checked_user_target(user: UserModel, dataset: Dataset) -> Target:
    """The user's model built, loaded and probed, after checking it takes ``dataset``'s images
    and classes."""
    if tuple(user.input_shape) != tuple(dataset.input_shape):
        raise BadInput(f"model {user.name!r} declares input_shape {list(user.input_shape)} but "
                       f"dataset {dataset.name!r} has images of shape "
                       f"{list(dataset.input_shape)}")
    if user.kind == "classifier" and user.num_classes != dataset.num_classes:
        raise BadInput(f"model {user.name!r} declares {user.num_classes} classes but dataset "
                       f"{dataset.name!r} has {dataset.num_classes}")
    lo, hi = user.bounds
    if lo > 0.0 or hi < 1.0:
        raise BadInput(f"model {user.name!r} takes pixels in [{lo:g}, {hi:g}], but advbench's "
                       f"datasets are in [0, 1]; declare bounds = [0, 1] and put any rescaling "
                       f"in mean/std")
    return user.target(torch.device("cpu"))


def untrained_target(config: SweepConfig, model: str, dataset: Dataset) -> Target:
    """``model`` built for ``dataset`` as it will be attacked, before any training: the user's
    own (loaded and probed), a zoo GAN's discriminator or a zoo classifier, each checked
    against the data."""
    origin = config.origin(model)
    if origin is Origin.USER:
        user = config.user_model(model)
        assert user is not None
        return checked_user_target(user, dataset)
    if origin is Origin.ZOO_GAN:
        gan = build_gan(gan_spec(model), dataset.input_shape)
        if gan.recipe.critic:  # checked untrained: any threshold will do
            gan.card["critic_threshold"] = 0.0
        return gan.target
    spec = classifier_spec(model)
    check_compatible(spec, dataset)
    return make_target(spec, dataset, spec.build(dataset.num_classes))


def check_user_generators(config: SweepConfig) -> None:
    """Every user discriminator's generator builds, loads and makes images of its shape."""
    for model in config.models:
        if model.kind == "discriminator":
            generator = config.user_model(model.generator)
            assert generator is not None  # checked when the config was parsed
            generator.sampler(torch.device("cpu"))


def train_split_users(config: SweepConfig) -> list[str]:
    """What in the sweep trains or fits on a train split, each as a phrase for an error
    message; empty when test data is enough (a user's own model, attacked without a fit)."""
    users = []
    for t in config.targets:
        user = config.user_model(t.model)
        if config.origin(t.model) is not Origin.USER:
            users.append(f"target {t.model!r} (a zoo model advbench trains)")
        elif user is not None and user.kind == "discriminator" and user.output == "critic":
            users.append(f"target {t.model!r} (a critic whose threshold is calibrated on real "
                         f"training images)")
        for label in t.defenses:
            if DEFENSES.get(config.defense(label).name).trainable:
                users.append(f"defense {label!r} (fitted on training data)")
    for attack in config.attacks:
        if attack.spec.needs_fit_data:
            users.append(f"attack {attack.name!r} (fits on training data)")
        for source in attack.sources:
            if config.origin(source) is not Origin.USER:
                users.append(f"transfer source {source!r} (a zoo model advbench trains)")
    return list(dict.fromkeys(users))


def check_train_split(config: SweepConfig, dataset: Dataset) -> None:
    """Raise :class:`BadInput` when something in the sweep fits on training data (named) and
    the train set has no train split, or a train set does not match ``dataset``."""
    users = train_split_users(config)
    if not users and config.train_dataset is None:
        return
    train = load_dataset(config.train_dataset or dataset.name)
    if users and train.train is None:
        more = f" (and {len(users) - 1} more)" if len(users) > 1 else ""
        raise BadInput(f"dataset {train.name!r} has no train split, which {users[0]}{more} "
                       f"needs; set train_dataset to a dataset with one (e.g. \"mnist5k\")")
    if train.num_classes != dataset.num_classes or train.input_shape != dataset.input_shape:
        raise BadInput(
            f"train_dataset {train.name!r} ({train.input_shape}, {train.num_classes} classes) "
            f"does not match dataset {dataset.name!r} ({dataset.input_shape}, "
            f"{dataset.num_classes} classes)"
        )


def check_sweep(config: SweepConfig) -> None:
    """Raise :class:`BadInput` for a parsed sweep that cannot run: data sets that do not load
    or do not match their train set, a train split missing where something fits on one,
    targets that do not fit the data, defenses that cannot wrap a target, transfer sources of
    the wrong kind, budgets beyond the data's bounds."""
    for name in config.datasets + ((config.train_dataset,) if config.train_dataset else ()):
        load_dataset(name)
    for dataset_name in config.datasets:
        dataset = load_dataset(dataset_name)
        dataset.split(config.split)
        check_train_split(config, dataset)
        for t in config.targets:
            untrained = untrained_target(config, t.model, dataset)
            for label in t.defenses:
                d = config.defense(label)
                defense = DEFENSES.get(d.name)
                defense.check(untrained, defense.make_params(d.params))
        evaluated_split(dataset, config.split, config.n_eval)
    check_user_generators(config)
    models = config.user_models
    for attack in config.attacks:
        for source in filter(None, map(config.user_model, attack.sources)):
            for dataset_name in config.datasets:
                checked_user_target(source, load_dataset(dataset_name))
        for t in config.targets:
            kind = target_kind(attack.sources[0], models) if attack.source else t.kind
            if kind != t.kind:
                raise BadInput(
                    f"attack {attack.name!r} is crafted on {attack.source!r}, a {kind}, but "
                    f"target {t.model!r} is a {t.kind}; a transfer source must be of the "
                    f"target's kind")
        for threat in attack.threats:
            for dataset_name in config.datasets:
                threat.check_against((0.0, 1.0), load_dataset(dataset_name).input_shape)
