"""advbench results: the Parquet schema and store, and leaderboard tables built from them."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from bench.core.errors import BadInput
from leaderboards.schema import SAMPLES_SCHEMA, SCHEMA_VERSION, SUMMARY_SCHEMA
from leaderboards.store import ResultStore, load
from leaderboards.tables import Board, leaderboards, to_csv, to_markdown


def _stored(results: str | os.PathLike[str]) -> ResultStore:
    root = Path(results)
    if not root.is_dir():
        raise BadInput(f"results directory {root} does not exist; run a sweep first")
    store = ResultStore(root)
    if not store.completed_cells():
        raise BadInput(f"no results stored in {root}")
    return store


def render(results: str | os.PathLike[str], fmt: str = "md", rank_by: str | None = None
           ) -> str:
    """Every leaderboard of a results directory as one Markdown or CSV document, ranked by
    ``rank_by`` (default: the worst case at the largest eps)."""
    store = _stored(results)
    summary = store.summary()
    boards = leaderboards(summary, store.samples(summary), rank_by)
    if fmt == "md":
        return "\n".join(to_markdown(b) for b in boards)
    if fmt == "csv":
        return "".join(to_csv(b) for b in boards)
    raise BadInput(f"unknown format {fmt!r}; use 'md' or 'csv'")


def render_comparison(results: str | os.PathLike[str], fmt: str = "md") -> str:
    """The defense comparison of a results directory (see :mod:`leaderboards.compare`)."""
    from leaderboards.compare import compare
    from leaderboards.compare import to_markdown as compare_markdown

    store = _stored(results)
    summary = store.summary()
    return _formatted(compare(summary, store.samples(summary)), fmt, compare_markdown)


def render_attack_board(results: str | os.PathLike[str], fmt: str = "md") -> str:
    """The attacks of a results directory ranked by optimality against the best known
    distances, per population and norm (see :mod:`leaderboards.security`)."""
    from leaderboards.security import attack_board, to_markdown

    store = _stored(results)
    summary = store.summary()
    return _formatted(attack_board(summary, store.samples(summary)), fmt, to_markdown)


def render_transfer(results: str | os.PathLike[str], fmt: str = "md") -> str:
    """The transfer matrices of a results directory (see :mod:`leaderboards.transfer`)."""
    from leaderboards.transfer import to_markdown, transfer_rows

    return _formatted(transfer_rows(_stored(results).summary()), fmt, to_markdown)


def _formatted(table: pd.DataFrame, fmt: str, markdown: Callable[[pd.DataFrame], str]) -> str:
    """``table`` as Markdown (by ``markdown``) or CSV; :class:`BadInput` for another format."""
    if fmt == "md":
        return markdown(table)
    if fmt == "csv":
        return table.to_csv(index=False)
    raise BadInput(f"unknown format {fmt!r}; use 'md' or 'csv'")


def publish_site(results: str | os.PathLike[str], out: str | os.PathLike[str],
                 rank_by: str | None = None, eps: list[str] | None = None) -> list[Path]:
    """``advbench publish``: Markdown, CSV, LaTeX and the static HTML site of a results
    directory (see :mod:`leaderboards.publish`), boards ranked by ``rank_by`` at each eps of
    record (``eps``; default every eps)."""
    from leaderboards.compare import compare
    from leaderboards.corruptions import load_corruptions
    from leaderboards.publish import publish

    store = _stored(results)
    summary = store.summary()
    samples = store.samples(summary)
    grids = sorted((Path(results) / "corruptions").glob("[!.]*.png"))
    return publish(summary, samples, Path(out), compare(summary, samples), rank_by=rank_by,
                   eps=eps, corruptions=load_corruptions(Path(results)), grids=grids)


__all__ = ["publish_site", "SAMPLES_SCHEMA", "SCHEMA_VERSION", "SUMMARY_SCHEMA", "Board", "ResultStore",
           "leaderboards", "load", "render", "render_comparison", "to_csv", "to_markdown"]
