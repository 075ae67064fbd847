"""``advbench publish``: a results directory as Markdown, CSV, LaTeX and a static HTML site.

The site has an index and one page per leaderboard (dataset × target kind × threat model ×
norm), linked both ways. Each page holds the table (click a header to sort; numbers sort as
numbers) and a plot of worst-case robust accuracy against eps per (model, defense), drawn with
matplotlib. Pages are self-contained static files: open them from disk or any web server.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import jinja2
import pandas as pd

from bench.core.errors import BadInput
from bench.core.files import check_writable, temp_dir
from leaderboards.seeds import SPREAD_CAPTION
from leaderboards.tables import (
    BESIDE,
    Board,
    display_spread,
    display_table,
    leaderboards,
    to_csv,
    to_markdown,
)

TEMPLATES = jinja2.Environment(loader=jinja2.PackageLoader("leaderboards", "templates"),
                               autoescape=True, undefined=jinja2.StrictUndefined)
"""The site's pages: ``base.html.j2`` (style, navigation, the sorting script), ``board.html.j2``
and ``index.html.j2``."""


MARKER = ".advbench-site"


def slug(board: Board) -> str:
    text = f"{board.dataset}-{board.target_kind}-{board.threat}-{board.norm}".lower()
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def board_page(board: Board, links: list[tuple[str, str]], plot: str | None) -> str:
    """A leaderboard's page: its display table, sortable (worst-case cells sort by value), and
    the plot when there is one."""
    shown = display_table(board)
    keys = set(board.key_columns)
    columns = [{"name": c, "css": "key" if c in keys else "num"} for c in shown.columns]
    rows = []
    for i, row in shown.iterrows():
        rows.append([{"text": str(row[col]), "css": "key" if col in keys else "num",
                      "sort": None if col in keys or pd.isna(board.table.loc[i, col])
                      else str(board.table.loc[i, col])} for col in shown.columns])
    spread = display_spread(board) if not board.spread.empty else pd.DataFrame()
    spread_columns = [{"name": c, "css": "key" if c in keys or c == "seeds" else "num"}
                      for c in spread.columns]
    spread_rows = [[{"text": str(row[col]), "css": "num", "sort": None} for col in spread.columns]
                   for _, row in spread.iterrows()]
    return TEMPLATES.get_template("board.html.j2").render(
        title=board.title, ranking=board.ranking, links=links, columns=columns, rows=rows, plot=plot,
        spread_columns=spread_columns, spread_rows=spread_rows, spread_caption=SPREAD_CAPTION)


def plot_worst_case(board: Board, path: Path) -> bool:
    """Worst-case robust accuracy vs eps per (model, defense[, direction]); False if the board
    has no worst-case columns."""
    worst = [c for c in board.table.columns if c.startswith("worst@") and
             not c.endswith((" lo", " hi"))]
    if not worst:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps = [_eps_value(c.removeprefix("worst@")) for c in worst]
    fig, ax = plt.subplots(figsize=(8.0, 4.0), dpi=100)
    for _, row in board.table.iterrows():
        label = board.row_label(row)
        values = [100 * row[c] for c in worst]
        (line,) = ax.plot(eps, values, marker="o", label=label)
        lo = [100 * row[f"{c} lo"] for c in worst]
        hi = [100 * row[f"{c} hi"] for c in worst]
        ax.fill_between(eps, lo, hi, alpha=0.15)
        certified = certified_curve(board, row)
        if certified:
            ax.plot(list(certified), [100 * v for v in certified.values()], linestyle="--",
                    marker="x", color=line.get_color(), label=f"{label} certified")
    ax.set_xlabel(f"eps ({board.norm})")
    ax.set_ylabel("worst-case robust accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(board.title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def certified_curve(board: Board, row: pd.Series) -> dict[float, float]:
    """A certified defense's certified accuracy by eps for one board row (the lower bound
    drawn beside the attacked curve), read from the board's certified columns."""
    curve: dict[float, float] = {}
    suffix = BESIDE["certified_acc"]
    for col in board.table.columns:
        if col.endswith(suffix) and pd.notna(row[col]):
            eps = _eps_value(col.removesuffix(suffix).rsplit("@", 1)[1])
            curve[eps] = max(curve.get(eps, 0.0), float(row[col]))
    return dict(sorted(curve.items()))


def _eps_value(display: str) -> float:
    if "/" in display:
        num, den = display.split("/", 1)
        return float(num) / float(den)
    return float(display)


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
            comparison: pd.DataFrame | None = None, rank_by: str | None = None) -> list[Path]:
    """Write every format into ``out`` (built in a temporary folder, then moved into place);
    boards ranked by ``rank_by`` (:func:`leaderboards.tables.leaderboards`)."""
    boards = leaderboards(summary, samples, rank_by)
    out = Path(out)
    check_writable(out, "--out")
    if out.exists() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise BadInput(f"{out} exists and is not a site advbench published; pick a new --out "
                       f"folder (advbench replaces only its own sites)")
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
        links = [(f"{slug(b)}.html", b.title) for b in boards]
        for board, (href, _) in zip(boards, links):
            plot = f"{slug(board)}.png"
            (tmp / href).write_text(board_page(
                board, links, plot if plot_worst_case(board, tmp / plot) else None))
        files = sorted(p.name for p in tmp.iterdir() if p.suffix in (".md", ".csv", ".tex"))
        (tmp / "index.html").write_text(TEMPLATES.get_template("index.html.j2").render(
            title="advbench leaderboards", links=links, files=files,
            n_cells=summary["cell_id"].nunique()))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return sorted(out.iterdir())


__all__ = ["publish", "board_page", "plot_worst_case", "to_latex", "slug"]
