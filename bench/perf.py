"""``advbench perf``: throughput of every attack against the peers, in one run.

For one model and input shape it measures, on the same device, data and budget:

- the *floor*: plain forward and forward+backward-to-the-input throughput per precision;
- advbench's attacks (FGSM, PGD-10, DeepFool, one-pixel, UAP, and PGD-40 evaluation with and
  without per-sample early stop);
- the same attacks in foolbox, torchattacks and ART when they are installed.

Each row carries a strength measure next to its speed (robust accuracy, DeepFool's median L2,
one-pixel's success rate, UAP's held-out fooling rate), so that equal strength can be checked,
the speed-up over the fastest peer of its group, and, for advbench, the fraction of the floor its
model calls reached. Rows are written as Parquet (:data:`PERF_SCHEMA`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from attacks import run_attack
from bench import defaults
from bench import peers as peer_attacks
from bench.core.checkpoints import CheckpointCache
from bench.core.datasets import load_dataset
from bench.core.errors import BadInput
from bench.core.fastpath import FastPath, FastPathOptions, candidates, measure_paths, tune
from bench.core.measure import autocast, device_name, floor_fraction, floors, git_sha, timed
from bench.core.progress import progress_bar
from bench.core.target import Target
from bench.core.training import trained_classifier
from bench.core.version import ADVBENCH_VERSION
from bench.core.zoo import classifier_spec

log = logging.getLogger(__name__)

PERF_SCHEMA = pa.schema([
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("model", pa.string(), nullable=False),
    pa.field("weights", pa.string(), nullable=False),
    pa.field("input_shape", pa.string(), nullable=False),
    pa.field("group", pa.string(), nullable=False),
    pa.field("library", pa.string(), nullable=False),
    pa.field("precision", pa.string(), nullable=False),
    pa.field("fast_path", pa.string()),  # advbench rows: how the attacked model ran
    pa.field("budget", pa.string(), nullable=False),
    pa.field("n_images", pa.int64(), nullable=False),
    pa.field("median_s", pa.float64(), nullable=False),
    pa.field("img_per_s", pa.float64(), nullable=False),
    pa.field("speedup_vs_fastest_peer", pa.float64()),
    pa.field("metric", pa.string()),
    pa.field("score", pa.float64()),
    pa.field("n_forward", pa.int64()),
    pa.field("n_backward", pa.int64()),
    pa.field("calls_per_sample", pa.float64()),  # (n_forward + n_backward) / n_images
    pa.field("floor_fraction", pa.float64()),
    pa.field("peak_mem_bytes", pa.int64()),
    pa.field("device", pa.string(), nullable=False),
    pa.field("torch_version", pa.string(), nullable=False),
    pa.field("advbench_version", pa.string(), nullable=False),
    pa.field("git_sha", pa.string()),
])

Run = Callable[[], tuple[torch.Tensor, dict[str, Any]]]


@dataclass
class Case:
    """One timed attack: ``run()`` returns ``(x_adv or perturbation, extra)``."""

    group: str
    library: str
    budget: str
    n_images: int
    run: Run
    score: Callable[[torch.Tensor], float]
    metric: str
    precision: str = "fp32"


def _accuracy(target: Target, y: torch.Tensor) -> Callable[[torch.Tensor], float]:
    return lambda x_adv: float((target.predict_logits(x_adv).argmax(1) == y).float().mean())


def build_cases(target: Target, x: torch.Tensor, y: torch.Tensor, fit_x: torch.Tensor, *,
                eps: float, precisions: tuple[str, ...], peers: bool, groups: set[str],
                onepixel_n: int, deepfool_n: int, fast: Target | None = None,
                eval_batches: int = 4) -> list[Case]:
    """Every case of the run, at identical budgets across libraries.

    advbench's attacks run on ``fast`` (the target on its chosen fast path, as in a sweep), the
    peers on ``target``. The PGD-40 evaluation attacks ``eval_batches`` batches' worth of
    images with ``x``'s batch size, so that early stop can refill the rows fooled images free.
    """
    ours = _ours(target if fast is None else fast)
    xd, yd = x[:deepfool_n], y[:deepfool_n]
    xo, yo = x[:onepixel_n], y[:onepixel_n]
    # torchattacks' default one-pixel budget: 10 generations of its popsize-10 population
    population = peer_attacks.onepixel_population(target.input_shape[0])
    cases = _gradient_cases(ours, target, x, y, eps, precisions, groups, eval_batches)
    cases += _search_cases(ours, target, x, y, fit_x, eps, groups, (xd, yd), (xo, yo),
                           population)
    cases += _autoattack_cases(ours, target, x, y, eps, groups, (xo, yo))
    if peers:
        cases += peer_cases(target, x, y, fit_x, eps=eps, groups=groups, xd=xd, yd=yd, xo=xo,
                            yo=yo, population=population)
    return cases


def _gradient_cases(ours: Callable[..., Run], target: Target, x: torch.Tensor,
                    y: torch.Tensor, eps: float, precisions: tuple[str, ...], groups: set[str],
                    eval_batches: int) -> list[Case]:
    """FGSM and PGD-10 at each precision; the PGD-40 evaluation with and without early stop."""
    n, step, accuracy = x.shape[0], eps / 4, _accuracy(target, y)
    cases: list[Case] = []
    if "fgsm" in groups:
        for precision in precisions:
            cases.append(Case("fgsm", "advbench", f"linf {eps:g}", n,
                              ours("fgsm", x, y, precision, eps=eps), accuracy, "robust_acc",
                              precision))
    if "pgd10" in groups:
        for precision in precisions:
            cases.append(Case("pgd10", "advbench", f"linf {eps:g}, 10 x {step:g}", n,
                              ours("pgd", x, y, precision, eps=eps, params={
                                  "steps": 10, "step_size": step, "early_stop": False}),
                              accuracy, "robust_acc", precision))
    if "pgd40-eval" in groups:
        xe, ye = x.repeat(eval_batches, *([1] * (x.ndim - 1))), y.repeat(eval_batches)
        for early in (True, False):
            cases.append(Case("pgd40-eval", "advbench" if early else "advbench-full-budget",
                              f"linf {eps:g}, 40 x {eps / 10:g}, {n} rows", len(xe),
                              ours("pgd", xe, ye, eps=eps, batch_size=n, params={
                                  "steps": 40, "step_size": eps / 10, "early_stop": early}),
                              _accuracy(target, ye), "robust_acc"))
    return cases


def _search_cases(ours: Callable[..., Run], target: Target, x: torch.Tensor, y: torch.Tensor,
                  fit_x: torch.Tensor, eps: float, groups: set[str],
                  deepfool_xy: tuple[torch.Tensor, torch.Tensor],
                  onepixel_xy: tuple[torch.Tensor, torch.Tensor], population: int
                  ) -> list[Case]:
    """DeepFool's minimal L2 perturbations, the one-pixel search and the UAP's fit."""
    (xd, yd), (xo, yo) = deepfool_xy, onepixel_xy
    cases: list[Case] = []
    if "deepfool" in groups:
        cases.append(Case("deepfool", "advbench", "l2 minimal, 50 steps", len(xd),
                          ours("deepfool", xd, yd, norm="l2", eps=None),
                          _median_l2(target, xd, yd), "median_l2"))
    if "onepixel" in groups:
        cases.append(Case("onepixel", "advbench", f"1 pixel, {population} x 10 generations",
                          len(xo), ours("onepixel", xo, yo, norm="l0", eps=1, params={
                              "population": population, "generations": 10}),
                          _success(target, yo), "success"))
    if "uap" in groups:
        cases.append(Case("uap", "advbench", f"linf {eps:g}, one DeepFool pass", len(fit_x),
                          ours("uap", x, y, eps=eps, fit_data=(fit_x, y[:0].new_zeros(
                              len(fit_x))), params={"max_passes": 1,
                                                    "target_fooling_rate": 0.8}),
                          _fooling(target, x), "heldout_fooling"))
    return cases


def _autoattack_cases(ours: Callable[..., Run], target: Target, x: torch.Tensor,
                      y: torch.Tensor, eps: float, groups: set[str],
                      cascade_xy: tuple[torch.Tensor, torch.Tensor]) -> list[Case]:
    """APGD-CE, and the standard and rapid cascades on the cascade's images."""
    xo, yo = cascade_xy
    cases: list[Case] = []
    if "apgd" in groups:
        cases.append(Case("apgd", "advbench", f"linf {eps:g}, APGD-CE {APGD_STEPS} steps",
                          x.shape[0], ours("apgd", x, y, eps=eps, params={"steps": APGD_STEPS}),
                          _accuracy(target, y), "robust_acc"))
    if "standard" in groups:
        cases.append(Case("standard", "advbench", STANDARD_BUDGET.format(eps=eps), len(xo),
                          ours("standard", xo, yo, eps=eps), _accuracy(target, yo),
                          "robust_acc"))
    if "rapid" in groups:
        cases.append(Case("rapid", "advbench", RAPID_BUDGET.format(eps=eps), len(xo),
                          ours("standard", xo, yo, eps=eps, params={"version": "rapid"}),
                          _accuracy(target, yo), "robust_acc"))
    return cases


def _ours(fast: Target) -> Callable[..., Run]:
    """``ours(name, x, y, precision, **run_attack_kwargs)``: advbench's attack on ``fast``, from
    a fixed seed, returning its images (or perturbation) and model calls."""
    def ours(name: str, xs: torch.Tensor, ys: torch.Tensor, precision: str = "fp32",
             **kwargs: Any) -> Run:
        def run() -> tuple[torch.Tensor, dict[str, Any]]:
            with autocast(xs.device, precision):
                res = run_attack(name, fast, xs, ys,
                                 generator=torch.Generator(xs.device).manual_seed(0), **kwargs)
            return (res.artifacts.get("perturbation", res.x_adv),
                    {"n_forward": res.n_forward, "n_backward": res.n_backward})
        return run
    return ours


def _median_l2(target: Target, x: torch.Tensor, y: torch.Tensor
               ) -> Callable[[torch.Tensor], float]:
    def score(x_adv: torch.Tensor) -> float:
        fooled = target.predict_logits(x_adv).argmax(1) != y
        l2 = (x_adv - x).flatten(1).norm(dim=1)[fooled]
        return float(l2.median()) if l2.numel() else float("nan")
    return score


def _success(target: Target, y: torch.Tensor) -> Callable[[torch.Tensor], float]:
    return lambda x_adv: float((target.predict_logits(x_adv).argmax(1) != y).float().mean())


def _fooling(target: Target, x: torch.Tensor) -> Callable[[torch.Tensor], float]:
    clean = target.predict_logits(x).argmax(1)

    def score(v: torch.Tensor) -> float:
        lo, hi = target.bounds
        pred = target.predict_logits((x + v).clamp(lo, hi)).argmax(1)
        return float((pred != clean).float().mean())
    return score


def peer_cases(target: Target, x: torch.Tensor, y: torch.Tensor, fit_x: torch.Tensor, *,
               eps: float, groups: set[str], xd: torch.Tensor, yd: torch.Tensor,
               xo: torch.Tensor, yo: torch.Tensor, population: int) -> list[Case]:
    """The same budgets in foolbox, torchattacks and ART (those that are installed), through
    the shared adapters of :mod:`bench.peers`."""
    step = eps / 4
    make: dict[str, Callable[[str], Case]] = {
        "fgsm": lambda lib: Case(
            "fgsm", lib, f"linf {eps:g}", len(x), _no_extra(peer_attacks.fgsm(
                lib, target, x, y, eps)), _accuracy(target, y), "robust_acc"),
        "pgd10": lambda lib: Case(
            "pgd10", lib, f"linf {eps:g}, 10 x {step:g}", len(x), _no_extra(peer_attacks.pgd(
                lib, target, x, y, eps, step, 10)), _accuracy(target, y), "robust_acc"),
        "deepfool": lambda lib: Case(
            "deepfool", lib, "l2 minimal, 50 steps", len(xd), _no_extra(peer_attacks.deepfool(
                lib, target, xd, yd)), _median_l2(target, xd, yd), "median_l2"),
        "onepixel": lambda lib: Case(
            "onepixel", lib, f"1 pixel, {population} x 10 generations", len(xo),
            _no_extra(peer_attacks.onepixel(lib, target, xo, yo)), _success(target, yo),
            "success"),
        "uap": lambda lib: Case(
            "uap", lib, f"linf {eps:g}, one DeepFool pass", len(fit_x), _no_extra(
                peer_attacks.uap(lib, target, fit_x, eps)), _fooling(target, x),
            "heldout_fooling"),
        "apgd": lambda lib: Case(
            "apgd", lib, f"linf {eps:g}, APGD-CE {APGD_STEPS} steps", len(x), _no_extra(
                peer_attacks.apgd(lib, target, x, y, eps, APGD_STEPS)), _accuracy(target, y),
            "robust_acc"),
        "standard": lambda lib: Case(
            "standard", lib, STANDARD_BUDGET.format(eps=eps), len(xo), _counted(
                lambda model: peer_attacks.autoattack(lib, model, xo, yo, eps, APGD_STEPS, 5000),
                target), _accuracy(target, yo), "robust_acc"),
    }
    return [make[group](library) for group, libraries in peer_attacks.PEERS.items()
            for library in libraries if group in groups and peer_attacks.available(library)]


def _no_extra(run: peer_attacks.PeerRun) -> Run:
    return lambda: (run(), {})


def _counted(build: Callable[[Any], peer_attacks.PeerRun], target: Target) -> Run:
    """A peer's run through :class:`bench.peers.CountingModel`, reporting its model calls."""
    model = peer_attacks.CountingModel(target).eval()
    return model.counted(build(model))


GROUPS = defaults.PERF_GROUPS
APGD_STEPS = 100
STANDARD_BUDGET = ("linf {eps:g}, AutoAttack standard (100 steps, 9 target classes, "
                   "Square 5000 queries)")
PEER_GROUP = {"rapid": "standard"}
"""A group whose peers are another group's (run once, compared with both)."""
RAPID_BUDGET = ("linf {eps:g}, rapid (100 steps, 3 MALT targets, Square's first 500 queries, "
                "its other 4500 if an indicator fires)")


@dataclass(frozen=True)
class PerfOptions:
    model: str = "lenet"
    dataset: str | None = None  # default: mnist5k (28x28x1) / mnist5k-rgb32 (32x32x3)
    device: str = "auto"
    batch_size: int | None = None
    eps: float | None = None
    precisions: tuple[str, ...] = defaults.PERF_PRECISIONS
    groups: tuple[str, ...] = GROUPS
    peers: bool = True
    repeats: int = defaults.PERF_REPEATS
    onepixel_n: int = 64
    deepfool_n: int | None = None
    uap_fit: int = defaults.PERF_UAP_FIT
    eval_batches: int = defaults.PERF_EVAL_BATCHES
    fast: FastPathOptions = FastPathOptions()
    cache_dir: Path | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        """Raise :class:`BadInput` (named as the CLI flag) for settings that cannot work."""
        for flag, value in (("--batch-size", self.batch_size), ("--uap-fit", self.uap_fit),
                            ("--repeats", self.repeats), ("--eval-batches", self.eval_batches)):
            if value is not None and value < 1:
                raise BadInput(f"{flag} must be >= 1, got {value}")
        if self.eps is not None and not self.eps > 0:
            raise BadInput(f"--eps must be > 0, got {self.eps}")
        unknown = sorted(set(self.groups) - set(GROUPS))
        if unknown:
            raise BadInput(f"unknown perf group {unknown[0]!r}; known: {', '.join(GROUPS)}")


def perf_target(options: PerfOptions, device: torch.device
                ) -> tuple[Target, torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """The model (trained when a matching local data set exists, else random weights) and
    evaluation / fit images with labels the model gets right."""
    spec = classifier_spec(options.model)
    n = options.batch_size or (1024 if device.type == "cuda" else 256)
    name = options.dataset
    if name is None:
        name = {(1, 28, 28): "mnist5k", (3, 32, 32): "mnist5k-rgb32"}.get(spec.input_shape)
    if name is not None:
        dataset = load_dataset(name)
        if options.cache_dir is None:
            raise BadInput("perf with a trained model needs a checkpoint cache directory")
        target, _ = trained_classifier(spec.name, dataset, seed=0, device=device,
                                       cache=CheckpointCache(options.cache_dir),
                                       progress=options.progress)
        weights = f"trained on {dataset.name}"
        test, train = dataset.split("test"), dataset.split("train")
        # a fixed shuffle, repeated as needed: a split sorted by class (mnist5k's) would give
        # its first classes only
        order = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))
        idx = order.repeat((n + len(test) - 1) // len(test))[:n]
        x, y = test.x[idx].to(device), test.y[idx].to(device)
        fit_x = train.x[:options.uap_fit].to(device)
    else:
        with torch.random.fork_rng(devices=[]):  # seeded weights; the caller's RNG untouched
            torch.manual_seed(0)
            target = Target(spec.build(10), num_classes=10, input_shape=spec.input_shape,
                            name=spec.name).to(device)
        weights = "random init (no local data set; labels = the model's own predictions)"
        g = torch.Generator().manual_seed(0)
        x = torch.rand((n, *spec.input_shape), generator=g).to(device)
        fit_x = torch.rand((options.uap_fit, *spec.input_shape), generator=g).to(device)
        y = target.predict_logits(x).argmax(1)
    target.eval()
    for p in target.parameters():
        p.requires_grad_(False)
    return target, x, y, fit_x, weights


def run_perf(options: PerfOptions) -> pd.DataFrame:
    """Measure floors and every case; return the rows (also the Parquet table's rows)."""
    from bench.core.measure import resolve_device

    device = resolve_device(options.device)
    target, x, y, fit_x, weights = perf_target(options, device)
    eps = options.eps if options.eps is not None else (
        0.3 if target.input_shape[0] == 1 else 8 / 255)
    run_id = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    common = {"run_id": run_id, "created_at": dt.datetime.now(dt.timezone.utc),
              "model": target.name, "weights": weights,
              "input_shape": "x".join(map(str, target.input_shape)), "device": device_name(device),
              "torch_version": torch.__version__, "advbench_version": ADVBENCH_VERSION,
              "git_sha": git_sha()}
    rows: list[dict[str, Any]] = []
    floor = floors(target, x, options.precisions, options.repeats)
    for (kind, precision), rate in floor.items():
        rows.append({**common, "group": "floor", "library": kind, "precision": precision,
                     "budget": "", "n_images": x.shape[0], "median_s": x.shape[0] / rate,
                     "img_per_s": rate})
    if "fastpath" in options.groups:
        rows += fast_path_rows(target, x, options, common, floor)
    tuned = tune(target, x, "fp32", dataclasses.replace(options.fast, batch_size=x.shape[0]),
                 cap=x.shape[0])
    cases = build_cases(target, x, y, fit_x, eps=eps, precisions=options.precisions,
                        peers=options.peers, groups=set(options.groups),
                        onepixel_n=min(options.onepixel_n, x.shape[0]),
                        deepfool_n=min(options.deepfool_n or x.shape[0], x.shape[0]),
                        fast=tuned.target, eval_batches=options.eval_batches)
    with target.evaluating():
        rows += [_time_case(case, common, device, floor, tuned.path.name, options)
                 for case in progress_bar(iterable=cases, desc="perf", unit="case",
                                          enabled=options.progress)]
    rows += equal_fooling_rows(rows, target, x, y, fit_x, tuned.target, eps, device, options)
    df = _with_speedups(pd.DataFrame(rows))
    for f in PERF_SCHEMA:
        if f.name not in df:
            df[f.name] = None
    return df[[f.name for f in PERF_SCHEMA]]


def _time_case(case: Case, common: dict[str, Any], device: torch.device,
               floor: dict[tuple[str, str], float], fast_path: str, options: PerfOptions
               ) -> dict[str, Any]:
    """Time one case (the peers' slow minimal attacks once, the rest ``options.repeats``
    times) and score what it returned."""
    slow = case.library != "advbench" and case.group in ("onepixel", "uap", "deepfool")
    seconds, (out, extra), peak = timed(case.run, device, 1 if slow else options.repeats,
                                         0 if slow else 1)
    row = {**common, "group": case.group, "library": case.library,
           "precision": case.precision,
           "fast_path": fast_path if case.library.startswith("advbench") else None,
           "budget": case.budget, "n_images": case.n_images, "median_s": seconds,
           "img_per_s": case.n_images / seconds, "metric": case.metric,
           "score": case.score(out), "n_forward": extra.get("n_forward"),
           "n_backward": extra.get("n_backward"), "peak_mem_bytes": peak,
           "calls_per_sample": (extra["n_forward"] + extra["n_backward"]) / case.n_images
           if extra.get("n_forward") is not None and case.n_images else None}
    row["floor_fraction"] = floor_fraction(
        row["n_forward"] or 0, row["n_backward"] or 0, seconds, floor,
        case.precision if case.precision in options.precisions else "fp32")
    return row


def _with_speedups(df: pd.DataFrame) -> pd.DataFrame:
    """Each advbench row's speed-up over the fastest fp32 peer of its group (``rapid``'s: of
    ``standard``, the same evaluation at AutoAttack's budgets); PGD-40 early stop's over the
    same attack at full budget."""
    df["speedup_vs_fastest_peer"] = np.nan
    for group, g in df[df["group"] != "floor"].groupby("group"):
        mates = df[df["group"] == PEER_GROUP.get(str(group), group)]
        peers = mates[~mates["library"].str.startswith("advbench") & (mates["precision"] == "fp32")]
        if peers.empty:
            continue
        fastest = peers["img_per_s"].max()
        mine = g["library"].str.startswith("advbench")
        df.loc[g[mine].index, "speedup_vs_fastest_peer"] = g.loc[mine, "img_per_s"] / fastest
    fixed = df[(df["group"] == "pgd40-eval") & (df["library"] == "advbench-full-budget")]
    if not fixed.empty:  # early stop's speed-up over the same attack at full budget
        early = (df["group"] == "pgd40-eval") & (df["library"] == "advbench")
        df.loc[early, "speedup_vs_fastest_peer"] = (df.loc[early, "img_per_s"]
                                                    / fixed["img_per_s"].iloc[0])
    return df


def equal_fooling_rows(rows: list[dict[str, Any]], target: Target, x: torch.Tensor,
                       y: torch.Tensor, fit_x: torch.Tensor, fast: Target, eps: float,
                       device: torch.device, options: PerfOptions) -> list[dict[str, Any]]:
    """UAP time to equal strength: advbench fits passes until its fitting fooling rate reaches
    ART's held-out fooling rate (at most 10 passes), timed once; its row is
    ``advbench-equal-fooling``, so its speed-up over ART compares equal-strength perturbations."""
    art = [r for r in rows if r["group"] == "uap" and r["library"] == "art"]
    if not art:
        return []
    goal = float(art[0]["score"])
    ours = next(r for r in rows if r["group"] == "uap" and r["library"] == "advbench")
    fooling = _fooling(target, x)

    def run() -> tuple[torch.Tensor, dict[str, Any]]:
        res = run_attack("uap", fast, x, y, eps=eps,
                         generator=torch.Generator(device).manual_seed(0),
                         fit_data=(fit_x, y[:0].new_zeros(len(fit_x))),
                         params={"max_passes": 10,
                                 "target_fooling_rate": min(1.0, max(goal, 1e-6))})
        return res.artifacts["perturbation"], {"n_forward": res.n_forward,
                                               "n_backward": res.n_backward}

    with fast.evaluating():
        seconds, (v, extra), peak = timed(run, device, 1, 0)
    return [{**ours, "library": "advbench-equal-fooling",
             "budget": f"linf {eps:g}, passes until fitting fooling >= {goal:.3f} (ART's)",
             "median_s": seconds, "img_per_s": len(fit_x) / seconds, "score": fooling(v),
             "n_forward": extra["n_forward"], "n_backward": extra["n_backward"],
             "peak_mem_bytes": peak, "floor_fraction": None}]


def fast_path_rows(target: Target, x: torch.Tensor, options: PerfOptions,
                   common: dict[str, Any], floor: dict[tuple[str, str], float]
                   ) -> list[dict[str, Any]]:
    """Forward+backward images/s of every fast path (channels_last x torch.compile) per
    precision, beside the eager floor: what ``channels_last = "auto"`` / ``compile = "auto"``
    choose between. A path that fails (no compiler) is logged and left out."""
    rows = []
    paths = [p for p in candidates(target, FastPathOptions(channels_last="auto", compile="auto"))
             if p != FastPath()]
    for path, (_, rates) in measure_paths(target, x, paths, options.precisions,
                                          repeats=options.repeats).items():
        for precision, rate in rates.items():
            rows.append({**common, "group": "fastpath", "library": "advbench",
                         "fast_path": path.name, "precision": precision,
                         "budget": f"{path.name} forward+backward", "n_images": x.shape[0],
                         "median_s": x.shape[0] / rate, "img_per_s": rate,
                         "speedup_vs_fastest_peer": None, "metric": "vs eager floor",
                         "score": rate / floor[("forward+backward", precision)]})
    return rows


def write_perf(df: pd.DataFrame, out: Path) -> Path:
    """Write the rows atomically as ``out/perf-<run_id>.parquet``."""
    from leaderboards.store import atomic_write

    table = pa.Table.from_pandas(df, schema=PERF_SCHEMA, preserve_index=False)
    path = Path(out) / f"perf-{df['run_id'].iloc[0]}.parquet"
    atomic_write(table, path)
    return path


def to_markdown(df: pd.DataFrame) -> str:
    """The ratio table: floors first, then each group with its strength measure."""
    head = df.iloc[0]
    lines = [f"advbench perf · {head['model']} ({head['input_shape']}, {head['weights']}) · "
             f"{head['device']} · torch {head['torch_version']}\n"]
    shown = pd.DataFrame({
        "group": df["group"], "library": df["library"], "precision": df["precision"],
        "path": df["fast_path"].fillna(""),
        "budget": df["budget"], "n": df["n_images"],
        "img/s": df["img_per_s"].map(lambda v: f"{v:,.1f}"),
        "speed-up": df["speedup_vs_fastest_peer"].map(
            lambda v: "" if pd.isna(v) else f"{v:.2f}x"),
        "strength": [("" if pd.isna(s) else f"{m} {s:.3f}") for m, s in
                     zip(df["metric"].fillna(""), df["score"])],
        "calls/sample": df["calls_per_sample"].map(
            lambda v: "" if pd.isna(v) else f"{v:,.0f}"),
        "floor %": df["floor_fraction"].map(lambda v: "" if pd.isna(v) else f"{100 * v:.0f}"),
    })
    lines.append(shown.to_markdown(index=False, disable_numparse=True))
    lines.append("\nspeed-up: advbench img/s over the fastest peer of the group at fp32 "
                 "(pgd40-eval: early stop over the full budget); path: the fast path advbench's "
                 "attacks ran on (fastpath rows: its forward+backward over the eager floor); "
                 "calls/sample: forward + backward passes per image (hardware-free: they carry "
                 "over to any device); floor %: the attack's model calls per second over the "
                 "plain (eager) forward(+backward) throughput.")
    return "\n".join(lines) + "\n"
