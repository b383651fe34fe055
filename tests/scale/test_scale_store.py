"""The SQLite results store: round trips, versioning (a newer schema is refused and left
untouched), clear errors for corrupt, truncated, foreign and missing files, and the
results readers (load, list, show, export)."""

from __future__ import annotations

import json
import math
import sqlite3

import pandas as pd
import pytest

from certcompress.errors import CertcompressError, ConfigurationError
from certcompress.scale import SCHEMA_VERSION, ResultStore, StoreError, results


def _write(st: ResultStore, key: str, status: str = "ok", sweep: str = "s", **row: object) -> None:
    st.write(sweep=sweep, key=key, kind="certify", label=f"task {key}", spec="{}",
             status=status, row=row or None, error="" if status == "ok" else "Boom: no",
             started=1000.0, finished=1001.5, seconds=1.5, worker="host:1", attempts=1,
             position=int(key[-1]) if key[-1].isdigit() else 0)


def test_round_trip_keys_and_replacement(tmp_path):
    path = tmp_path / "runs.sqlite"
    with ResultStore(path) as st:
        _write(st, "k1", bound=1.5, exact=True, name="a", missing=None, nan=math.nan)
        _write(st, "k2", "error")
        _write(st, "k0", sweep="other", bound=2.0)
        assert st.keys("s") == {"k1", "k2"} and st.keys("s", ("ok",)) == {"k1"}
    with ResultStore(path, create=False) as st:  # reopened: everything is there
        recs = st.records("s")
        assert [r["key"] for r in recs] == ["k1", "k2"]
        row = recs[0]["row"]
        assert row["bound"] == 1.5 and row["exact"] is True and row["missing"] is None
        assert math.isnan(row["nan"])
        assert recs[1]["row"] is None and recs[1]["error"] == "Boom: no"
        _write(st, "k2", bound=3.0)  # a retried task replaces its error row
        assert st.keys("s", ("error",)) == set()
        sweeps = {s["sweep"]: s for s in st.sweeps()}
        assert (sweeps["s"]["tasks"], sweeps["s"]["ok"], sweeps["s"]["error"]) == (2, 2, 0)


def test_a_newer_schema_version_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "runs.sqlite"
    with ResultStore(path) as st:
        _write(st, "k1", bound=1.0)
    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET value = ? WHERE name = 'schema_version'",
                (str(SCHEMA_VERSION + 1),))
    con.commit()
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    before = path.read_bytes()
    with pytest.raises(StoreError) as err:
        ResultStore(path)
    msg = str(err.value)
    assert f"schema version {SCHEMA_VERSION + 1}, written by a newer certcompress" in msg
    assert f"reads schema versions up to {SCHEMA_VERSION}" in msg and str(path) in msg
    assert isinstance(err.value, CertcompressError)
    assert path.read_bytes() == before


@pytest.mark.parametrize("content", [b"this is not a database\n" * 50, bytes(range(256)) * 40])
def test_a_file_that_is_not_a_database_gives_a_clear_error(tmp_path, content):
    path = tmp_path / "runs.sqlite"
    path.write_bytes(content)
    with pytest.raises(StoreError, match="is not a readable certcompress results store .*"
                                         "corrupt, truncated or not an SQLite database"):
        ResultStore(path)
    assert path.read_bytes() == content


def test_a_truncated_store_gives_a_clear_error(tmp_path):
    path = tmp_path / "runs.sqlite"
    with ResultStore(path) as st:
        for i in range(200):
            _write(st, f"key{i:03d}", bound=float(i), pad="x" * 200)
    con = sqlite3.connect(path)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError, match="corrupt, truncated"):
        results.load(path, "s")


def test_foreign_missing_and_directory_stores(tmp_path):
    foreign = tmp_path / "other.sqlite"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE users (name TEXT)")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="is an SQLite database but not a certcompress results "
                                         "store .*users"):
        ResultStore(foreign)
    with pytest.raises(StoreError, match="does not exist"):
        ResultStore(tmp_path / "nope.sqlite", create=False)
    assert not (tmp_path / "nope.sqlite").exists()
    with pytest.raises(StoreError, match="is a directory"):
        ResultStore(tmp_path)


def test_results_load_list_show_export(tmp_path):
    path = tmp_path / "runs.sqlite"
    with ResultStore(path) as st:
        _write(st, "k1", bound=1.0, model="m")
        _write(st, "k2", "error")
        _write(st, "k3", sweep="other", bound=2.0, extra=5)
    df = results.load(path, "s")
    assert list(df["key"]) == ["k1", "k2"] and list(df["status"]) == ["ok", "error"]
    assert list(df.columns[:6]) == ["sweep", "label", "kind", "status", "bound", "model"]
    assert df["started"].iloc[0] == pd.Timestamp(1000.0, unit="s", tz="UTC")
    assert len(results.load(path)) == 3 and len(results.load(path, status="ok")) == 2
    with pytest.raises(ConfigurationError, match="has no sweep 'nope'; sweeps: s, other"):
        results.load(path, "nope")
    listing = results.list_sweeps(path)
    assert list(listing["sweep"]) == ["s", "other"] and list(listing["ok"]) == [1, 1]
    text = results.show(path, "s")
    assert "2 finished task(s), 1 ok, 1 failed" in text and "FAILED task k2: Boom: no" in text
    out = results.export(path, tmp_path / "s.csv", "s")
    assert list(pd.read_csv(out)["key"]) == ["k1", "k2"]
    out = results.export(path, tmp_path / "all.json")
    assert {r["key"] for r in json.loads(out.read_text())} == {"k1", "k2", "k3"}
    with pytest.raises(ConfigurationError, match="must end in .csv or .json"):
        results.export(path, tmp_path / "x.parquet")
    with pytest.raises(ConfigurationError, match="does not exist"):
        results.export(path, tmp_path / "no" / "dir.csv")
