"""The runner: prepare targets, then for each cell a clean pass, the attack, verification and
metrics, written to the result store (DESIGN.md, "Data flow").

The runner, not the attack, has the last word: every ``x_adv`` must lie within the bounds and the
eps ball (a violation raises :class:`AttackContractError`), and success is recomputed with a fresh
fp32 forward pass of the evaluated target.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

import bench
from attacks import ATTACKS, AttackResult, ThreatModel
from attacks.norms import Norm, norm_of
from bench.checkpoints import CheckpointCache
from bench.config import Cell, SweepConfig, target_kind
from bench.datasets import Dataset, Split, load_dataset
from bench.errors import AttackContractError, BadInput
from bench.fastpath import Tuned, tune
from bench.measure import (
    autocast,
    device_name,
    floor_fraction,
    floors,
    git_sha,
    measure,
    resolve_device,
)
from bench.models import MODELS
from bench.target import Target
from bench.training import check_compatible, make_target, trained_classifier
from defenses import DEFENSES, fitted_defense
from generative.discriminator import FAKE, REAL, eval_noise_seed, fit_noise_seed
from generative.models import GANS
from generative.training import GAN, build_gan, trained_gan
from leaderboards.schema import SCHEMA_VERSION

log = logging.getLogger(__name__)

EVAL_SUBSET_SEED = 0


def _target_key(cell: Cell) -> tuple[str, str, str, int, str, str]:
    return (cell.dataset, cell.train_dataset, cell.model, cell.seed, cell.defense, cell.direction)


def _data_key(cell: Cell) -> tuple[str | int, ...]:
    """Classifiers share a dataset's evaluated samples; a discriminator's depend on its GAN."""
    if not cell.direction:
        return (cell.dataset,)
    return (cell.dataset, cell.train_dataset, cell.model, cell.seed, cell.direction)


@dataclass(frozen=True)
class RunOptions:
    """How a sweep runs: ``executor`` "local" (in process; ``workers`` > 1 = a process pool,
    by default one per visible GPU) or "ray" (``address``: None starts a local instance,
    "auto" or "host:port" joins a cluster); ``retries``: reruns of a failed pool/Ray task."""

    out: Path
    cache_dir: Path
    force: bool = False
    progress: bool = True
    device: str | None = None
    executor: str = "local"
    workers: int | None = None
    address: str | None = None
    retries: int = 2


@dataclass
class RunReport:
    """``skipped``: cells already stored; ``busy``: cells another running sweep holds;
    ``failed``: (cell_id, error) of cells whose task failed after its retries."""

    run_id: str
    cells: int
    skipped: int
    written: list[dict[str, Any]] = field(default_factory=list)
    busy: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class EvalData:
    """The evaluated samples: ``idx`` are their indices in the split."""

    x: torch.Tensor
    y: torch.Tensor
    idx: torch.Tensor


@dataclass
class PreparedTarget:
    base: Target
    defended: Target
    clean_pred: torch.Tensor
    labels: torch.Tensor

    @property
    def clean_correct(self) -> torch.Tensor:
        return self.clean_pred == self.labels


def eval_subset(dataset: Dataset, split: str, n_eval: int, device: torch.device) -> EvalData:
    """A fixed, seed-independent random subset of the split (sorted by index)."""
    part = dataset.split(split)
    if n_eval > len(part):
        raise BadInput(
            f"n_eval = {n_eval} exceeds the {len(part)} samples of {dataset.name!r}'s {split} "
            f"split; use n_eval <= {len(part)}"
        )
    perm = torch.randperm(len(part), generator=torch.Generator().manual_seed(EVAL_SUBSET_SEED))
    idx = perm[:n_eval].sort().values
    return EvalData(part.x[idx].to(device), part.y[idx].to(device), idx)


def discriminator_data(gan: GAN, dataset: Dataset, split: str, n_eval: int, seed: int,
                       direction: str, device: torch.device) -> EvalData:
    """A discriminator's evaluated samples in one direction: ``real->fake`` takes the split's
    fixed subset of real images (label 1, as :func:`eval_subset`), ``fake->real`` ``n_eval``
    samples of the GAN's generator (label 0) from noise seeded by the sweep's ``seed``."""
    if direction == "real->fake":
        real = eval_subset(dataset, split, n_eval, device)
        return EvalData(real.x, torch.full_like(real.y, REAL), real.idx)
    x = gan.sample(n_eval, eval_noise_seed(seed), device)
    return EvalData(x, torch.full((n_eval,), FAKE, dtype=torch.long, device=device),
                    torch.arange(n_eval))


def discriminator_fit_data(gan: GAN, train: Split, seed: int, direction: str,
                           device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """What an attack that fits on training data (UAP) sees for a discriminator: the real train
    images (``real->fake``) or as many fresh generator samples (``fake->real``)."""
    n = len(train)
    if direction == "real->fake":
        return train.x.to(device), torch.full((n,), REAL, dtype=torch.long, device=device)
    return (gan.sample(n, fit_noise_seed(seed), device),
            torch.full((n,), FAKE, dtype=torch.long, device=device))


def verify_adversarials(cell: Cell, x: torch.Tensor, x_adv: torch.Tensor,
                        bounds: tuple[float, float]) -> None:
    """Raise :class:`AttackContractError` unless ``x_adv`` is inside the bounds and eps ball."""
    if x_adv.shape != x.shape or x_adv.dtype != x.dtype or x_adv.device != x.device:
        raise AttackContractError(
            f"{cell.attack}: x_adv is {tuple(x_adv.shape)} {x_adv.dtype} on {x_adv.device}, "
            f"expected {tuple(x.shape)} {x.dtype} on {x.device}"
        )
    if not bool(torch.isfinite(x_adv).all()):
        raise AttackContractError(f"{cell.attack}: x_adv holds NaN or infinite values")
    lo, hi = bounds
    tol = 1e-6 * (hi - lo)
    if float(x_adv.min()) < lo - tol or float(x_adv.max()) > hi + tol:
        raise AttackContractError(
            f"{cell.attack}: x_adv leaves the bounds [{lo:g}, {hi:g}] "
            f"(min {float(x_adv.min()):g}, max {float(x_adv.max()):g})"
        )
    eps = cell.threat_model.eps
    if eps is None:
        return
    norm = cell.threat_model.norm
    dist = norm_of(x_adv - x, norm)
    limit = eps if norm is Norm.L0 else eps * (1 + 1e-5) + 1e-5 * (hi - lo)
    worst = float(dist.max()) if dist.numel() else 0.0
    if worst > limit:
        raise AttackContractError(
            f"{cell.attack}: a perturbation has {norm.value} norm {worst:.6g} > eps {eps:g}"
        )


def _median(values: torch.Tensor) -> float | None:
    return float(values.float().median()) if values.numel() else None


@dataclass
class AttackRun:
    """The raw outcome of running one attack over the evaluated samples."""

    x_adv: torch.Tensor
    y_target: torch.Tensor | None
    n_forward: int
    n_backward: int
    wall_s: float
    peak_mem_bytes: int | None
    artifacts: dict[str, torch.Tensor]


@dataclass
class CellResult:
    summary: dict[str, Any]
    samples: dict[str, Any]
    artifacts: dict[str, torch.Tensor]


def attack_samples(cell: Cell, params: Any, attacked: Target, data: EvalData, *,
                   device: torch.device, batch_size: int,
                   fit_data: tuple[torch.Tensor, torch.Tensor] | None = None,
                   progress: bool = False) -> AttackRun:
    """Run the cell's attack (with its parsed ``params``) on ``attacked`` over ``data``,
    ``batch_size`` images at a time, timed on the device.

    Attacks that fit on training data (UAP) see the whole evaluated set in one call, so that
    their one perturbation is fitted once. Streaming attacks (``spec.streams``: FGSM, BIM, PGD)
    also get the whole set in one call and keep ``batch_size`` rows busy, refilling the rows
    early stop frees. A CUDA out-of-memory error halves the batch size and retries.
    """
    spec = ATTACKS.get(cell.attack)
    if spec.needs_fit_data and fit_data is None:
        raise BadInput(f"attack {spec.name!r} fits on a training split; the sweep has none")
    extra: dict[str, Any] = {"fit_data": fit_data} if spec.needs_fit_data else {}
    generator = torch.Generator(device=device).manual_seed(cell.seed)
    n, rows = data.x.shape[0], batch_size
    whole = spec.needs_fit_data or spec.streams
    results: list[AttackResult] = []
    with measure(device) as timing, attacked.evaluating(), autocast(device, cell.precision):
        start = 0
        bar = tqdm(total=n, disable=not progress, leave=False, unit="img",
                   desc=f"{cell.attack}@{cell.threat_model.eps_display}")
        while start < n:
            chunk = n if whole else rows
            try:
                results.append(spec.fn(attacked, data.x[start:start + chunk],
                                       data.y[start:start + chunk], eps=cell.threat_model.eps,
                                       norm=cell.threat_model.norm, generator=generator,
                                       params=params, **extra,
                                       **({"batch_size": rows} if spec.streams else {})))
            except torch.cuda.OutOfMemoryError:
                if rows == 1 or spec.needs_fit_data:
                    raise
                rows = max(1, rows // 2)  # back off instead of crashing; retry this chunk
                log.warning("CUDA out of memory in %s; retrying with batch size %d",
                            cell.attack, rows)
                if spec.streams:  # the whole cell starts over, from the same random state
                    generator = torch.Generator(device=device).manual_seed(cell.seed)
                torch.cuda.empty_cache()
                continue
            bar.update(min(chunk, n - start))
            start += chunk
        bar.close()
    targets = [r.y_target for r in results if r.y_target is not None]
    artifacts = {k: v for r in results for k, v in r.artifacts.items()}
    return AttackRun(torch.cat([r.x_adv for r in results]), torch.cat(targets) if targets else None,
                     sum(r.n_forward for r in results), sum(r.n_backward for r in results),
                     timing.wall_s, timing.peak_mem_bytes, artifacts)


def within_budget(run: AttackRun, x: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
    """A minimal-perturbation run seen at budget eps: perturbations larger than eps don't count."""
    if threat.eps is None:
        return run.x_adv
    inside = norm_of(run.x_adv - x, threat.norm) <= threat.eps
    return torch.where(inside.view(-1, *([1] * (x.ndim - 1))), run.x_adv, x)


def run_cell(cell: Cell, prepared: PreparedTarget, data: EvalData, *, device: torch.device,
             batch_size: int, run_id: str, progress: bool = False,
             attacked: Target | None = None,
             fit_data: tuple[torch.Tensor, torch.Tensor] | None = None,
             minimal_runs: dict[str, AttackRun] | None = None,
             floor_of: Callable[[Target, str, torch.Tensor], dict[tuple[str, str], float]]
             | None = None,
             tune: Callable[[Target, str, torch.Tensor], Tuned] | None = None,
             ) -> CellResult:
    """Attack one cell's samples, verify, and compute its summary row and per-sample columns.

    ``attacked`` overrides the model the attack is crafted on (a transfer source); by default it
    is the defended target (adaptive) or the undefended base (transfer). ``minimal_runs`` caches
    minimal-perturbation runs so every eps of one curve reuses one run. ``floor_of(model,
    precision, x)`` measures the attacked model's floor on a batch ``x`` (:func:`bench.measure.floors`) for the
    row's floor columns. ``tune(model, precision, x)`` picks the fast path and batch size the
    attack runs with (:func:`bench.fastpath.tune`); the floor stays the plain model's, and
    verification always uses the plain model in fp32.
    """
    spec = ATTACKS.get(cell.attack)
    params = spec.make_params(json.loads(cell.params_json))
    evaluated = prepared.defended
    if attacked is None:
        attacked = prepared.defended if cell.threat == "adaptive" else prepared.base
    tuned = tune(attacked, cell.precision, data.x) if tune else None
    crafted_on = tuned.target if tuned else attacked
    rows = tuned.batch_size if tuned else batch_size
    if spec.minimal:
        key = dataclasses.replace(cell, threat_model=ThreatModel(cell.threat_model.norm, None,
                                                                 "min")).cell_id
        cache = minimal_runs if minimal_runs is not None else {}
        if key not in cache:
            cache[key] = attack_samples(cell, params, crafted_on, data, device=device,
                                        batch_size=rows, progress=progress)
        run = cache[key]
    else:
        run = attack_samples(cell, params, crafted_on, data, device=device, batch_size=rows,
                             fit_data=fit_data, progress=progress)
    x_adv = within_budget(run, data.x, cell.threat_model) if spec.minimal else run.x_adv
    verify_adversarials(cell, data.x, x_adv, evaluated.bounds)
    adv_pred = evaluated.predict_logits(x_adv, batch_size).argmax(1)
    targeted = bool(getattr(params, "targeted", False))
    if targeted:
        if run.y_target is None:
            raise AttackContractError(f"{cell.attack}: a targeted run returned no y_target")
        success = adv_pred == run.y_target
    else:
        success = adv_pred != data.y
    clean_correct = prepared.clean_correct
    adv_correct = clean_correct & (adv_pred == data.y)
    delta = x_adv - data.x
    l2, linf, l0 = (norm_of(delta, nm) for nm in (Norm.L2, Norm.LINF, Norm.L0))
    fooled = clean_correct & success
    n = data.x.shape[0]
    n_correct = int(clean_correct.sum())
    rho = l2[fooled] / norm_of(data.x[fooled], Norm.L2).clamp_min(1e-12)
    floor = floor_of(attacked, cell.precision, data.x[:rows]) if floor_of else None
    floor_kind = "forward+backward" if run.n_backward else "forward"
    summary = {
        "schema_version": SCHEMA_VERSION,
        "cell_id": cell.cell_id,
        "run_id": run_id,
        "created_at": dt.datetime.now(dt.timezone.utc),
        "dataset": cell.dataset,
        "split": cell.split,
        "n_samples": n,
        "target_kind": evaluated.kind,
        "direction": cell.direction or None,
        "model": cell.model,
        "defense": cell.defense,
        "defense_params": cell.defense_params or None,
        "threat": cell.threat,
        "source_model": cell.source or None,
        "attack": cell.attack,
        "attack_params": cell.params_json,
        "targeted": targeted,
        "norm": cell.threat_model.norm.value,
        "eps": cell.threat_model.eps,
        "eps_display": cell.threat_model.eps_display,
        "seed": cell.seed,
        "precision": cell.precision,
        "batch_size": rows,
        "fast_path": tuned.path.name if tuned else "eager",
        "clean_acc": n_correct / n,
        "robust_acc": int(adv_correct.sum()) / n,
        "success_rate": int(fooled.sum()) / n_correct if n_correct else None,
        "fooling_rate": int((adv_pred != prepared.clean_pred).sum()) / n,
        "median_l2": _median(l2[fooled]),
        "median_linf": _median(linf[fooled]),
        "mean_l0": float(l0[fooled].mean()) if bool(fooled.any()) else None,
        "rho_adv": float(rho.mean()) if rho.numel() else None,
        "n_forward": run.n_forward,
        "n_backward": run.n_backward,
        "wall_s": run.wall_s,
        "img_per_s": n / max(run.wall_s, 1e-9),
        "floor_img_per_s": floor[(floor_kind, cell.precision)] if floor else None,
        "floor_fraction": floor_fraction(run.n_forward, run.n_backward, run.wall_s, floor,
                                         cell.precision) if floor else None,
        "peak_mem_bytes": run.peak_mem_bytes,
        "device": device_name(device),
        "torch_version": torch.__version__,
        "advbench_version": bench.__version__,
        "git_sha": git_sha(),
    }
    samples = {
        "cell_id": [cell.cell_id] * n,
        "sample_idx": data.idx.numpy().astype(np.int64),
        "label": data.y.cpu().numpy().astype(np.int64),
        "clean_correct": clean_correct.cpu().numpy(),
        "adv_correct": adv_correct.cpu().numpy(),
        "success": success.cpu().numpy(),
        "l2": l2.cpu().numpy().astype(np.float32),
        "linf": linf.cpu().numpy().astype(np.float32),
        "l0": l0.cpu().numpy().astype(np.float32),
    }
    return CellResult(summary, samples, run.artifacts)


def check_sweep(config: SweepConfig) -> None:
    """Everything that can be checked before any training or writing."""
    for name in config.datasets + ((config.train_dataset,) if config.train_dataset else ()):
        load_dataset(name)
    for dataset_name in config.datasets:
        dataset = load_dataset(dataset_name)
        train = load_dataset(config.train_dataset or dataset_name)
        train.split("train")
        dataset.split(config.split)
        if train.num_classes != dataset.num_classes or train.input_shape != dataset.input_shape:
            raise BadInput(
                f"train_dataset {train.name!r} ({train.input_shape}, {train.num_classes} classes) "
                f"does not match dataset {dataset.name!r} ({dataset.input_shape}, "
                f"{dataset.num_classes} classes)"
            )
        for t in config.targets:
            if t.kind == "discriminator":
                untrained = build_gan(GANS.get(t.model), dataset.input_shape).target
            else:
                spec = MODELS.get(t.model)
                check_compatible(spec, dataset)
                untrained = make_target(spec, dataset, spec.build(dataset.num_classes))
            for label in t.defenses:
                d = config.defense(label)
                defense = DEFENSES.get(d.name)
                defense.check(untrained, defense.make_params(d.params))
        if config.n_eval > len(dataset.split(config.split)):
            eval_subset(dataset, config.split, config.n_eval, torch.device("cpu"))
    for attack in config.attacks:
        for t in config.targets:
            if attack.source and target_kind(attack.source) != t.kind:
                raise BadInput(
                    f"attack {attack.name!r} is crafted on {attack.source!r}, a "
                    f"{target_kind(attack.source)}, but target {t.model!r} is a {t.kind}; a "
                    f"transfer source must be of the target's kind")
        for threat in attack.threats:
            for dataset_name in config.datasets:
                threat.check_against((0.0, 1.0), load_dataset(dataset_name).input_shape)


class Worker:
    """Prepares targets and runs cells on one device; keeps trained models, GANs, fitted
    defenses and evaluated data across the cells it is given.

    :meth:`prepare` trains or loads every target and transfer source and runs the clean passes,
    so that bad models fail before anything is written; :meth:`run` attacks.
    """

    def __init__(self, config: SweepConfig, options: RunOptions, run_id: str) -> None:
        self.config = config
        self.options = options
        self.run_id = run_id
        self.device = resolve_device(options.device or config.device)
        self.cache = CheckpointCache(options.cache_dir)
        self.prepared: dict[tuple[str, str, str, int, str, str], PreparedTarget] = {}
        self.data: dict[tuple[str | int, ...], EvalData] = {}
        self.models: dict[tuple[str, str, int], Target] = {}
        self.gans: dict[tuple[str, str, int], GAN] = {}
        self.fit_sets: dict[tuple[str | int, ...], tuple[torch.Tensor, torch.Tensor]] = {}
        self.minimal_runs: dict[str, AttackRun] = {}
        self.floors: dict[tuple[int, str], dict[tuple[str, str], float]] = {}
        self.tuned: dict[tuple[int, str], Tuned] = {}

    def floor(self, model: Target, precision: str, x: torch.Tensor
              ) -> dict[tuple[str, str], float]:
        """``model``'s floor at ``precision``, measured once per model on a batch ``x`` of
        evaluated images (a short warm-up: it is a per-row reference, not a benchmark)."""
        key = (id(model), precision)
        if key not in self.floors:
            with model.evaluating():
                self.floors[key] = floors(model, x, (precision,), repeats=1, warmup=2,
                                          min_repeats=5)
        return self.floors[key]

    def tune(self, model: Target, precision: str, x: torch.Tensor) -> Tuned:
        """``model``'s fast path and batch size at ``precision``, chosen once per model."""
        key = (id(model), precision)
        if key not in self.tuned:
            self.tuned[key] = tune(model, x, precision, self.config.fast, cap=x.shape[0])
        return self.tuned[key]

    def zoo_model(self, train_dataset: str, model: str, seed: int) -> Target:
        """A trained zoo classifier, or a trained GAN's discriminator."""
        key = (train_dataset, model, seed)
        if key not in self.models:
            progress = self.options.progress
            if target_kind(model) == "discriminator":
                self.gans[key] = trained_gan(model, load_dataset(train_dataset), seed=seed,
                                             device=self.device, cache=self.cache,
                                             progress=progress)
                self.models[key] = self.gans[key].target
            else:
                self.models[key], _ = trained_classifier(
                    model, load_dataset(train_dataset), seed=seed, device=self.device,
                    cache=self.cache, progress=progress)
        return self.models[key]

    def prepare(self, cells: list[Cell]) -> None:
        for cell in cells:
            key = _target_key(cell)
            if cell.source:
                self.zoo_model(cell.train_dataset, cell.source, cell.seed)
            if key in self.prepared:
                continue
            base = self.zoo_model(cell.train_dataset, cell.model, cell.seed)
            data_key = _data_key(cell)
            if data_key not in self.data:
                dataset = load_dataset(cell.dataset)
                self.data[data_key] = discriminator_data(
                    self.gans[(cell.train_dataset, cell.model, cell.seed)], dataset, cell.split,
                    cell.n_eval, cell.seed, cell.direction, self.device,
                ) if cell.direction else eval_subset(dataset, cell.split, cell.n_eval,
                                                     self.device)
            cell_data = self.data[data_key]
            defense = self.config.defense(cell.defense)
            defended = fitted_defense(
                DEFENSES.get(defense.name), base, load_dataset(cell.train_dataset).split("train"),
                defense.params, seed=cell.seed, cache=self.cache, progress=self.options.progress)
            clean = defended.predict_logits(cell_data.x, self.config.batch_size).argmax(1)
            self.prepared[key] = PreparedTarget(base, defended, clean, cell_data.y)

    def fit_data(self, cell: Cell) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not ATTACKS.get(cell.attack).needs_fit_data:
            return None
        key = (cell.train_dataset,) + ((cell.model, cell.seed, cell.direction)
                                       if cell.direction else ())
        if key not in self.fit_sets:
            train = load_dataset(cell.train_dataset).split("train")
            self.fit_sets[key] = discriminator_fit_data(
                self.gans[(cell.train_dataset, cell.model, cell.seed)], train, cell.seed,
                cell.direction, self.device,
            ) if cell.direction else (train.x.to(self.device), train.y.to(self.device))
        return self.fit_sets[key]

    def run_one(self, cell: Cell) -> CellResult:
        """Attack one prepared cell (:meth:`prepare` must have seen it)."""
        result = run_cell(
            cell, self.prepared[_target_key(cell)], self.data[_data_key(cell)],
            device=self.device, batch_size=self.config.batch_size, run_id=self.run_id,
            progress=self.options.progress,
            attacked=self.zoo_model(cell.train_dataset, cell.source, cell.seed)
            if cell.source else None,
            fit_data=self.fit_data(cell), minimal_runs=self.minimal_runs, floor_of=self.floor,
            tune=self.tune)
        result.artifacts = {k: v.detach().cpu() for k, v in result.artifacts.items()}
        log.info("%s %s@%s robust_acc=%.4f", cell.attack, cell.threat_model.norm.value,
                 cell.threat_model.eps_display, result.summary["robust_acc"])
        return result


def run_group(config: SweepConfig, options: RunOptions, run_id: str, cells: list[Cell]
              ) -> list[CellResult]:
    """Prepare and run ``cells`` in a fresh worker (what a pool process or a Ray task runs)."""
    worker = Worker(config, dataclasses.replace(options, progress=False), run_id)
    worker.prepare(cells)
    return [worker.run_one(cell) for cell in cells]


__all__ = ["RunOptions", "RunReport", "Worker", "run_group", "run_cell",
           "verify_adversarials", "eval_subset", "check_sweep"]
