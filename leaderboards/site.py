"""The published site's content: ranked boards and one page per entry.

An *entry* is a target measured on one population, seeds aside: model, defense (and a
discriminator's direction) with the population keys that do not vary with the seed
(:data:`leaderboards.population.SEED_VARYING`). Its seeds' rows are never pooled into one
number: the board shows their mean and [min–max]; the entry's page lists each seed's own row.

A *board* is one ranked table per dataset × target kind × threat model × norm × eps of record:
rank, entry, clean accuracy, robust accuracy under the ranking attack (default the worst case
over every attack at that eps: a sample counts only if no attack fooled it) with its Wilson 95%
interval, certified accuracy where the defense certifies (CERTIFY of the smoothed classifier:
a column of its own, since the attacked number is PREDICT's, which may abstain, and neither
bounds the other), cost (model calls per sample of the runs behind the number), n and the failure
indicators' codes. The per-attack × per-eps detail is on the entry's page.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.core import indicators
from bench.core.errors import BadInput
from leaderboards.compare import eps_flags, wilson
from leaderboards.population import SEED_VARYING
from leaderboards.security import robust_curve, run_distances
from leaderboards.tables import (
    BOARD_ROW,
    GROUP_KEYS,
    POPULATION_COLUMNS,
    ROW_KEYS,
    _normalised,
    column_labels,
    worst_case,
)

ENTRY_KEYS = [*ROW_KEYS, *(k for k in POPULATION_COLUMNS if k not in SEED_VARYING)]
"""What one entry is: a target on one population, its seeds (and their weights) aside."""
WORST = "worst case"
"""The ranking attack that takes, per sample, every attack run at the eps."""


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def board_slug(key: tuple[str, ...]) -> str:
    return slugify("-".join(key))


@dataclass
class Measure:
    """A number over an entry's seeds: their mean, min and max, and, for one seed, the
    Wilson 95% interval of its n samples."""

    values: list[float]
    n: int

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values) if self.values else math.nan

    @property
    def band(self) -> tuple[float, float]:
        """[min, max] over several seeds; one seed's Wilson 95% interval."""
        if len(self.values) > 1:
            return min(self.values), max(self.values)
        return wilson(round(self.values[0] * self.n), self.n) if self.values else (math.nan,
                                                                                   math.nan)

    def text(self) -> str:
        if not self.values:
            return ""
        pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
        lo, hi = self.band
        if len(self.values) > 1:
            return f"{pct(self.mean)} [{pct(lo)}–{pct(hi)}]"
        return f"{pct(self.values[0])} [{pct(lo)}, {pct(hi)}]"

    @property
    def spread_kind(self) -> str:
        return "min–max over seeds" if len(self.values) > 1 else "95% interval"


@dataclass
class Entry:
    """One entry of one board: its key, its seeds' summary rows and its worst cases."""

    board: tuple[str, str, str, str]
    key: dict[str, Any]
    rows: pd.DataFrame  # its cells (bounded eps, no cascade member rows), all seeds
    worst: pd.DataFrame  # per (seed row, eps): worst_case
    label: str = ""
    slug: str = ""
    flags: dict[str, list[str]] = field(default_factory=dict)  # cell_id -> codes
    # per (seed, weights, sample): the best known distance, the smallest any of its attack
    # runs reached (leaderboards.security); empty where no sample rows were read
    best: pd.DataFrame = field(default_factory=pd.DataFrame)
    # per (certify method, seed, weights, sample): the certified radius in the board's norm
    # (-inf where the label is not certified); empty without certificates at this norm
    radii: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def seeds(self) -> list[int]:
        return sorted(int(s) for s in self.rows["seed"].unique())

    @property
    def n(self) -> int:
        return int(self.rows["n_samples"].iloc[0])

    def seed_rows(self) -> list[pd.DataFrame]:
        """Each seed's (and weights') cells."""
        return [g for _, g in self.rows.groupby(["seed", "weights_sha256",
                                                 "base_weights_sha256"], sort=True)]

    def clean(self) -> Measure:
        return Measure([float(g["clean_acc"].iloc[0]) for g in self.seed_rows()], self.n)

    def eps_values(self) -> list[tuple[float, str]]:
        pairs = self.rows[["eps", "eps_display"]].drop_duplicates().sort_values("eps")
        return list(pairs.itertuples(index=False, name=None))

    def attacks(self) -> list[str]:
        """The attack labels run on this entry (a column of the board without its eps)."""
        return sorted(self.rows["label"].unique())

    def robust(self, attack: str, eps: float) -> Measure:
        """Robust accuracy at ``eps`` under ``attack`` (:data:`WORST`: every attack there)."""
        values = []
        for g in self.seed_rows():
            if attack == WORST:
                w = self.worst[(self.worst["seed"] == g["seed"].iloc[0])
                               & (self.worst["weights_sha256"] == g["weights_sha256"].iloc[0])
                               & (self.worst["eps"] == eps)]["worst_case"].dropna()
                values += [float(w.iloc[0])] if len(w) else []
            else:
                cell = g[(g["label"] == attack) & (g["eps"] == eps)]
                values += [float(cell["robust_acc"].iloc[0])] if len(cell) else []
        return Measure(values, self.n)

    def best_known(self, eps: float) -> Measure | None:
        """Robust accuracy at ``eps`` under the best known attack: the share of samples whose
        best known distance exceeds it, per seed (None without per-sample distances)."""
        if self.best.empty:
            return None
        values = [float(robust_curve(g["best"].to_numpy(), np.array([eps]))[0])
                  for _, g in self.best.groupby(["seed", "weights_sha256"], sort=True)]
        return Measure(values, self.n)

    def cells_at(self, attack: str, eps: float) -> pd.DataFrame:
        at = self.rows[self.rows["eps"] == eps]
        return at if attack == WORST else at[at["label"] == attack]

    def certified(self, eps: float) -> Measure | None:
        """Certified accuracy at ``eps``: per seed, the largest any certificate gives (each is
        a lower bound of the true robust accuracy; :meth:`certified_by` names them)."""
        cert = self.rows[self.rows["eps"] == eps].dropna(subset=["certified_acc"])
        if cert.empty:
            return None
        per_seed = cert.groupby("seed")["certified_acc"].max()
        return Measure([float(v) for v in per_seed], self.n)

    def certified_by(self, eps: float) -> str:
        """The certificates behind :meth:`certified` at ``eps`` (e.g. ``crown-ibp``)."""
        cert = self.rows[self.rows["eps"] == eps].dropna(subset=["certified_acc"])
        if cert.empty or "certify_method" not in cert.columns:
            return ""
        return ", ".join(sorted(str(m) for m in cert["certify_method"].dropna().unique()))

    def cost(self, attack: str, eps: float) -> float | None:
        """Model calls (forward + backward) per sample of the runs behind the number, mean
        over seeds (a run read by several rows counted once)."""
        cells = self.cells_at(attack, eps).drop_duplicates(["seed", "attack_run"])
        if cells.empty:
            return None
        calls = (cells["n_forward"] + cells["n_backward"]) / cells["n_samples"]
        return float(calls.groupby(cells["seed"]).sum().mean())

    def codes(self, cell_ids: Iterable[str]) -> list[str]:
        found = {c for cid in cell_ids for c in self.flags.get(cid, [])}
        return [c for c in indicators.CATALOG if c in found] + sorted(
            found - set(indicators.CATALOG))


def entries(summary: pd.DataFrame, samples: pd.DataFrame) -> list[Entry]:
    """Every board's entries, from the stored rows."""
    rows = _normalised(summary)
    if rows.empty:
        return []
    rows = rows.assign(label=column_labels(rows).str.rsplit("@", n=1).str[0])
    worst = worst_case(rows, samples) if not samples.empty else pd.DataFrame(
        columns=[*GROUP_KEYS, *BOARD_ROW, "eps", "eps_display", "worst_case"])
    flags = eps_flags(rows)
    out = []
    for board, group in rows.groupby(GROUP_KEYS, sort=True):
        wb = worst[(worst[GROUP_KEYS] == pd.Series(board, index=GROUP_KEYS)).all(axis=1)]
        for key, cells in group.groupby(ENTRY_KEYS, sort=True, dropna=False):
            mask = (wb[ENTRY_KEYS] == pd.Series(key, index=ENTRY_KEYS)).all(axis=1)
            out.append(Entry(tuple(str(b) for b in board),  # type: ignore[arg-type]
                             dict(zip(ENTRY_KEYS, key)), cells, wb[mask], flags=flags,
                             best=_best_distances(summary, cells, samples),
                             radii=_certified_radii(cells, samples)))
    _name(out)
    return out


def _certified_radii(cells: pd.DataFrame, samples: pd.DataFrame) -> pd.DataFrame:
    """Per (certify method, seed, weights, sample) of an entry: the certified radius of the
    sample's label (-inf where it is not certified), from the cells whose certificate is of
    the board's norm (those with a certified accuracy)."""
    if samples.empty or "certified_radius" not in samples.columns or \
            "certify_method" not in cells.columns:
        return pd.DataFrame()
    certified = cells.dropna(subset=["certified_acc", "certify_method"])
    if certified.empty:
        return pd.DataFrame()
    keys = ["certify_method", "seed", "weights_sha256"]
    merged = samples[["cell_id", "sample_idx", "certified_radius", "certified_correct"]].merge(
        certified[["cell_id", *keys]], on="cell_id")
    radius = merged["certified_radius"].astype(float).where(
        merged["certified_correct"].fillna(False).astype(bool), -math.inf)
    return merged.assign(radius=radius).groupby([*keys, "sample_idx"], dropna=False).agg(
        radius=("radius", "max")).reset_index()


def certified_curve(radii: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """Certified accuracy at each eps: the share of samples certified with a radius >= eps."""
    r = np.sort(np.asarray(radii, dtype=float))
    return 1.0 - np.searchsorted(r, np.asarray(eps, dtype=float), side="left") / len(r)


def _best_distances(summary: pd.DataFrame, cells: pd.DataFrame, samples: pd.DataFrame
                    ) -> pd.DataFrame:
    """Per (seed, weights, sample) of an entry: the best known distance over its attack runs
    (a minimal attack's own run row included; cascade members are their cascade's run)."""
    if samples.empty or "distance" not in samples.columns:
        return pd.DataFrame()
    runs = summary[summary["attack_run"].isin(cells["attack_run"])]
    dist = run_distances(runs, samples[samples["cell_id"].isin(runs["cell_id"])])
    if dist.empty:
        return pd.DataFrame()
    return dist.groupby(["seed", "weights_sha256", "sample_idx"], dropna=False).agg(
        best=("distance", "min")).reset_index()


def _name(found: list[Entry]) -> None:
    """Labels (model / defense[ / direction], and the population keys that tell entries of one
    model and defense apart) and stable slugs."""
    by_target: dict[tuple[Any, ...], list[Entry]] = {}
    for e in found:
        by_target.setdefault((e.board, *(e.key[k] for k in ROW_KEYS)), []).append(e)
    for same in by_target.values():
        varying = [k for k in ENTRY_KEYS if k not in ROW_KEYS
                   and len({str(e.key[k]) for e in same}) > 1]
        for e in same:
            parts = [str(e.key[k]) for k in ROW_KEYS if str(e.key[k])]
            parts += [f"{k}={e.key[k]}" for k in varying]
            e.label = " / ".join(parts)
            digest = hashlib.sha256(json.dumps([e.board, e.key], sort_keys=True,
                                               default=str).encode()).hexdigest()[:8]
            e.slug = slugify(f"{e.key['model']}-{e.key['defense']}-{e.key['direction']}") \
                + f"-{digest}"


@dataclass
class Ranking:
    """How a board's entries are ranked: an attack label (or :data:`WORST`)."""

    attack: str = WORST

    @staticmethod
    def parse(rank_by: str | None, found: list[Entry]) -> Ranking:
        """``rank_by``: None or "worst" (the worst case), an attack label ("standard",
        "pgd (steps=40)") or a board column ("standard@0.3": its attack). :class:`BadInput`
        naming the attacks there are when no entry ran it."""
        if rank_by is None:
            return Ranking()
        label = rank_by.rsplit("@", 1)[0] if "@" in rank_by else rank_by
        if label in ("worst", WORST):
            return Ranking()
        known = sorted({a for e in found for a in e.attacks()})
        if label not in known:
            raise BadInput(f"no leaderboard has the attack {label!r} to rank by; attacks: "
                           f"worst, {', '.join(known)}")
        return Ranking(label)

    @property
    def title(self) -> str:
        return ("the worst case over every attack at the eps" if self.attack == WORST
                else f"robust accuracy under {self.attack}")


def ranked(board_entries: list[Entry], eps: float, ranking: Ranking) -> list[dict[str, Any]]:
    """The board's rows at ``eps``, ranked by mean robust accuracy under the ranking attack
    (then clean accuracy), highest first; entries without that number last, unranked."""
    rows: list[dict[str, Any]] = []
    for e in board_entries:
        if eps not in {v for v, _ in e.eps_values()}:
            continue
        robust, clean = e.robust(ranking.attack, eps), e.clean()
        certified = e.certified(eps)
        codes = e.codes(e.cells_at(ranking.attack, eps)["cell_id"])
        rows.append({"entry": e, "eps": eps, "clean": clean, "robust": robust,
                     "certified": certified,
                     "best": e.best_known(eps), "cost": e.cost(ranking.attack, eps),
                     "codes": codes})
    rows.sort(key=lambda r: (-r["robust"].mean if r["robust"].values else math.inf,
                             -r["clean"].mean))
    for i, r in enumerate(rows, start=1):
        r["rank"] = i if r["robust"].values else None
    return rows


def eps_of_record(board_entries: list[Entry], wanted: list[str] | None) -> list[tuple[float, str]]:
    """The board's eps tabs: those ``wanted`` (``publish --eps``, matched by value or as
    written) that the board has, else every eps on it."""
    pairs = sorted({p for e in board_entries for p in e.eps_values()})
    if not wanted:
        return pairs
    chosen = []
    for value, display in pairs:
        for w in wanted:
            try:
                same = math.isclose(float(w), value, rel_tol=1e-9, abs_tol=1e-12)
            except ValueError:
                same = False
            if same or w == display:
                chosen.append((value, display))
                break
    return chosen


def measured(e: Entry) -> list[tuple[str, str]]:
    """What an entry's numbers were measured on, as (what, value) lines."""
    rows = e.rows

    def values(col: str) -> str:
        found = [str(v) for v in rows[col].dropna().unique() if str(v)]
        return ", ".join(sorted(found)) if found else "—"

    seeds = e.seed_rows()
    lines = [("dataset", f"{e.board[0]} ({e.key['split']} split, n = {e.n})"),
             ("target", f"{e.board[1]}" + (f", {e.key['direction']}" if e.key["direction"]
                                           else "")),
             ("threat", f"{e.board[2]} · {e.board[3]}"),
             ("model", f"{e.key['model']} ({e.key['model_source']})"),
             ("trained on", str(e.key["train_dataset"]) or "—"),
             ("defense", str(e.key["defense"])),
             ("defense params", str(e.key["defense_params"]) or "—"),
             ("precision", str(e.key["precision"])),
             ("seeds", ", ".join(map(str, e.seeds)))]
    for g in seeds:
        lines.append((f"weights SHA-256 (seed {g['seed'].iloc[0]})",
                      str(g["weights_sha256"].iloc[0])))
        if g["base_weights_sha256"].iloc[0] != g["weights_sha256"].iloc[0]:
            lines.append((f"base weights SHA-256 (seed {g['seed'].iloc[0]})",
                          str(g["base_weights_sha256"].iloc[0])))
    lines += [("device", values("device")), ("advbench", values("advbench_version")),
              ("git SHA", values("git_sha")), ("torch", values("torch_version")),
              ("measured", f"{rows['created_at'].min():%Y-%m-%d %H:%M} – "
                           f"{rows['created_at'].max():%Y-%m-%d %H:%M} UTC")]
    if "draws" in rows and rows["draws"].max() > 1:
        lines.append(("draws", values("draws")))
    return lines


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # TOML has no null: a param left out takes its default (None)
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()
                                if v is not None) + " }"
    raise TypeError(f"no TOML form for {value!r}")


def _attack_tables(e: Entry) -> list[dict[str, Any]]:
    """The entry's attacks as ``[[attacks]]`` tables: one per (attack, norm, params, source),
    with the eps it ran at."""
    tables: dict[tuple[str, ...], dict[str, Any]] = {}
    for _, r in e.rows.sort_values("eps").iterrows():
        key = (r["attack"], r["norm"], r["attack_params"], r["source_model"])
        table = tables.setdefault(key, {"name": r["attack"], "norm": r["norm"], "eps": [],
                                        "params": json.loads(r["attack_params"])})
        if r["source_model"]:
            table["source"] = r["source_model"]
        eps = float(r["eps"])
        if eps not in table["eps"]:
            table["eps"].append(int(eps) if r["norm"] == "l0" else eps)
    return list(tables.values())


def reproduce(e: Entry) -> tuple[str, str]:
    """(language, snippet): for an entry run from a config, the TOML that gives the same cells;
    for one run from Python (``factory = "python"``), the ``bench.benchmark`` call (the model
    object is yours to pass)."""
    key, attacks = e.key, _attack_tables(e)
    defense = json.loads(key["defense_params"]) if key["defense_params"] else None
    draws = int(e.rows["draws"].max()) if e.rows["draws"].notna().any() else None
    if key["model_source"] == "python":
        args = [f"dataset={key['dataset'] if 'dataset' in key else e.board[0]!r}",
                f"attacks={attacks!r}", f"n_eval={e.n}",
                f"seed={e.seeds if len(e.seeds) > 1 else e.seeds[0]}",
                f"split={key['split']!r}", f"precision={key['precision']!r}",
                f"defenses=[{key['defense']!r}]", f"threats=[{e.board[2]!r}]",
                f"name={key['model']!r}"]
        if key["train_dataset"] and key["train_dataset"] != e.board[0]:
            args.append(f"train_dataset={key['train_dataset']!r}")
        if draws and draws > 1:
            args.append(f"draws={draws}")
        return "python", ("import bench\n\nrows = bench.benchmark(\n    model,  # your "
                          "torch.nn.Module, with the weights evaluated here\n    "
                          + ",\n    ".join(args) + ",\n)\n")
    lines = ["[sweep]", f'name = "{slugify(e.label) or "entry"}"',
             f"dataset = {_toml_value(e.board[0])}"]
    if key["train_dataset"]:
        lines.append(f"train_dataset = {_toml_value(key['train_dataset'])}")
    lines += [f"split = {_toml_value(key['split'])}", f"n_eval = {e.n}",
              f"seed = {_toml_value(e.seeds if len(e.seeds) > 1 else e.seeds[0])}",
              f"precision = {_toml_value(key['precision'])}"]
    if draws and draws > 1:
        lines.append(f"draws = {draws}")
    entry_json = e.rows["model_entry"].dropna()
    if len(entry_json):
        lines += ["", "[[models]]"] + [f"{k} = {_toml_value(v)}"
                                       for k, v in json.loads(entry_json.iloc[0]).items()]
    if defense is not None:
        lines += ["", "[[defenses]]", f"name = {_toml_value(defense['name'])}",
                  f"label = {_toml_value(key['defense'])}",
                  f"params = {_toml_value(defense['params'])}"]
    lines += ["", "[[targets]]", f"model = {_toml_value(key['model'])}",
              f"defenses = {_toml_value([key['defense']])}",
              f"threats = {_toml_value([e.board[2]])}"]
    if key["direction"]:
        lines.append(f"directions = {_toml_value([key['direction']])}")
    for table in attacks:
        lines += ["", "[[attacks]]"] + [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return "toml", "\n".join(lines) + "\n"


def curve_svg(e: Entry, path: Path) -> None:
    """Robust accuracy against eps for every attack and the worst case, from eps 0 (the clean
    accuracy), with bands (Wilson 95% for one seed, min–max over seeds), and the certified
    accuracy where there is one, as an SVG drawn by matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps = [v for v, _ in e.eps_values()]
    clean = e.clean()
    fig, ax = plt.subplots(figsize=(7.5, 3.8), dpi=100)
    for attack in [*e.attacks(), WORST]:
        xs, mean, lo, hi = [0.0], [clean.mean], [clean.band[0]], [clean.band[1]]
        for v in eps:
            m = e.robust(attack, v)
            if m.values:
                xs.append(v)
                mean.append(m.mean)
                lo.append(m.band[0])
                hi.append(m.band[1])
        if len(xs) < 2:
            continue
        worst = attack == WORST
        (line,) = ax.plot(xs, [100 * v for v in mean], marker="o", label=attack,
                          linewidth=2.5 if worst else 1.2, color="black" if worst else None)
        ax.fill_between(xs, [100 * v for v in lo], [100 * v for v in hi],
                        color=line.get_color(), alpha=0.12)
    grid = np.linspace(0.0, max(eps), 200) if eps else np.zeros(0)
    best = None
    if not e.best.empty and eps:
        best = 100 * np.mean([robust_curve(g["best"].to_numpy(), grid) for _, g in
                              e.best.groupby(["seed", "weights_sha256"], sort=True)], axis=0)
        ax.step(grid, best, where="post", color="dimgray", linestyle=":", linewidth=2,
                label="best known")
    _certified_band(ax, e, grid, best)
    cert = [(v, c) for v in eps if (c := e.certified(v)) is not None]
    if cert:
        ax.plot([v for v, _ in cert], [100 * c.mean for _, c in cert], linestyle="--",
                marker="x", color="tab:green", label="certified at each row's eps")
    ax.set_xlabel(f"eps ({e.board[3]})")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(-2, 102)  # a curve at 0 or 100% stays visible
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    fig.savefig(path, format="svg", metadata={"Date": None})
    plt.close(fig)


def _certified_band(ax: Any, e: Entry, grid: np.ndarray, best: np.ndarray | None) -> None:
    """Each certificate's curve from its per-sample radii and, with the best-known attacked
    curve, the band between them: the true robust accuracy lies inside it."""
    if e.radii.empty or not len(grid):
        return
    for method, group in e.radii.groupby("certify_method", sort=True):
        curve = 100 * np.mean([certified_curve(g["radius"].to_numpy(), grid) for _, g in
                               group.groupby(["seed", "weights_sha256"], sort=True)], axis=0)
        (line,) = ax.step(grid, curve, where="post", linewidth=1.5,
                          label=f"certified ({method})")
        if best is not None:
            ax.fill_between(grid, curve, best, step="post", color=line.get_color(), alpha=0.15,
                            label=f"true robust accuracy ({method} .. best known)")


def detail_table(e: Entry) -> tuple[list[str], list[list[str]]]:
    """The per-attack × per-eps table of an entry's page: header and rows of text."""
    eps = e.eps_values()
    header = ["attack", "clean", *(f"eps {d}" for _, d in eps)]
    body = []
    for attack in [*e.attacks(), WORST]:
        cells = [attack, e.clean().text()]
        for v, _ in eps:
            text = e.robust(attack, v).text()
            cert = e.certified(v)
            if text and cert is not None and attack == WORST:
                text += f" · certified {100 * cert.mean:.1f} ({e.certified_by(v)})"
            cells.append(text)
        body.append(cells)
    return header, body


__all__ = ["ENTRY_KEYS", "Entry", "Measure", "Ranking", "WORST", "board_slug", "curve_svg",
           "detail_table", "entries", "eps_of_record", "measured", "ranked", "reproduce"]
