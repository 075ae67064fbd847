"""``advbench publish``: a results directory as Markdown, CSV, LaTeX and a static HTML site.

The site has an index and one page per leaderboard (dataset × target kind × threat model ×
norm), linked both ways. Each page holds the table (click a header to sort; numbers sort as
numbers) and a plot of worst-case robust accuracy against eps per (model, defense), drawn with
matplotlib. Pages are self-contained static files: open them from disk or any web server.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from bench.core.errors import BadInput
from leaderboards.tables import Board, display_table, leaderboards, to_csv, to_markdown

SORT_SCRIPT = """
<script>
// Click a header to sort by it; click again to reverse. Numbers (the leading one of a cell,
// e.g. "69.2 [66.3, 72.0]") sort as numbers, everything else as text.
function cellKey(td) {
  const text = td.getAttribute("data-sort") ?? td.textContent.trim();
  const number = parseFloat(text.replace(/,/g, ""));
  return Number.isNaN(number) ? text.toLowerCase() : number;
}
document.querySelectorAll("table.sortable").forEach(table => {
  table.querySelectorAll("th").forEach((th, col) => {
    th.addEventListener("click", () => {
      const body = table.tBodies[0];
      const rows = Array.from(body.rows);
      const ascending = th.getAttribute("aria-sort") !== "ascending";
      rows.sort((a, b) => {
        const x = cellKey(a.cells[col]), y = cellKey(b.cells[col]);
        const order = typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0)
                                            : (typeof x === "number" ? -1 : 1);
        return ascending ? order : -order;
      });
      table.querySelectorAll("th").forEach(h => h.removeAttribute("aria-sort"));
      th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      rows.forEach(row => body.appendChild(row));
    });
  });
});
</script>
"""

STYLE = """
<style>
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: right;
         white-space: nowrap; }
th { background: #f3f3f3; cursor: pointer; user-select: none; }
th[aria-sort="ascending"]::after { content: " ▲"; }
th[aria-sort="descending"]::after { content: " ▼"; }
td.key, th.key { text-align: left; }
nav a { margin-right: 1rem; }
img { max-width: 800px; }
</style>
"""


MARKER = ".advbench-site"


def slug(board: Board) -> str:
    text = f"{board.dataset}-{board.target_kind}-{board.threat}-{board.norm}".lower()
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def _page(title: str, body: str, nav: str) -> str:
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title>{STYLE}</head>\n<body>\n<nav>{nav}</nav>\n"
            f"<h1>{html.escape(title)}</h1>\n{body}\n{SORT_SCRIPT}</body></html>\n")


def html_table(board: Board) -> str:
    """The board's display table as a sortable HTML table; worst-case cells sort by value."""
    shown = display_table(board)
    keys = {"model", "defense", "direction"}
    head = "".join(f"<th class=\"{'key' if c in keys else 'num'}\">{html.escape(c)}</th>"
                   for c in shown.columns)
    rows = []
    for i, row in shown.iterrows():
        cells = []
        for col in shown.columns:
            raw = board.table.loc[i, col]
            sort = "" if col in keys or pd.isna(raw) else f" data-sort=\"{raw}\""
            css = "key" if col in keys else "num"
            cells.append(f"<td class=\"{css}\"{sort}>{html.escape(str(row[col]))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<table class=\"sortable\"><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


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
        label = " / ".join(str(row[k]) for k in ("model", "defense", "direction")
                           if k in board.table.columns and row[k])
        values = [100 * row[c] for c in worst]
        ax.plot(eps, values, marker="o", label=label)
        lo = [100 * row[f"{c} lo"] for c in worst]
        hi = [100 * row[f"{c} hi"] for c in worst]
        ax.fill_between(eps, lo, hi, alpha=0.15)
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


def _eps_value(display: str) -> float:
    if "/" in display:
        num, den = display.split("/", 1)
        return float(num) / float(den)
    return float(display)


def to_latex(board: Board) -> str:
    """A LaTeX tabular of the display table (booktabs), with the board's title as a comment."""
    shown = display_table(board)
    body = shown.style.hide(axis="index").to_latex(hrules=True)
    return f"% {board.title}\n" + body.replace("%", r"\%")


def publish(summary: pd.DataFrame, samples: pd.DataFrame, out: Path,
            comparison: pd.DataFrame | None = None) -> list[Path]:
    """Write every format into ``out`` (built in a temporary folder, then moved into place)."""
    boards = leaderboards(summary, samples)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise BadInput(f"{out} exists and is not a site advbench published; pick a new --out "
                       f"folder (advbench replaces only its own sites)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
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
        nav = "<a href=\"index.html\">index</a>" + "".join(
            f"<a href=\"{href}\">{html.escape(title)}</a>" for href, title in links)
        for board, (href, _) in zip(boards, links):
            plot = f"{slug(board)}.png"
            figure = (f"<img src=\"{plot}\" alt=\"worst-case robust accuracy vs eps\">"
                      if plot_worst_case(board, tmp / plot) else "")
            (tmp / href).write_text(_page(board.title, html_table(board) + figure, nav))
        items = "".join(f"<li><a href=\"{href}\">{html.escape(title)}</a></li>"
                        for href, title in links)
        files = "".join(f"<li><a href=\"{name}\">{name}</a></li>" for name in sorted(
            p.name for p in tmp.iterdir() if p.suffix in (".md", ".csv", ".tex")))
        n_cells = summary["cell_id"].nunique()
        (tmp / "index.html").write_text(_page(
            "advbench leaderboards",
            f"<p>{n_cells} cells, {len(boards)} leaderboards.</p><ul id=\"boards\">{items}</ul>"
            f"<h2>Downloads</h2><ul>{files}</ul>", nav))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return sorted(out.iterdir())


__all__ = ["publish", "html_table", "plot_worst_case", "to_latex", "slug"]
