"""The worker: prepares targets and the models attacks are crafted on, once per sweep, then
runs cells (:func:`bench.runner.run_cell`). A pool process or a Ray task runs one
(:func:`run_group`)."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import torch

from bench.config import Cell, Origin, SweepConfig
from bench.core import hooks
from bench.core.attack_registry import FitData
from bench.core.bounds import bound_certificate
from bench.core.checkpoints import CheckpointCache, state_sha256
from bench.core.datasets import load_dataset
from bench.core.fastpath import resolve_precision, tune
from bench.core.lipschitz import median_margin_gradient
from bench.core.measure import (
    floors,
    resolve_device,
)
from bench.core.resume import PieceStore
from bench.core.target import Target, ensemble
from bench.core.training import trained_classifier
from bench.core.usermodels import ImageSampler, UserGAN, UserModel, calibrate_threshold
from bench.evaluation import EvalData, discriminator_data, discriminator_fit_data, eval_subset
from bench.records import AttackedModel, AttackRun, CellResult, PreparedTarget
from bench.runner import RunOptions, run_cell
from bench.verification import CERTIFY_DRAWS_SEED, Judgement, judge
from defenses import DEFENSES, fitted_defense
from generative.discriminator import (
    calibration_noise_seed,
)
from generative.training import GAN, trained_gan

log = logging.getLogger(__name__)


CALIBRATION_IMAGES = 1000
"""Real (and as many generated) images a critic's threshold is calibrated on."""


def _target_key(cell: Cell) -> tuple[str, str, str, int, str, str]:
    return (cell.dataset, cell.train_dataset, cell.model, cell.seed, cell.defense, cell.direction)


def _data_key(cell: Cell) -> tuple[str | int, ...]:
    """Classifiers share a dataset's evaluated samples; a discriminator's depend on its GAN."""
    if not cell.direction:
        return (cell.dataset,)
    return (cell.dataset, cell.train_dataset, cell.model, cell.seed, cell.direction)


def _attacked_key(cell: Cell) -> tuple[Any, ...]:
    """Which model a cell's attack is crafted on: a transfer source, or the target's defended
    (adaptive) or undefended (transfer) model; each is prepared once per precision."""
    if cell.source:
        return ("source", cell.train_dataset, cell.source, cell.seed, cell.precision)
    role = "defended" if cell.threat == "adaptive" else "base"
    return (role, *_target_key(cell), cell.precision)


class Worker:
    """Prepares targets and runs cells on one device; keeps trained models, GANs, fitted
    defenses, evaluated data and prepared attacked models across the cells it is given.

    ``pieces``: where long attack runs checkpoint (:mod:`bench.core.resume`).
    :meth:`prepare` trains or loads every target and transfer source, runs the clean passes and
    prepares every attacked model (fast path, batch size, floor), so that bad models fail before
    anything is written and a cell is only attack → verify → summarise (:meth:`run_one`).
    """

    def __init__(self, config: SweepConfig, options: RunOptions, run_id: str,
                 pieces: PieceStore | None = None) -> None:
        self.config = config
        self.pieces = pieces
        self.options = options
        self.run_id = run_id
        self.device = resolve_device(options.device or config.device)
        self.cache = CheckpointCache(options.cache_dir)
        self.prepared: dict[tuple[str, str, str, int, str, str], PreparedTarget] = {}
        self.data: dict[tuple[str | int, ...], EvalData] = {}
        self.models: dict[tuple[str, str, int], Target] = {}
        self.gans: dict[tuple[str, str, int], GAN | UserGAN] = {}
        self.user_targets: dict[str, Target] = {}
        self.user_samplers: dict[str, ImageSampler] = {}
        self.fit_sets: dict[tuple[str | int, ...], FitData] = {}
        self.minimal_runs: dict[str, AttackRun] = {}
        self.attacked: dict[tuple[Any, ...], AttackedModel] = {}

    def prepare_attacked(self, model: Target, precision: str, x: torch.Tensor) -> AttackedModel:
        """``model``'s fast path and batch size at ``precision`` (:func:`bench.core.fastpath.tune`)
        and its floor, measured on a batch of evaluated images ``x`` (a short warm-up: it is a
        per-row reference, not a benchmark)."""
        precision = resolve_precision(model, x, precision)
        tuned = tune(model, x, precision, self.config.fast, cap=x.shape[0])
        with model.evaluating():
            floor = floors(model, x[:tuned.batch_size], (precision,), repeats=1, warmup=2,
                           min_repeats=5)
        return AttackedModel(model, tuned.target, tuned.path.name, tuned.batch_size, floor,
                             precision)

    def zoo_model(self, train_dataset: str, model: str, seed: int) -> Target:
        """A user's model (``[[models]]``), a trained zoo classifier, or a trained GAN's
        discriminator."""
        key = (train_dataset, model, seed)
        if key in self.models:
            return self.models[key]
        origin, progress = self.config.origin(model), self.options.progress
        if origin is Origin.USER:
            user = self.config.user_model(model)
            assert user is not None
            self.models[key] = self.user_target(user, train_dataset, seed)
            if user.kind == "discriminator":
                self.gans[key] = UserGAN(self.models[key], self.user_sampler(user))
        elif origin is Origin.ZOO_GAN:
            self.gans[key] = trained_gan(model, load_dataset(train_dataset), seed=seed,
                                         device=self.device, cache=self.cache,
                                         progress=progress)
            self.models[key] = self.gans[key].target
        else:
            self.models[key], _ = trained_classifier(
                model, load_dataset(train_dataset), seed=seed, device=self.device,
                cache=self.cache, progress=progress)
        return self.models[key]

    def source_model(self, cell: Cell) -> Target:
        """The model a transfer cell's attack is crafted on: its source, or the ensemble of
        its sources (their logits averaged)."""
        models = [self.zoo_model(cell.train_dataset, s, cell.seed) for s in cell.sources]
        return models[0] if len(models) == 1 else ensemble(models, cell.source)

    def user_sampler(self, user: UserModel) -> ImageSampler:
        """The generator of a user discriminator's fakes, built once."""
        if user.generator not in self.user_samplers:
            generator = self.config.user_model(user.generator)
            assert generator is not None  # checked when the config was parsed
            self.user_samplers[user.generator] = generator.sampler(self.device)
        return self.user_samplers[user.generator]

    def user_target(self, user: UserModel, train_dataset: str, seed: int) -> Target:
        """A user's model, built once (the same for every train set and seed), except a critic,
        whose threshold is calibrated on ``train_dataset``'s real images and ``seed``'s fresh
        generated ones (:func:`bench.core.usermodels.calibrate_threshold`)."""
        if user.output != "critic" or user.kind != "discriminator":
            if user.name not in self.user_targets:
                self.user_targets[user.name] = user.target(self.device)
            return self.user_targets[user.name]
        raw = user.target(self.device)
        real = load_dataset(train_dataset).split("train").x[:CALIBRATION_IMAGES].to(self.device)
        fake = self.user_sampler(user).sample(len(real), calibration_noise_seed(seed),
                                              self.device)
        batch = self.config.batch_size
        threshold = calibrate_threshold(raw.predict_logits(real, batch)[:, 1],
                                        raw.predict_logits(fake, batch)[:, 1])
        target = user.target(self.device, threshold)
        target.card = {"critic_threshold": threshold}
        return target

    def eval_data(self, cell: Cell) -> EvalData:
        key = _data_key(cell)
        if key not in self.data:
            dataset = load_dataset(cell.dataset)
            self.data[key] = discriminator_data(
                self.gans[(cell.train_dataset, cell.model, cell.seed)], dataset, cell.split,
                cell.n_eval, cell.seed, cell.direction, self.device,
            ) if cell.direction else eval_subset(dataset, cell.split, cell.n_eval, self.device)
        return self.data[key]

    def prepare_target(self, cell: Cell) -> PreparedTarget:
        """The cell's undefended and defended target and the defended target's clean pass."""
        key = _target_key(cell)
        if key not in self.prepared:
            base = self.zoo_model(cell.train_dataset, cell.model, cell.seed)
            data = self.eval_data(cell)
            defense = self.config.defense(cell.defense)
            spec = DEFENSES.get(defense.name)
            train = load_dataset(cell.train_dataset).split("train") if spec.trainable else None
            defended = fitted_defense(spec, base, train, defense.params, seed=cell.seed,
                                      cache=self.cache, progress=self.options.progress)
            self.prepared[key] = self._prepared(cell, base, defended, data)
        return self.prepared[key]

    def _prepared(self, cell: Cell, base: Target, defended: Target, data: EvalData
                  ) -> PreparedTarget:
        """The defended target's clean pass: judged over the sweep's draws when it is
        randomised (else twice, the second pass telling whether it is randomised after all),
        its margin gradients, and its certificate when it has one."""
        batch = self.config.batch_size
        randomised = defended.randomised
        clean = judge(defended, data.x, draws=self.config.draws, seed=cell.seed,
                      batch_size=batch) if randomised else Judgement(torch.stack(
                          [defended.decide(data.x, batch) for _ in range(2)]))
        margin_grad = median_margin_gradient(defended, data.x, data.y, batch)
        started = time.perf_counter()
        certify_draws = torch.Generator(device=data.x.device).manual_seed(
            cell.seed + CERTIFY_DRAWS_SEED)
        with defended.drawing_from(certify_draws):
            certificate = defended.certify(data.x, batch)
        return PreparedTarget(
            base, defended, clean.first, data.y, margin_grad, state_sha256(defended),
            state_sha256(base), unstable=clean.unstable,
            draws=self.config.draws if randomised else 1,
            correct_every_draw=clean.every(data.y) if randomised else None,
            certificate=certificate,
            certify_s=time.perf_counter() - started if certificate is not None else None)

    def certify_bounds(self, cells: list[Cell]) -> None:
        """Each ``certify`` bound the cells ask for, once per target, method and norm, checked
        at every eps those cells have (:func:`bench.core.bounds.bound_certificate`)."""
        wanted: dict[tuple[Any, ...], tuple[Cell, set[float]]] = {}
        for cell in cells:
            if cell.certify:
                key = (_target_key(cell), cell.certify, cell.threat_model.norm)
                eps = wanted.setdefault(key, (cell, set()))[1]
                if cell.threat_model.eps is not None:
                    eps.add(float(cell.threat_model.eps))
        for (target_key, method, norm), (cell, eps) in wanted.items():
            prepared = self.prepared[target_key]
            if (method, norm.value) in prepared.bound_certificates:
                continue
            started = time.perf_counter()
            cert = bound_certificate(prepared.defended, self.eval_data(cell).x, norm=norm,
                                     method=method, eps=tuple(sorted(eps)),
                                     progress=self.options.progress)
            prepared.bound_certificates[(method, norm.value)] = (
                cert, time.perf_counter() - started)

    def prepare(self, cells: list[Cell]) -> None:
        for cell in cells:
            prepared = self.prepare_target(cell)
            key = _attacked_key(cell)
            if key not in self.attacked:
                model = (self.source_model(cell) if cell.source else
                         prepared.defended if cell.threat == "adaptive" else prepared.base)
                self.attacked[key] = self.prepare_attacked(model, cell.precision,
                                                           self.eval_data(cell).x)
        self.certify_bounds(cells)

    def fit_data(self, cell: Cell) -> FitData | None:
        if not cell.attack.spec.needs_fit_data:
            return None
        key: tuple[str | int, ...] = (cell.train_dataset,) + (
            (cell.model, cell.seed, cell.direction) if cell.direction else ())
        if key not in self.fit_sets:
            train = load_dataset(cell.train_dataset).split("train")
            self.fit_sets[key] = discriminator_fit_data(
                self.gans[(cell.train_dataset, cell.model, cell.seed)], train, cell.seed,
                cell.direction, self.device,
            ) if cell.direction else (train.x.to(self.device), train.y.to(self.device))
        return self.fit_sets[key]

    def run_one(self, cell: Cell) -> CellResult:
        """Attack one prepared cell (:meth:`prepare` must have seen it)."""
        hooks.hold(f"cell:{cell.cell_id}")
        result = run_cell(
            cell, self.prepared[_target_key(cell)], self.data[_data_key(cell)],
            self.attacked[_attacked_key(cell)], device=self.device, run_id=self.run_id,
            progress=self.options.progress, fit_data=self.fit_data(cell),
            minimal_runs=self.minimal_runs, pieces=self.pieces)
        result.artifacts = {k: v.detach().cpu() for k, v in result.artifacts.items()}
        log.info("%s %s@%s robust_acc=%.4f", cell.attack_name, cell.threat_model.norm.value,
                 cell.threat_model.eps_display, result.summary.robust_acc)
        return result


_reused: dict[tuple[str, str], Worker] = {}
"""This process's worker of the sweep run it last served (a pool process or a Ray worker runs
many tasks of one sweep: models, data and clean passes are prepared once, not per task)."""


def run_group(config: SweepConfig, options: RunOptions, run_id: str, cells: list[Cell],
              pieces: PieceStore | None = None) -> list[CellResult]:
    """Prepare and run ``cells`` (what a pool process or a Ray task runs), in this process's
    worker of the sweep run ``run_id``."""
    key = (run_id, str(options.out))
    if key not in _reused:
        _reused.clear()
        _reused[key] = Worker(config, dataclasses.replace(options, progress=False), run_id,
                              pieces)
    worker = _reused[key]
    worker.pieces = pieces
    worker.prepare(cells)
    return [worker.run_one(cell) for cell in cells]
