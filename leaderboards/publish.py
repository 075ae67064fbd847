"""``advbench publish``: a results directory as Markdown, CSV, LaTeX and a static HTML site.

The site (:mod:`leaderboards.site` computes its content): an index saying when and by which
advbench it was generated; one page per board (dataset × target kind × threat model × norm) with
a ranked table per eps of record as tabs, a search box that filters rows as one types, sortable
columns and a stable anchor per row; and one page per entry (a model × defense population) with
its robust accuracy against eps for every attack from eps 0, the per-attack table, what was
measured, its flags and how to reproduce it; and a page of the attacks themselves, ranked by
optimality against the best known distances per population (:mod:`leaderboards.security`),
with their security curves. Plain files, no network fetch: styles and scripts
are inline, plots are SVG files beside the pages; open them from disk or any web server.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd

from bench.core import indicators
from bench.core.errors import BadInput
from bench.core.files import check_writable, temp_dir
from bench.core.version import ADVBENCH_VERSION
from leaderboards.corruptions import boards as corruption_boards
from leaderboards.corruptions import severity_grids
from leaderboards.corruptions import to_markdown as corruptions_markdown
from leaderboards.security import attack_board, curves_svg, groups
from leaderboards.security import to_markdown as attacks_markdown
from leaderboards.site import (
    WORST,
    Entry,
    Ranking,
    board_slug,
    curve_svg,
    detail_table,
    entries,
    eps_of_record,
    measured,
    ranked,
    reproduce,
    slugify,
)
from leaderboards.tables import (
    Board,
    display_spread,
    display_table,
    leaderboards,
    to_csv,
    to_markdown,
)
from leaderboards.transfer import matrices, transfer_rows
from leaderboards.transfer import to_markdown as transfer_markdown

TEMPLATES = jinja2.Environment(loader=jinja2.PackageLoader("leaderboards", "templates"),
                               autoescape=True, undefined=jinja2.StrictUndefined)
"""The site's pages: ``base.html.j2`` (style, navigation, sorting, search and tabs),
``board.html.j2``, ``entry.html.j2`` and ``index.html.j2``."""


MARKER = ".advbench-site"


def _badges(codes: list[str]) -> list[dict[str, str]]:
    return [{"code": c, "title": indicators.CATALOG[c].explanation
             if c in indicators.CATALOG else c} for c in codes]


def board_page(key: tuple[str, ...], board_entries: list[Entry], ranking: Ranking,
               wanted_eps: list[str] | None, nav: dict[str, Any]) -> str:
    """A board's page: one ranked table per eps of record (the largest shown first)."""
    tabs = []
    for value, display in eps_of_record(board_entries, wanted_eps):
        rows = ranked(board_entries, value, ranking)
        certified = any(r["certified"] is not None for r in rows)
        best = any(r["best"] is not None for r in rows)
        tabs.append({"id": "eps-" + slugify(display), "display": display, "certified": certified,
                     "best": best,
                     "rows": [_board_row(r, display) for r in rows]})
    return TEMPLATES.get_template("board.html.j2").render(
        **nav, title=" · ".join(key), ranking=ranking.title, attack=ranking.attack, tabs=tabs)


def _board_row(r: dict[str, Any], display: str) -> dict[str, Any]:
    e: Entry = r["entry"]
    robust, cert = r["robust"], r["certified"]
    return {
        "anchor": f"{e.slug}-eps-{slugify(display)}", "rank": r["rank"] or "",
        "label": e.label, "href": f"{e.slug}.html", "clean": r["clean"].text(),
        "clean_sort": r["clean"].mean, "robust": robust.text(),
        "robust_sort": robust.mean if robust.values else "",
        "robust_title": robust.spread_kind,
        "certified": f"{cert.text()} ({e.certified_by(r['eps'])})" if cert is not None else "",
        "best": r["best"].text() if r["best"] is not None else "",
        "best_sort": r["best"].mean if r["best"] is not None else "",
        "certified_sort": cert.mean if cert is not None else "",
        "cost": f"{r['cost']:,.0f}" if r["cost"] is not None else "",
        "cost_sort": r["cost"] if r["cost"] is not None else "",
        "n": e.n, "seeds": len(e.seeds), "badges": _badges(r["codes"])}


def entry_page(e: Entry, board_href: str, plot: str, nav: dict[str, Any]) -> str:
    header, body = detail_table(e)
    language, snippet = reproduce(e)
    about = e.rows[["model_description", "model_paper"]].dropna(how="all")
    codes = e.codes(e.rows["cell_id"])
    seeds = []
    if len(e.seeds) > 1:
        for g in e.seed_rows():
            worst = e.worst[(e.worst["seed"] == g["seed"].iloc[0])
                            & (e.worst["weights_sha256"] == g["weights_sha256"].iloc[0])]
            by_eps = dict(zip(worst["eps"], worst["worst_case"]))
            seeds.append({"seed": int(g["seed"].iloc[0]),
                          "weights": str(g["weights_sha256"].iloc[0])[:12],
                          "clean": f"{100 * g['clean_acc'].iloc[0]:.1f}",
                          "worst": [f"{100 * by_eps[v]:.1f}" if pd.notna(by_eps.get(v))
                                    else "" for v, _ in e.eps_values()]})
    return TEMPLATES.get_template("entry.html.j2").render(
        **nav, title=e.label, board_title=" · ".join(e.board), board_href=board_href,
        description=about["model_description"].iloc[0] if len(about) else None,
        paper=about["model_paper"].iloc[0] if len(about) else None,
        plot=plot, plot_alt=f"robust accuracy of {e.label} against eps ({e.board[3]}) for "
                            f"{', '.join([*e.attacks(), WORST])}, from eps 0 (clean)",
        header=header, body=body, measured=measured(e), seeds=seeds,
        seed_eps=[d for _, d in e.eps_values()],
        flags=[{"code": c, "explanation": indicators.CATALOG[c].explanation,
                "remedy": indicators.CATALOG[c].remedy} for c in codes
               if c in indicators.CATALOG],
        language=language, snippet=snippet)


def _cell(value: float, fmt: str) -> tuple[str, float | str]:
    """A number as shown and as sorted ("" for NaN)."""
    if pd.isna(value):
        return "", ""
    return format(value, fmt), float(value)


def attacks_page(summary: pd.DataFrame, samples: pd.DataFrame, board: pd.DataFrame, out: Path,
                 nav: dict[str, Any]) -> str:
    """The attack boards (:func:`leaderboards.security.attack_board`), one section per
    population and norm, each with its security curves as an SVG beside the page."""
    sections = []
    for number, (title, group) in enumerate(groups(board)):
        plot = f"attacks-{number}.svg"
        curves_svg(summary, samples, group[group["attack"] != "best known"], out / plot)
        rows = []
        for _, r in group.iterrows():
            success, success_sort = _cell(100 * r["success_rate"], ".1f")
            optimality, optimality_sort = _cell(r["optimality"], ".3f")
            calls, _ = _cell(r["calls_per_sample"], ",.0f")
            seconds, _ = _cell(r["s_per_sample"], ".3g")
            median = r["median_distance"]
            rows.append({"attack": r["attack"], "budget": r["budget"], "n": int(r["n"]),
                         "success": success, "success_sort": success_sort,
                         "median": f"{median:.4g} [{r['median_lo']:.4g}, {r['median_hi']:.4g}]",
                         "median_sort": median if np.isfinite(median) else 1e308,
                         "optimality": optimality, "optimality_sort": optimality_sort,
                         "calls": calls, "seconds": seconds})
        sections.append({"anchor": f"population-{number}", "title": title, "rows": rows,
                         "plot": plot, "plot_alt": f"robust accuracy against eps under each "
                                                   f"attack and the best known, {title}"})
    return TEMPLATES.get_template("attacks.html.j2").render(
        **nav, title="attacks, ranked by optimality", groups=sections)


def _shown(table: pd.DataFrame) -> dict[str, Any]:
    """A table's columns and rows as text for a template (numbers to one decimal)."""
    shown = table.copy()
    for col in shown.columns:
        if pd.api.types.is_float_dtype(shown[col]):
            shown[col] = [("" if pd.isna(v) else f"{v:.1f}") for v in shown[col]]
    return {"columns": [str(c) for c in shown.columns],
            "rows": shown.astype(str).values.tolist()}


def corruptions_page(rows: pd.DataFrame, grids: list[str], nav: dict[str, Any]) -> str:
    """The corruption boards (:mod:`leaderboards.corruptions`), each target's corruption ×
    severity grid where a set has several severities, and the example images."""
    found = [{"anchor": f"evaluation-{i}", "title": title, **_shown(table)}
             for i, (title, table) in enumerate(corruption_boards(rows))]
    levels = [{"anchor": f"severities-{i}", "title": title, **_shown(table)}
              for i, (title, table) in enumerate(severity_grids(rows))]
    return TEMPLATES.get_template("corruptions.html.j2").render(
        **nav, title="common corruptions", boards=found, levels=levels, grids=grids)


def transfer_page(rows: pd.DataFrame, nav: dict[str, Any]) -> str:
    """The transfer matrices (:mod:`leaderboards.transfer`) as one page."""
    found = [{"anchor": f"matrix-{i}", "title": title, "columns": list(table.columns),
              "rows": [{"source": source, "cells": ["" if pd.isna(v) else f"{v:.1f}"
                                                     for v in values]}
                       for source, values in zip(table.index, table.to_numpy(), strict=True)]}
             for i, (title, table) in enumerate(matrices(rows))]
    return TEMPLATES.get_template("transfer.html.j2").render(
        **nav, title="transfer matrices", matrices=found)


def to_latex(board: Board) -> str:
    """A LaTeX tabular of the display table (booktabs), with the board's title as a comment."""
    def tabular(shown: pd.DataFrame) -> str:
        return shown.style.hide(axis="index").to_latex(hrules=True).replace("%", r"\%")

    text = f"% {board.title}\n% {board.ranking}\n" + tabular(display_table(board))
    if not board.spread.empty:
        text += ("% over seeds: mean [min-max] of the rows above that differ only in their seed\n"
                 + tabular(display_spread(board)))
    return text


def publish(summary: pd.DataFrame, samples: pd.DataFrame, out: Path,
            comparison: pd.DataFrame | None = None, rank_by: str | None = None,
            eps: list[str] | None = None, corruptions: pd.DataFrame | None = None,
            grids: Sequence[Path] = ()) -> list[Path]:
    """Write every format into ``out`` (built in a temporary folder, then moved into place,
    replacing an earlier site whole). Boards are ranked by ``rank_by`` (an attack label or an
    ``attack@eps`` column; default the worst case) at each eps of record (``eps``: those
    listed; default every eps); the Markdown, CSV and LaTeX tables rank by the same attack at
    the largest of them. ``corruptions`` (:mod:`leaderboards.corruptions` rows) and their
    example ``grids`` (PNG files) make the corruptions page."""
    found = entries(summary, samples)
    ranking = Ranking.parse(rank_by, found)
    boards = leaderboards(summary, samples, _table_rank(found, ranking, eps))
    out = Path(out)
    check_writable(out, "--out")
    if out.exists() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise BadInput(f"{out} exists and is not a site advbench published; pick a new --out "
                       f"folder (advbench replaces only its own sites)")
    by_board: dict[tuple[str, ...], list[Entry]] = {}
    for e in found:
        by_board.setdefault(e.board, []).append(e)
    if eps and not any(eps_of_record(b, eps) for b in by_board.values()):
        shown = sorted({d for e in found for _, d in e.eps_values()})
        raise BadInput(f"no board has eps {', '.join(eps)}; eps there are: {', '.join(shown)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(out.parent, f".{out.name}.")
    try:
        (tmp / MARKER).write_text("published by advbench; `advbench publish` replaces it\n")
        (tmp / "leaderboard.md").write_text("\n".join(to_markdown(b) for b in boards))
        (tmp / "leaderboard.csv").write_text("".join(to_csv(b) for b in boards))
        (tmp / "leaderboard.tex").write_text("\n".join(to_latex(b) for b in boards))
        if comparison is not None and not comparison.empty:
            from leaderboards.compare import to_markdown as compare_markdown

            (tmp / "comparison.md").write_text(compare_markdown(comparison))
            comparison.to_csv(tmp / "comparison.csv", index=False)
        attack_rows = attack_board(summary, samples)
        links = [(f"{board_slug(k)}.html", " · ".join(k)) for k in by_board]
        if not attack_rows.empty:
            links.append(("attacks.html", "attacks"))
            (tmp / "attacks.md").write_text(attacks_markdown(attack_rows))
            attack_rows.to_csv(tmp / "attacks.csv", index=False)
        has_corruptions = corruptions is not None and not corruptions.empty
        if has_corruptions:
            assert corruptions is not None
            links.append(("corruptions.html", "corruptions"))
            (tmp / "corruptions.md").write_text(corruptions_markdown(corruptions))
            corruptions.to_csv(tmp / "corruptions.csv", index=False)
            for grid in grids:
                shutil.copyfile(grid, tmp / f"corruptions-{grid.name}")
        transfer = transfer_rows(summary)
        if not transfer.empty:
            links.append(("transfer.html", "transfer"))
            (tmp / "transfer.md").write_text(transfer_markdown(transfer))
            transfer.to_csv(tmp / "transfer.csv", index=False)
        generated = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        nav = {"links": links, "generated": generated, "version": ADVBENCH_VERSION}
        for key, board_entries in by_board.items():
            href = f"{board_slug(key)}.html"
            (tmp / href).write_text(board_page(key, board_entries, ranking, eps, nav))
            for e in board_entries:
                curve_svg(e, tmp / f"{e.slug}.svg")
                (tmp / f"{e.slug}.html").write_text(entry_page(e, href, f"{e.slug}.svg", nav))
        if not attack_rows.empty:
            (tmp / "attacks.html").write_text(attacks_page(summary, samples, attack_rows, tmp,
                                                           nav))
        if not transfer.empty:
            (tmp / "transfer.html").write_text(transfer_page(transfer, nav))
        if has_corruptions:
            assert corruptions is not None
            (tmp / "corruptions.html").write_text(corruptions_page(
                corruptions, [f"corruptions-{g.name}" for g in grids], nav))
        files = sorted(p.name for p in tmp.iterdir() if p.suffix in (".md", ".csv", ".tex"))
        boards_index = [{"href": href, "title": title,
                         "entries": len(by_board[key]),
                         "eps": ", ".join(d for _, d in eps_of_record(by_board[key], eps))}
                        for (href, title), key in zip(links, by_board)]
        (tmp / "index.html").write_text(TEMPLATES.get_template("index.html.j2").render(
            **nav, title="advbench leaderboards", boards=boards_index, files=files,
            n_cells=summary["cell_id"].nunique()))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return sorted(out.iterdir())


def _table_rank(found: list[Entry], ranking: Ranking, eps: list[str] | None) -> str | None:
    """The column the Markdown, CSV and LaTeX tables rank by: the site's ranking attack at the
    largest eps of record (None: their default, the worst case at the largest eps)."""
    if ranking.attack == WORST and not eps:
        return None
    chosen = eps_of_record(found, eps)
    if not chosen:
        return None
    display = chosen[-1][1]
    column = f"worst@{display}" if ranking.attack == WORST else f"{ranking.attack}@{display}"
    tables = {c for e in found for c in (f"{a}@{d}" for a in e.attacks()
                                         for _, d in e.eps_values())}
    return column if column in tables or ranking.attack == WORST else None


__all__ = ["attacks_page", "publish", "board_page", "entry_page", "to_latex"]
