"""The ``advbench`` command line: parses arguments and calls the library, nothing more.

Exit codes: 0 success, 2 bad input (one line on stderr), 130 interrupted (Ctrl-C: cells stored
so far stay stored, a rerun resumes), 1 any other failure.
"""

from __future__ import annotations

import argparse
import fnmatch
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import defaults
from bench.core.errors import BadInput

LISTS = ("attacks", "defenses", "models", "datasets", "presets", "flags")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="advbench", description=(
        "Adversarial-robustness benchmark sweeps for PyTorch: attacks x defenses x models, "
        "results in Parquet, leaderboards and defense comparisons in Markdown/CSV, throughput "
        "against the peers (perf)."), epilog=(
        "exit codes: 0 success, 2 bad input (one line on stderr, nothing written), 130 "
        "interrupted (stored cells stay; a rerun resumes), 1 any other failure"))
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_readers(sub)
    _add_perf(sub)
    return parser


RANK_HELP = ("the accuracy column to rank rows by, e.g. 'standard@0.3', 'worst@0.3' or "
             "'clean' (default: the worst case at the largest eps)")


def _add_run(sub: Any) -> None:
    run = sub.add_parser("run", help="run a sweep (a TOML config or a built-in preset)")
    src = run.add_mutually_exclusive_group(required=True)
    src.add_argument("config", nargs="?", help="sweep config (TOML)")
    src.add_argument("--preset", help="a built-in sweep, e.g. 'quick' (see: advbench list presets)")
    run.add_argument("--out", default="results", help="results directory (default: ./results)")
    run.add_argument("--cache-dir", default=None,
                     help="checkpoint cache (default: $ADVBENCH_CACHE or ~/.cache/advbench)")
    run.add_argument("--device", default=None, help="override the config's device (cpu, cuda:0)")
    run.add_argument("--force", action="store_true", help="recompute cells already stored")
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")
    run.add_argument("--dry-run", action="store_true",
                     help="list the cells and their estimated model calls; run nothing")
    run.add_argument("--executor", choices=("local", "ray"), default="local",
                     help="local: this machine; ray: one Ray task per group of cells")
    run.add_argument("--workers", type=int, default=None, help=(
        "local executor: worker processes (default: one per visible GPU on CUDA, else 1 = "
        "in process)"))
    run.add_argument("--address", default=None, help=(
        "ray executor: 'auto' or host:port of a running cluster (default: start a local one)"))
    run.add_argument("--retries", type=int, default=defaults.RETRIES, help=(
        "reruns of a failed worker/Ray task before its cells are reported (default: "
        "%(default)s)"))
    run.add_argument("--claim-ttl", type=float, default=None, metavar="SECONDS", help=(
        "seconds an unrenewed claim on a cell lasts before any sweep may take the cell over "
        f"(default: the config's claim_ttl, else {defaults.CLAIM_TTL_S:g})"))
    run.add_argument("--no-wait", action="store_true", help=(
        "exit once this sweep's own cells are done, leaving cells another running sweep holds "
        "to it (default: wait until they are stored)"))
    run.add_argument("--repair", action="store_true", help=(
        "first move unreadable or foreign files of --out into its quarantine/ folder (as "
        "`advbench doctor`), then run"))


def _add_readers(sub: Any) -> None:
    """The commands that read what is registered or stored: list, leaderboard, compare,
    publish."""
    lst = sub.add_parser("list", help=(
        "list registered attacks, defenses, models, datasets, presets, failure indicators (flags)"))
    lst.add_argument("what", choices=LISTS)
    lst.add_argument("pattern", nargs="?", default="*", help="wildcard filter, e.g. 'pgd*'")
    lst.add_argument("--config", default=None,
                     help="models: also list the [[models]] of this sweep config")

    board = sub.add_parser("leaderboard", help="print leaderboard tables from stored results")
    board.add_argument("results", nargs="?", default="results", help="results directory")
    board.add_argument("--format", choices=("md", "csv"), default="md")
    board.add_argument("--rank-by", metavar="COLUMN", help=RANK_HELP)

    comp = sub.add_parser("compare", help=(
        "compare defenses with the undefended baseline per attack and eps (95%% intervals, "
        "gradient-masking flags)"))
    comp.add_argument("results", nargs="?", default="results", help="results directory")
    comp.add_argument("--format", choices=("md", "csv"), default="md")

    atk = sub.add_parser("attacks", help=(
        "rank the attacks run on each model and norm by optimality against the best known "
        "per-sample distances (AttackBench), with success, median distance, calls and time"))
    atk.add_argument("results", nargs="?", default="results", help="results directory")
    atk.add_argument("--format", choices=("md", "csv"), default="md")

    cor = sub.add_parser("corruptions", help=(
        "evaluate every classifier target of a sweep under common corruptions (MNIST-C's 15 "
        "for grayscale images, CIFAR-10-C's at severities 1-5 for colour ones; accuracy per "
        "corruption, mean and worst) into RESULTS/corruptions/ and print the "
        "board"))
    src = cor.add_mutually_exclusive_group(required=True)
    src.add_argument("config", nargs="?", help="sweep config (TOML): its targets, samples, seeds")
    src.add_argument("--preset", help="a built-in sweep, e.g. 'quick'")
    cor.add_argument("--out", default="results", help="results directory (default: ./results)")
    cor.add_argument("--corruptions", nargs="+", default=None, metavar="NAME",
                     help="a subset of the corruptions (default: all of the set)")
    cor.add_argument("--severities", nargs="+", type=int, default=None, metavar="S",
                     help="a subset of the severities 1-5 (CIFAR-10-C; default: all)")
    cor.add_argument("--cache-dir", default=None)
    cor.add_argument("--device", default=None)
    cor.add_argument("--no-progress", action="store_true", help="hide progress bars")

    tr = sub.add_parser("transfer", help=(
        "the transfer matrix: each target's robust accuracy under adversarials crafted on each "
        "source model (and white-box), per attack and eps"))
    tr.add_argument("results", nargs="?", default="results", help="results directory")
    tr.add_argument("--format", choices=("md", "csv"), default="md")

    ab = sub.add_parser("attackbench", help=(
        "run every minimum-norm attack implementation (advbench's and the installed peers') "
        "on a model under the same per-sample call budget and rank them by optimality "
        "(AttackBench); per-sample distances to Parquet"))
    ab.add_argument("--model", default="lenet", help="a zoo model, trained if not cached")
    ab.add_argument("--dataset", default="mnist5k")
    ab.add_argument("--norm", default="l2", choices=("l0", "l1", "l2", "linf"))
    ab.add_argument("--n", type=int, default=100, help="test samples (default 100)")
    ab.add_argument("--budget", type=int, default=2000,
                    help="forward + backward passes per sample (default 2000, AttackBench's)")
    ab.add_argument("--libraries", nargs="+", default=None,
                    help="advbench, adv-lib, foolbox (default: every installed one)")
    ab.add_argument("--attacks", nargs="+", default=None,
                    help="fmn, ddn, cw, ead, fab_t, deepfool, alma (default: every one of the norm)")
    ab.add_argument("--out", default=None, help="Parquet file of the per-sample distances")
    ab.add_argument("--cache-dir", default=None)

    pub = sub.add_parser("publish", help=(
        "write leaderboards as Markdown, CSV, LaTeX and a static HTML site (ranked, "
        "searchable boards; one page per entry with its robust accuracy vs eps)"))
    pub.add_argument("results", nargs="?", default="results", help="results directory")
    pub.add_argument("--out", default="site", help="site folder (default: ./site)")
    pub.add_argument("--rank-by", metavar="ATTACK", help=(
        "the attack boards rank by, e.g. 'standard' or 'standard@0.3' (its column; the site "
        "ranks by that attack at each eps) (default: the worst case over every attack)"))
    pub.add_argument("--eps", nargs="+", metavar="EPS", default=None, help=(
        "the eps of record: one ranked table (a tab) per listed eps (default: every eps)"))

    doc = sub.add_parser("doctor", help=(
        "check a results directory; move unreadable or foreign files, and samples no summary "
        "refers to, into its quarantine/ folder (nothing is deleted)"))
    doc.add_argument("results", nargs="?", default="results", help="results directory")


def _add_perf(sub: Any) -> None:
    perf = sub.add_parser("perf", help=(
        "measure attack throughput against the forward/backward floor and the peers "
        "(foolbox, torchattacks, ART) at identical budgets"))
    perf.add_argument("--model", default="lenet", help="a zoo model (default: lenet)")
    perf.add_argument("--dataset", default=None, help=(
        "data the model is trained on and attacked with (default: mnist5k for 28x28x1 "
        "models, mnist5k-rgb32 for 32x32x3; other shapes use random weights on synthetic "
        "inputs)"))
    perf.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    perf.add_argument("--batch-size", type=int, default=None,
                      help="images per attack call (default: 1024 on CUDA, 256 on the CPU)")
    perf.add_argument("--eps", type=float, default=None,
                      help="Linf budget (default: 0.3 grayscale, 8/255 colour)")
    perf.add_argument("--precision", nargs="+", default=list(defaults.PERF_PRECISIONS),
                      choices=("fp32", "bf16", "fp16"),
                      help="precisions for floors and attacks (default: %(default)s)")
    perf.add_argument("--groups", nargs="+", default=list(defaults.PERF_GROUPS), metavar="GROUP",
                      help=f"a subset of: {' '.join(defaults.PERF_GROUPS)} (default: all)")
    perf.add_argument("--no-peers", action="store_true", help="advbench only")
    perf.add_argument("--repeats", type=int, default=defaults.PERF_REPEATS,
                      help="timed repeats per case, the median reported (default: %(default)s)")
    perf.add_argument("--uap-fit", type=int, default=defaults.PERF_UAP_FIT, help=(
        "training images the UAP cases fit on (ART needs ~1 s each on a CPU; default: "
        "%(default)s)"))
    perf.add_argument("--eval-batches", type=int, default=defaults.PERF_EVAL_BATCHES, help=(
        "pgd40-eval attacks this many batches of images, --batch-size rows at a time "
        "(default: %(default)s)"))
    perf.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto", help=(
        "advbench's attacks on an NHWC copy of the model: on, off, or auto (the faster "
        "measured; default)"))
    perf.add_argument("--compile", choices=("auto", "on", "off"), default="off", help=(
        "advbench's attacks on a torch.compile'd model: on, off (default), or auto"))
    perf.add_argument("--out", default="perf", help="where the Parquet file goes (default: perf/)")
    perf.add_argument("--cache-dir", default=None, help="checkpoint cache")
    perf.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _list(what: str, pattern: str, config: str | None = None) -> str:
    from attacks import ATTACKS
    from bench.config import preset_names
    from bench.core.datasets import DATASETS
    from bench.core.zoo import ZOO
    from defenses import DEFENSES

    rows: list[tuple[str, ...]]
    if what == "attacks":
        rows = [(n, ",".join(x.value for x in ATTACKS.get(n).norms),
                 ("label-only" if ATTACKS.get(n).label_only else
                  "black-box" if ATTACKS.get(n).black_box else "white-box"),
                 ATTACKS.get(n).summary) for n in ATTACKS.names(pattern)]
    elif what == "defenses":
        rows = [(n, DEFENSES.get(n).summary) for n in DEFENSES.names(pattern)]
    elif what == "models":
        import generative  # noqa: F401  (registers the GANs in the zoo)

        rows = [(n, ZOO.get(n).kind, ZOO.get(n).shapes, f"zoo: {ZOO.get(n).summary}")
                for n in ZOO.names(pattern)]
        if config:
            from bench.config import load_config

            rows += [(m.name, m.kind, "x".join(map(str, m.input_shape)),
                      f"yours: {m.factory}" + (f" with {m.weights}" if m.weights else ""))
                     for m in load_config(config).models if fnmatch.fnmatch(m.name, pattern)]
    elif what == "datasets":
        rows = [(n, (DATASETS.get(n).__doc__ or "").strip().splitlines()[0])
                for n in DATASETS.names(pattern)]
    elif what == "flags":
        from bench.core.indicators import CATALOG

        rows = [(i.code, f"{i.explanation} (raised at: {i.threshold}; remedy: {i.remedy})")
                for i in CATALOG.values() if fnmatch.fnmatch(i.code, pattern)]
    else:
        rows = [(n,) for n in preset_names() if fnmatch.fnmatch(n, pattern)]
    width = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)] if rows else []
    return "\n".join("  ".join([*(c.ljust(w) for c, w in zip(r, width)), r[-1]]) for r in rows)


def _run(args: argparse.Namespace) -> int:
    from bench.config import load_config, load_preset
    from bench.core.checkpoints import resolve_cache_dir
    from bench.runner import RunOptions
    from bench.sweep import dry_run_text, plan_sweep, run_sweep, summary_line
    from leaderboards import render

    config = load_preset(args.preset) if args.preset else load_config(args.config)
    options = RunOptions(out=Path(args.out), cache_dir=resolve_cache_dir(args.cache_dir),
                         force=args.force, progress=not args.no_progress, device=args.device,
                         executor=args.executor, workers=args.workers, address=args.address,
                         retries=args.retries, wait=not args.no_wait,
                         claim_ttl=args.claim_ttl)
    if args.repair and Path(args.out).is_dir():
        print(_doctor(args.out))
    if args.dry_run:
        print(dry_run_text(plan_sweep(config, options)))
        return 0
    report = run_sweep(config, options)
    print(summary_line(config, report, options.out) + "\n")
    if report.written or report.skipped:
        print(render(options.out, "md"))
    for cell_id, reason in report.retried:
        print(f"advbench: cell {cell_id} retried: {reason}", file=sys.stderr)
    if report.failed:
        for cell_id, error in report.failed:
            print(f"advbench: cell {cell_id} failed: {error}", file=sys.stderr)
        return 1
    return 0


def _doctor(results: str) -> str:
    from leaderboards.store import ResultStore

    root = Path(results)
    if not root.is_dir():
        raise BadInput(f"results directory {root} does not exist")
    store = ResultStore(root)
    moved = store.doctor()
    lines = [f"moved {a} -> {b}" for a, b in moved]
    scan = store.scan()
    lines += [f"left {p.path}: {p.reason}" for p in scan.problems]
    lines.append(f"{root}: {len(scan.cells)} whole cell(s), {len(moved)} file(s) moved aside, "
                 f"{len(scan.problems)} problem(s) left")
    return "\n".join(lines)


def _perf(args: argparse.Namespace) -> int:
    from bench.core.checkpoints import resolve_cache_dir
    from bench.core.fastpath import FastPathOptions
    from bench.perf import PerfOptions, run_perf, to_markdown, write_perf

    choice = {"auto": "auto", "on": True, "off": False}
    options = PerfOptions(
        model=args.model, dataset=args.dataset, device=args.device, batch_size=args.batch_size,
        eps=args.eps, precisions=tuple(dict.fromkeys(["fp32", *args.precision])),
        groups=tuple(args.groups), peers=not args.no_peers, repeats=args.repeats,
        uap_fit=args.uap_fit, eval_batches=args.eval_batches,
        fast=FastPathOptions(channels_last=choice[args.channels_last],  # type: ignore[arg-type]
                             compile=choice[args.compile]),  # type: ignore[arg-type]
        cache_dir=resolve_cache_dir(args.cache_dir), progress=not args.no_progress)
    df = run_perf(options)
    path = write_perf(df, Path(args.out))
    print(to_markdown(df))
    print(f"rows written to {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "list":
            print(_list(args.what, args.pattern, args.config))
            return 0
        if args.command == "leaderboard":
            from leaderboards import render

            print(render(args.results, args.format, args.rank_by))
            return 0
        if args.command == "perf":
            return _perf(args)
        if args.command == "publish":
            from leaderboards import publish_site

            files = publish_site(args.results, args.out, args.rank_by, args.eps)
            print(f"published {len(files)} file(s) to {args.out}/ (open {args.out}/index.html)")
            return 0
        if args.command == "doctor":
            print(_doctor(args.results))
            return 0
        if args.command == "compare":
            from leaderboards import render_comparison

            print(render_comparison(args.results, args.format))
            return 0
        if args.command == "attackbench":
            return _attackbench(args)
        if args.command == "attacks":
            from leaderboards import render_attack_board

            print(render_attack_board(args.results, args.format))
            return 0
        if args.command == "corruptions":
            return _corruptions(args)
        if args.command == "transfer":
            from leaderboards import render_transfer

            print(render_transfer(args.results, args.format))
            return 0
    except BadInput as exc:
        print(f"advbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("advbench: interrupted", file=sys.stderr)
        return 130
    return 1


def _corruptions(args: argparse.Namespace) -> int:
    """``advbench corruptions``: evaluate the sweep's targets, store the rows, print the
    board of the results directory."""
    from bench.config import load_config, load_preset
    from bench.core.checkpoints import resolve_cache_dir
    from bench.core.files import check_writable
    from bench.corruption_eval import run
    from bench.runner import RunOptions
    from leaderboards.corruptions import load_corruptions, to_markdown

    config = load_preset(args.preset) if args.preset else load_config(args.config)
    out = Path(args.out)
    check_writable(out, "--out")
    options = RunOptions(out=out, cache_dir=resolve_cache_dir(args.cache_dir),
                         progress=not args.no_progress, device=args.device)
    path, n_rows = run(config, options, tuple(args.corruptions or ()),
                       progress=None if args.no_progress else
                       lambda what: print(f"corrupting for {what}", file=sys.stderr),
                       severities=tuple(args.severities or ()))
    print(f"{n_rows} row(s) in {path}\n")
    print(to_markdown(load_corruptions(out)))
    return 0


def _attackbench(args: argparse.Namespace) -> int:
    """``advbench attackbench``: train or load the zoo model, run every implementation under
    the budget, print the board, write the distances."""
    import torch

    from bench.attackbench import attack_bench, write
    from bench.core.checkpoints import CheckpointCache, resolve_cache_dir
    from bench.core.datasets import load_dataset
    from bench.core.norms import Norm
    from bench.core.training import trained_classifier
    from leaderboards.security import board_from_distances

    if args.n < 1:
        raise BadInput(f"--n must be >= 1, got {args.n}")
    if args.budget < 2:
        raise BadInput(f"budget must be >= 2 calls per sample, got {args.budget}")
    data = load_dataset(args.dataset)
    target, _ = trained_classifier(args.model, data, seed=0, device=torch.device("cpu"),
                                   cache=CheckpointCache(resolve_cache_dir(args.cache_dir)),
                                   progress=True)
    x, y = data.test.x[:args.n], data.test.y[:args.n]
    table = attack_bench(target, x, y, norm=Norm.parse(args.norm), budget=args.budget,
                         libraries=tuple(args.libraries) if args.libraries else None,
                         attacks=tuple(args.attacks) if args.attacks else None,
                         progress=lambda name: print(f"running {name}", file=sys.stderr))
    board = board_from_distances(table)
    print(f"{args.model} on {len(x)} {args.dataset} test samples, {args.norm}, "
          f"{args.budget} calls per sample")
    print(board.to_markdown(index=False, floatfmt=".4g"))
    if args.out:
        write(table, Path(args.out))
        print(f"per-sample distances: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
