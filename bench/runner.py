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
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attacks import ThreatModel
from bench import defaults
from bench.config import Cell, SweepConfig, target_kind
from bench.core.attack import FitData, budget_mask
from bench.core.checkpoints import CheckpointCache, state_sha256
from bench.core.datasets import Dataset, Split, load_dataset
from bench.core.errors import AttackContractError, BadInput
from bench.core.fastpath import resolve_precision, tune
from bench.core.lipschitz import MarginGradient, median_margin_gradient
from bench.core.measure import (
    autocast,
    device_name,
    floor_fraction,
    floors,
    git_sha,
    measure,
    resolve_device,
)
from bench.core.norms import Norm, eps_limit, norm_of
from bench.core.target import Target
from bench.core.training import trained_classifier
from bench.core.usermodels import ImageSampler, UserGAN, UserModel, calibrate_threshold
from bench.core.version import ADVBENCH_VERSION
from defenses import DEFENSES, fitted_defense
from generative.discriminator import (
    FAKE,
    REAL,
    calibration_noise_seed,
    eval_noise_seed,
    fit_noise_seed,
)
from generative.training import GAN, trained_gan
from leaderboards.schema import SummaryRow

log = logging.getLogger(__name__)

EVAL_SUBSET_SEED = 0
CALIBRATION_IMAGES = 1000
"""Real (and as many generated) images a critic's threshold is calibrated on."""


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
    retries: int = defaults.RETRIES
    wait: bool = True  # wait for cells another sweep holds until they are stored

    def __post_init__(self) -> None:
        """Raise :class:`BadInput` for settings that cannot work (before anything starts)."""
        if self.retries < 0:
            raise BadInput(f"retries must be >= 0, got {self.retries}")
        if self.workers is not None and self.workers < 1:
            raise BadInput(f"workers must be >= 1, got {self.workers}")
        if self.executor not in ("local", "ray"):
            raise BadInput(f"unknown executor {self.executor!r}; use 'local' or 'ray'")
        if self.executor == "local" and self.address is not None:
            raise BadInput("--address applies to --executor ray")
        if self.executor == "ray" and self.workers is not None:
            raise BadInput("--workers applies to --executor local (Ray schedules its own "
                           "workers)")


@dataclass
class RunReport:
    """``skipped``: cells already stored; ``stored_by_others``: cells another sweep held and
    stored while this one waited; ``busy``: cells left to another running sweep (``wait``
    off); ``failed``: (cell_id, error) of cells whose task failed after its retries."""

    run_id: str
    cells: int
    skipped: int
    written: list[SummaryRow] = field(default_factory=list)
    busy: int = 0
    stored_by_others: int = 0
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
    margin_grad: MarginGradient = MarginGradient(None, None)  # not measured: null columns
    weights_sha256: str | None = None  # the defended target's weights (state_sha256)
    base_weights_sha256: str | None = None  # the undefended model's

    @property
    def clean_correct(self) -> torch.Tensor:
        return self.clean_pred == self.labels


def evaluated_split(dataset: Dataset, split: str, n_eval: int) -> Split:
    """``dataset``'s ``split``; :class:`BadInput` if it has fewer than ``n_eval`` samples."""
    part = dataset.split(split)
    if n_eval > len(part):
        raise BadInput(
            f"n_eval = {n_eval} exceeds the {len(part)} samples of {dataset.name!r}'s {split} "
            f"split; use n_eval <= {len(part)}"
        )
    return part


def eval_subset(dataset: Dataset, split: str, n_eval: int, device: torch.device) -> EvalData:
    """A fixed, seed-independent random subset of the split (sorted by index)."""
    part = evaluated_split(dataset, split, n_eval)
    perm = torch.randperm(len(part), generator=torch.Generator().manual_seed(EVAL_SUBSET_SEED))
    idx = perm[:n_eval].sort().values
    return EvalData(part.x[idx].to(device), part.y[idx].to(device), idx)


def discriminator_data(gan: GAN | UserGAN, dataset: Dataset, split: str, n_eval: int, seed: int,
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


def discriminator_fit_data(gan: GAN | UserGAN, train: Split, seed: int, direction: str,
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
    name = cell.attack_name
    if x_adv.shape != x.shape or x_adv.dtype != x.dtype or x_adv.device != x.device:
        raise AttackContractError(
            f"{name}: x_adv is {tuple(x_adv.shape)} {x_adv.dtype} on {x_adv.device}, "
            f"expected {tuple(x.shape)} {x.dtype} on {x.device}"
        )
    if not bool(torch.isfinite(x_adv).all()):
        raise AttackContractError(f"{name}: x_adv holds NaN or infinite values")
    lo, hi = bounds
    tol = 1e-6 * (hi - lo)
    if float(x_adv.min()) < lo - tol or float(x_adv.max()) > hi + tol:
        raise AttackContractError(
            f"{name}: x_adv leaves the bounds [{lo:g}, {hi:g}] "
            f"(min {float(x_adv.min()):g}, max {float(x_adv.max()):g})"
        )
    eps = cell.threat_model.eps
    if eps is None:
        return
    norm = cell.threat_model.norm
    dist = norm_of(x_adv - x, norm)
    worst = float(dist.max()) if dist.numel() else 0.0
    if worst > eps_limit(norm, eps, hi - lo):
        raise AttackContractError(
            f"{name}: a perturbation has {norm.value} norm {worst:.6g} > eps {eps:g}"
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
    effective_params: dict[str, Any] = field(default_factory=dict)


SAMPLE_ARTIFACTS = ("fooled_by", "members", "queries")
"""Per-sample outputs of an attack that go into its rows, not into artifact files."""


@dataclass
class CellResult:
    summary: SummaryRow
    samples: dict[str, Any]
    artifacts: dict[str, torch.Tensor]


@dataclass(frozen=True)
class AttackedModel:
    """The model a cell's attack is crafted on, prepared once per sweep and precision: the
    plain model (its floor is the row's reference), the copy on the chosen fast path with its
    batch size, the floor (:func:`bench.core.measure.floors`) and the precision it runs at."""

    plain: Target
    fast: Target
    fast_path: str
    batch_size: int
    floor: dict[tuple[str, str], float] | None = None
    precision: str = "fp32"  # what "auto" resolved to for this model

    def precision_for(self, cell: Cell) -> str:
        """The precision ``cell`` runs at: its own, or for ``auto`` the resolved one."""
        return self.precision if cell.precision == "auto" else cell.precision


def attack_samples(cell: Cell, attacked: Target, data: EvalData, *, device: torch.device,
                   batch_size: int, fit_data: FitData | None = None,
                   progress: bool = False, precision: str = "fp32") -> AttackRun:
    """Run the cell's attack on ``attacked`` over ``data`` at ``precision``, timed on the
    device (batching, streaming and the out-of-memory back-off are the attack entry point's)."""
    generator = torch.Generator(device=device).manual_seed(cell.seed)
    with measure(device) as timing, autocast(device, precision):
        result = cell.attack(attacked, data.x, data.y, generator=generator, fit_data=fit_data,
                             batch_size=batch_size, progress=progress)
    return AttackRun(result.x_adv, result.y_target, result.n_forward, result.n_backward,
                     timing.wall_s, timing.peak_mem_bytes, result.artifacts,
                     result.effective_params)


def member_index(cell: Cell) -> int:
    """The 1-based position of a cascade member cell's member."""
    assert cell.attack.spec.cascade is not None
    names = [m.name for m in cell.attack.spec.cascade(cell.attack.params)]
    return names.index(cell.member) + 1


def member_run(cell: Cell, run: AttackRun, x: torch.Tensor) -> AttackRun:
    """A cascade member's view of the cascade's run: the adversarials of the members up to and
    including it (the clean input elsewhere), and its own model calls and time."""
    k = member_index(cell)
    fooled_by = run.artifacts["fooled_by"].to(x.device)
    upto = (fooled_by >= 1) & (fooled_by <= k)
    x_adv = torch.where(upto.view(-1, *([1] * (x.ndim - 1))), run.x_adv, x)
    given, _, forward, backward, wall = run.artifacts["members"][k - 1].tolist()
    return AttackRun(x_adv, None, int(forward), int(backward), wall, run.peak_mem_bytes,
                     {"fooled_by": torch.where(fooled_by <= k, fooled_by, -1),
                      "members": run.artifacts["members"][:k]}, run.effective_params)


def cascade_flags(cell: Cell, run: AttackRun, outcome: Outcome, data: EvalData,
                  bounds: tuple[float, float]) -> str | None:
    """AutoAttack's sanity checks on a cascade row: a black-box member fooled samples that
    every white-box member before it missed (a sign of masked gradients), and an eps that
    spans the whole input range leaves samples robust (the attack, not the model, failed)."""
    spec = cell.attack.spec
    if spec.cascade is None or "members" not in run.artifacts:
        return None
    flags = []
    table = run.artifacts["members"]
    for member, stats in zip(spec.cascade(cell.attack.params), table.tolist(), strict=False):
        if member.black_box and stats[1] > 0:
            flags.append(f"black-box {member.name} fooled {int(stats[1])} samples every "
                         f"white-box member missed (gradient masking?)")
    eps, lo, hi = cell.threat_model.eps, *bounds
    full = {Norm.LINF: hi - lo, Norm.L2: (hi - lo) * float(data.x[0].numel()) ** 0.5}
    robust = int(outcome.adv_correct.sum())
    if not cell.member and eps is not None and eps >= full.get(cell.threat_model.norm,
                                                                math.inf) and robust:
        flags.append(f"eps {cell.threat_model.eps_display} spans the whole input range, yet "
                     f"{robust} samples stay robust (the attack failed)")
    return "; ".join(flags) or None


def row_params(cell: Cell, run: AttackRun) -> str:
    """The row's ``attack_params``: the cell's, with what the attack had to change."""
    if not run.effective_params:
        return cell.params_json
    return json.dumps({**json.loads(cell.params_json), **run.effective_params}, sort_keys=True)


def within_budget(run: AttackRun, x: torch.Tensor, threat: ThreatModel,
                  bounds: tuple[float, float]) -> torch.Tensor:
    """A minimal-perturbation run seen at budget eps: perturbations outside the eps ball
    (:func:`bench.core.attack.budget_mask`) keep the clean input."""
    inside = budget_mask(x, run.x_adv, threat, bounds)
    return torch.where(inside.view(-1, *([1] * (x.ndim - 1))), run.x_adv, x)


@dataclass
class Outcome:
    """A cell's verified per-sample outcome on the evaluated target."""

    adv_pred: torch.Tensor
    success: torch.Tensor
    adv_correct: torch.Tensor
    l2: torch.Tensor
    linf: torch.Tensor
    l0: torch.Tensor


def verify(cell: Cell, prepared: PreparedTarget, data: EvalData, run: AttackRun,
           batch_size: int) -> Outcome:
    """Check the run's adversarials against the bounds and the eps ball, then judge them with a
    fresh fp32 forward of the evaluated (defended) target: the attack's claim is not trusted."""
    evaluated = prepared.defended
    x_adv = within_budget(run, data.x, cell.threat_model, evaluated.bounds) \
        if cell.attack.spec.minimal else run.x_adv
    verify_adversarials(cell, data.x, x_adv, evaluated.bounds)
    adv_pred = evaluated.predict_logits(x_adv, batch_size).argmax(1)
    if cell.attack.targeted:
        if run.y_target is None:
            raise AttackContractError(f"{cell.attack_name}: a targeted run returned no y_target")
        success = adv_pred == run.y_target
    else:
        success = adv_pred != data.y
    delta = x_adv - data.x
    l2, linf, l0 = (norm_of(delta, nm) for nm in (Norm.L2, Norm.LINF, Norm.L0))
    return Outcome(adv_pred, success, prepared.clean_correct & (adv_pred == data.y), l2, linf, l0)


def summarise(cell: Cell, prepared: PreparedTarget, data: EvalData, run: AttackRun,
              outcome: Outcome, attacked: AttackedModel, *, device: torch.device,
              run_id: str) -> SummaryRow:
    """The cell's summary row."""
    clean_correct = prepared.clean_correct
    fooled = clean_correct & outcome.success
    n, n_correct = data.x.shape[0], int(clean_correct.sum())
    rho = outcome.l2[fooled] / norm_of(data.x[fooled], Norm.L2).clamp_min(1e-12)
    floor = attacked.floor
    floor_kind = "forward+backward" if run.n_backward else "forward"
    return SummaryRow(
        cell_id=cell.cell_id, run_id=run_id, created_at=dt.datetime.now(dt.timezone.utc),
        dataset=cell.dataset, train_dataset=cell.train_dataset, split=cell.split, n_samples=n,
        target_kind=prepared.defended.kind, direction=cell.direction or None, model=cell.model,
        critic_threshold=prepared.base.card.get("critic_threshold"),
        model_source=cell.user_model.factory if cell.user_model else "zoo",
        weights_sha256=prepared.weights_sha256, base_weights_sha256=prepared.base_weights_sha256,
        defense=cell.defense, defense_params=cell.defense_params or None, threat=cell.threat,
        source_model=cell.source or None, attack=cell.attack_name,
        attack_params=row_params(cell, run), **member_columns(cell, run),
        flags=cascade_flags(cell, run, outcome, data, prepared.defended.bounds),
        black_box=_black_box(cell),
        targeted=cell.attack.targeted, norm=cell.threat_model.norm.value,
        eps=cell.threat_model.eps, eps_display=cell.threat_model.eps_display, seed=cell.seed,
        precision=attacked.precision_for(cell), batch_size=attacked.batch_size,
        fast_path=attacked.fast_path,
        clean_acc=n_correct / n, robust_acc=int(outcome.adv_correct.sum()) / n,
        success_rate=int(fooled.sum()) / n_correct if n_correct else None,
        fooling_rate=int((outcome.adv_pred != prepared.clean_pred).sum()) / n,
        median_l2=_median(outcome.l2[fooled]), median_linf=_median(outcome.linf[fooled]),
        mean_l0=float(outcome.l0[fooled].mean()) if bool(fooled.any()) else None,
        rho_adv=float(rho.mean()) if rho.numel() else None,
        margin_grad_l1=prepared.margin_grad.l1, margin_grad_l2=prepared.margin_grad.l2,
        attack_run=attack_run_id(cell), n_forward=run.n_forward, n_backward=run.n_backward,
        wall_s=run.wall_s,
        img_per_s=_attacked(cell, run, n) / run.wall_s if run.wall_s > 0 else 0.0,
        floor_img_per_s=floor[(floor_kind, attacked.precision_for(cell))] if floor else None,
        floor_fraction=floor_fraction(run.n_forward, run.n_backward, run.wall_s, floor,
                                      attacked.precision_for(cell)) if floor else None,
        peak_mem_bytes=run.peak_mem_bytes, device=device_name(device),
        torch_version=torch.__version__, advbench_version=ADVBENCH_VERSION, git_sha=git_sha(),
    )


def member_columns(cell: Cell, run: AttackRun) -> dict[str, Any]:
    """A cascade member row's own numbers: samples it attacked, share it left robust."""
    if not cell.member:
        return {"cascade_member": None, "member_given": None, "member_robust_acc": None}
    given, fooled = (int(v) for v in run.artifacts["members"][-1, :2].tolist())
    return {"cascade_member": cell.member, "member_given": given,
            "member_robust_acc": (given - fooled) / given if given else None}


def _attacked(cell: Cell, run: AttackRun, n: int) -> int:
    """How many images the row's run attacked: a cascade member only those it was given."""
    return int(run.artifacts["members"][-1, 0]) if cell.member else n


def _black_box(cell: Cell) -> bool:
    """A member row is as black-box as its member; any other row as its attack."""
    if cell.member and cell.attack.spec.cascade is not None:
        return next(m.black_box for m in cell.attack.spec.cascade(cell.attack.params)
                    if m.name == cell.member)
    return cell.attack.spec.black_box


def _fooled_by_names(cell: Cell, run: AttackRun, n: int) -> list[str | None]:
    if "fooled_by" not in run.artifacts or cell.attack.spec.cascade is None:
        return [None] * n
    names = ["clean"] + [m.name for m in cell.attack.spec.cascade(cell.attack.params)]
    return [names[k] if k >= 0 else None for k in run.artifacts["fooled_by"].tolist()]


def sample_columns(cell: Cell, prepared: PreparedTarget, data: EvalData,
                   outcome: Outcome, run: AttackRun) -> dict[str, Any]:
    """The cell's per-sample columns (one per :class:`leaderboards.schema.SampleRow` field)."""
    n = data.x.shape[0]
    return {
        "cell_id": [cell.cell_id] * n,
        "sample_idx": data.idx.numpy().astype(np.int64),
        "label": data.y.cpu().numpy().astype(np.int64),
        "clean_correct": prepared.clean_correct.cpu().numpy(),
        "adv_correct": outcome.adv_correct.cpu().numpy(),
        "success": outcome.success.cpu().numpy(),
        "l2": outcome.l2.cpu().numpy().astype(np.float32),
        "linf": outcome.linf.cpu().numpy().astype(np.float32),
        "l0": outcome.l0.cpu().numpy().astype(np.float32),
        "fooled_by": _fooled_by_names(cell, run, n),
        "queries": run.artifacts["queries"].cpu().numpy().astype(np.int32)
        if "queries" in run.artifacts else [None] * n,
    }


def attack_run_id(cell: Cell) -> str:
    """The attack run a cell's numbers come from: its own, for a minimal-perturbation attack
    the one budget-free run every eps of its curve is read from, for a cascade member's row
    the cascade's run."""
    if cell.member:
        return dataclasses.replace(cell, member="").cell_id
    if cell.attack.spec.minimal:
        return dataclasses.replace(cell, attack=cell.attack.at(None)).cell_id
    return cell.cell_id


def run_cell(cell: Cell, prepared: PreparedTarget, data: EvalData, attacked: AttackedModel, *,
             device: torch.device, run_id: str, progress: bool = False,
             fit_data: FitData | None = None,
             minimal_runs: dict[str, AttackRun] | None = None) -> CellResult:
    """Attack one cell's samples on the prepared ``attacked`` model, verify, summarise.

    ``minimal_runs`` caches the runs several rows are read from: a minimal-perturbation run
    (every eps of one curve) and a cascade's (its row and each member's).
    """
    spec = cell.attack.spec
    if spec.minimal or spec.cascade is not None:
        cache = minimal_runs if minimal_runs is not None else {}
        key = attack_run_id(cell)
        if key not in cache:
            # the run itself: a minimal attack unbounded, a cascade as a whole
            whole = dataclasses.replace(cell, member="", attack=cell.attack.at(None)) \
                if spec.minimal else dataclasses.replace(cell, member="")
            cache[key] = attack_samples(whole, attacked.fast, data, device=device,
                                        batch_size=attacked.batch_size, progress=progress,
                                        precision=attacked.precision_for(cell))
        run = cache[key]
        if cell.member:
            run = member_run(cell, run, data.x)
    else:
        run = attack_samples(cell, attacked.fast, data, device=device,
                             batch_size=attacked.batch_size, fit_data=fit_data,
                             progress=progress, precision=attacked.precision_for(cell))
    outcome = verify(cell, prepared, data, run, attacked.batch_size)
    return CellResult(
        summarise(cell, prepared, data, run, outcome, attacked, device=device, run_id=run_id),
        sample_columns(cell, prepared, data, outcome, run),
        {k: v for k, v in run.artifacts.items() if k not in SAMPLE_ARTIFACTS})


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

    :meth:`prepare` trains or loads every target and transfer source, runs the clean passes and
    prepares every attacked model (fast path, batch size, floor), so that bad models fail before
    anything is written and a cell is only attack → verify → summarise (:meth:`run_one`).
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
        user = self.config.user_model(model)
        if user is not None and key not in self.models:
            self.models[key] = self.user_target(user, train_dataset, seed)
            if user.kind == "discriminator":
                self.gans[key] = UserGAN(self.models[key], self.user_sampler(user))
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
            clean = defended.predict_logits(data.x, self.config.batch_size).argmax(1)
            margin_grad = median_margin_gradient(defended, data.x, data.y,
                                                 self.config.batch_size)
            self.prepared[key] = PreparedTarget(base, defended, clean, data.y, margin_grad,
                                                state_sha256(defended), state_sha256(base))
        return self.prepared[key]

    def prepare(self, cells: list[Cell]) -> None:
        for cell in cells:
            prepared = self.prepare_target(cell)
            key = _attacked_key(cell)
            if key not in self.attacked:
                model = (self.zoo_model(cell.train_dataset, cell.source, cell.seed)
                         if cell.source else
                         prepared.defended if cell.threat == "adaptive" else prepared.base)
                self.attacked[key] = self.prepare_attacked(model, cell.precision,
                                                           self.eval_data(cell).x)

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
        result = run_cell(
            cell, self.prepared[_target_key(cell)], self.data[_data_key(cell)],
            self.attacked[_attacked_key(cell)], device=self.device, run_id=self.run_id,
            progress=self.options.progress, fit_data=self.fit_data(cell),
            minimal_runs=self.minimal_runs)
        result.artifacts = {k: v.detach().cpu() for k, v in result.artifacts.items()}
        log.info("%s %s@%s robust_acc=%.4f", cell.attack_name, cell.threat_model.norm.value,
                 cell.threat_model.eps_display, result.summary.robust_acc)
        return result


def run_group(config: SweepConfig, options: RunOptions, run_id: str, cells: list[Cell]
              ) -> list[CellResult]:
    """Prepare and run ``cells`` in a fresh worker (what a pool process or a Ray task runs)."""
    worker = Worker(config, dataclasses.replace(options, progress=False), run_id)
    worker.prepare(cells)
    return [worker.run_one(cell) for cell in cells]


__all__ = ["RunOptions", "RunReport", "Worker", "run_group", "run_cell",
           "verify_adversarials", "eval_subset"]
