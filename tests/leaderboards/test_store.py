from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench.core.errors import BadInput
from leaderboards import ResultStore, load
from leaderboards.schema import SCHEMA_VERSION, SchemaError, summary_table
from tests.conftest import sample_values as samples
from tests.conftest import summary_values as row


@pytest.mark.parametrize("overrides,match", [
    ({"clean_acc": "97.8"}, "clean_acc must be a float"),
    ({"robust_acc": 1.5}, "robust_acc must be a float in"),
    ({"eps": "8/255"}, "eps must be"),
    ({"n_samples": -1}, "n_samples must be"),
    ({"schema_version": 0}, "schema_version"),
    ({"extra": 1}, "unexpected"),
])
def test_schema_rejects_bad_rows(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(SchemaError, match=match):
        summary_table([row(**overrides)])


def test_schema_rejects_missing_fields() -> None:
    bad = row()
    del bad["device"]
    with pytest.raises(SchemaError, match="missing \\['device'\\]"):
        summary_table([bad])


def test_write_read_and_dedup(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "res")
    assert store.completed_cells() == set()
    store.write_cell(row("c1", "r1"), samples("c1"))
    store.write_cell(row("c2", "r1", eps=0.2, eps_display="0.2"), samples("c2"))
    later = dt.datetime(2026, 2, 1, tzinfo=dt.timezone.utc)
    store.write_cell(row("c1", "r2", created_at=later, robust_acc=0.25), samples("c1"))
    assert store.completed_cells() == {"c1", "c2"}
    df = load(tmp_path / "res")
    assert sorted(df["cell_id"]) == ["c1", "c2"]
    assert df.set_index("cell_id").loc["c1", "robust_acc"] == 0.25
    assert len(store.samples()) == 8  # one samples file per kept summary row
    assert not [p for p in (tmp_path / "res").rglob("*") if p.name.startswith(".")]


def test_readers_ignore_temporary_files(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.write_cell(row(), samples())
    (tmp_path / "summary" / ".c9-r9.parquet.abc.tmp").write_bytes(b"partial")
    assert store.completed_cells() == {"c1"} and len(store.summary()) == 1


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import leaderboards.store as store_mod

    def crash(table: pa.Table, where: Any, **kwargs: Any) -> None:
        Path(where).write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(store_mod.pq, "write_table", crash)
    with pytest.raises(KeyboardInterrupt):
        ResultStore(tmp_path).write_cell(row(), samples())
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_other_schema_versions_are_refused(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.write_cell(row(), samples())
    path = next((tmp_path / "summary").glob("*.parquet"))
    table = pq.read_table(path)
    table = table.replace_schema_metadata({"advbench_schema_version": "0"})
    pq.write_table(table, path)
    with pytest.raises(BadInput, match=f"schema version 0; this advbench reads versions 1 to {SCHEMA_VERSION}"):
        load(tmp_path)


@pytest.mark.parametrize("version,dropped", [
    ("1", ["defense_params", "direction", "fast_path"]), ("2", ["direction", "fast_path"]),
    ("3", ["fast_path"]), ("4", []), ("5", []), ("6", []), ("8", [])])
@pytest.mark.parametrize("attack", ["pgd", "onepixel", "hopskipjump"])
def test_old_results_are_migrated_on_read(tmp_path: Path, version: str,
                                          dropped: list[str], attack: str) -> None:
    """v1 (no defense_params, no direction), v2 (no direction), v3 (no fast_path), v4 (no
    black_box) and v5 (no train_dataset, no attack_run) files read as current rows with the
    missing columns null, black_box true exactly for the one-pixel attack, the one black-box
    attack those versions had, label_only true exactly for the label-only attacks, and each
    row its own attack run."""
    store = ResultStore(tmp_path)
    store.write_cell(row(robust_acc=0.25, attack=attack, black_box=attack != "pgd",
                         label_only=attack == "hopskipjump", weights_sha256="ab" * 32), samples())
    for folder in ("summary", "samples"):
        path = next((tmp_path / folder).glob("*.parquet"))
        table = pq.read_table(path)
        gone = [*dropped, *(["fooled_by", "queries"] if version < "7" else [])]
        if folder == "summary":
            gone = [*dropped, "base_weights_sha256", "decision", "label_only"]
            if version < "7":
                gone += ["cascade_member", "member_given", "member_robust_acc", "flags"]
            if version < "6":
                gone += ["train_dataset", "attack_run", "model_source", "weights_sha256",
                         "critic_threshold"] + (["black_box"] if version < "5" else [])
        table = table.drop_columns([c for c in gone if c in table.column_names])
        pq.write_table(table.replace_schema_metadata({"advbench_schema_version": version}), path)
    df = load(tmp_path)
    assert df["robust_acc"].tolist() == [0.25]
    for column in dropped:
        assert df[column].isna().all()
    assert df["black_box"].tolist() == [attack == "onepixel" if version < "5" else attack != "pgd"]
    assert df["label_only"].tolist() == [attack == "hopskipjump"]
    assert df["attack_run"].tolist() == ["c1"] and df["model_source"].tolist() == ["zoo"]
    if version < "6":
        assert df["train_dataset"].isna().all() and df["weights_sha256"].isna().all()
    # before v9 weights_sha256 named the undefended weights: it becomes the base's too
    assert df["base_weights_sha256"].tolist() == df["weights_sha256"].tolist()
    if version < "7":
        assert df["cascade_member"].isna().all() and df["flags"].isna().all()
    assert df["schema_version"].tolist() == [SCHEMA_VERSION]
    assert len(ResultStore(tmp_path).samples()) == len(samples()["cell_id"])


def test_version_9_flags_become_the_codes_they_stood_for(tmp_path: Path) -> None:
    """Before v10 ``flags`` held AutoAttack-style sentences; they read as failure-indicator
    codes, and a row without flags stays without."""
    store = ResultStore(tmp_path)
    said = ("black-box square fooled 3 samples every white-box member missed (gradient "
            "masking?); eps 1 spans the whole input range, yet 2 samples stay robust (the "
            "attack failed)")
    store.write_cell(row(cell_id="c1", flags=said), samples("c1"))
    store.write_cell(row(cell_id="c2"), samples("c2"))
    for path in (tmp_path / "summary").glob("*.parquet"):
        table = pq.read_table(path).drop_columns(["decision"])
        pq.write_table(table.replace_schema_metadata({"advbench_schema_version": "9"}), path)
    df = load(tmp_path).set_index("cell_id")
    assert df.loc["c1", "flags"] == "unconstrained, black-box-wins"
    assert df["flags"].isna().tolist() == [False, True] and df["decision"].isna().all()


def test_load_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="does not exist"):
        load(tmp_path / "nope")


def test_a_corrupt_file_is_named_in_one_line(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.write_cell(row(), samples())
    bad = tmp_path / "summary" / "c9-r9.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(BadInput, match="c9-r9.parquet is not a readable Parquet file"):
        load(tmp_path)
    assert bad.read_bytes() == b"not parquet"  # nothing the user has is touched


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_forced_rerun_replaces_the_cell_for_every_reader(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.write_cell(row("c1", "r1", robust_acc=0.5), samples("c1"))
    store.write_cell(row("c2", "r1"), samples("c2"))
    later = dt.datetime(2026, 2, 1, tzinfo=dt.timezone.utc)
    store.write_cell(row("c1", "r2", created_at=later, robust_acc=0.25), samples("c1"))
    # a plain Parquet reader of the folders (as DuckDB's read_parquet('summary/*.parquet'))
    plain = pq.read_table(tmp_path / "summary").to_pandas()
    assert sorted(plain["cell_id"]) == ["c1", "c2"]
    assert plain.set_index("cell_id").loc["c1", "robust_acc"] == 0.25
    assert sorted(p.name for p in (tmp_path / "samples").glob("*")) == [
        "c1-r2.parquet", "c2-r1.parquet"]


def test_older_layout_is_read_and_superseded(tmp_path: Path) -> None:
    """Summary files named <cell_id>-<run_id>.parquet (the older layout) still count; a rerun
    replaces them."""
    store = ResultStore(tmp_path)
    store.write_cell(row("c1", "r1"), samples("c1"))
    (tmp_path / "summary" / "c1.parquet").rename(tmp_path / "summary" / "c1-r1.parquet")
    assert store.completed_cells() == {"c1"} and len(store.summary()) == 1
    later = dt.datetime(2026, 2, 1, tzinfo=dt.timezone.utc)
    store.write_cell(row("c1", "r2", created_at=later), samples("c1"))
    assert [p.name for p in (tmp_path / "summary").glob("*")] == ["c1.parquet"]
    assert len(store.samples()) == 4


@pytest.mark.parametrize("folder", ["summary", "samples"])
def test_a_cell_whose_files_do_not_read_whole_is_not_stored(tmp_path: Path, folder: str) -> None:
    store = ResultStore(tmp_path)
    store.write_cell(row("c1"), samples("c1"))
    store.write_cell(row("c2"), samples("c2"))
    bad = next((tmp_path / folder).glob("c1*.parquet"))
    _truncate(bad)
    kept = bad.read_bytes()
    assert store.completed_cells() == {"c2"} and not store.is_stored("c1")
    with pytest.raises(BadInput, match=f"{bad.name} is not a readable Parquet file.*"
                                       "advbench doctor"):
        store.check()
    with pytest.raises(BadInput, match=f"{bad.name} is not a readable Parquet file"):
        load(tmp_path) if folder == "summary" else store.samples()
    moved = dict(store.doctor())
    assert moved[bad].read_bytes() == kept  # moved aside whole, never deleted
    assert moved[bad].parent.parent == tmp_path / "quarantine"
    store.check()  # the directory is usable again
    assert sorted(load(tmp_path)["cell_id"]) == ["c2"] and len(store.samples()) == 4
    store.write_cell(row("c1", "r2"), samples("c1"))  # the next sweep recomputes it
    assert store.completed_cells() == {"c1", "c2"}


def test_foreign_and_newer_files_are_refused_before_writing(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.write_cell(row("c1"), samples("c1"))
    foreign = tmp_path / "summary" / "mine.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), foreign)
    with pytest.raises(BadInput, match="mine.parquet is not an advbench summary file"):
        store.check()
    assert dict(store.doctor())[foreign].name == "mine.parquet"
    newer = tmp_path / "summary" / "c1.parquet"
    table = pq.read_table(newer)
    pq.write_table(table.replace_schema_metadata({"advbench_schema_version": "99"}), newer)
    with pytest.raises(BadInput, match="schema version 99.*upgrade advbench"):
        store.check()
    store.doctor()
    assert newer.exists()  # results of a newer advbench are not this one's to move


def test_an_out_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "results").write_text("mine")
    with pytest.raises(BadInput, match="is a file"):
        ResultStore(tmp_path / "results").check()
