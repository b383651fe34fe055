"""The results store: one SQLite file (stdlib ``sqlite3``) holding every finished task.

Each finished task is one row of the ``results`` table, written in its own transaction
the moment it finishes, keyed by (sweep, task key): re-running a sweep skips the keys it
holds, and a sweep that stops (Ctrl-C, a killed process, a lost machine) loses nothing
that finished. Columns: ``sweep``, ``key``, ``kind``, ``label``, ``spec`` (the task's
JSON), ``status`` (``ok``/``error``), ``row`` (JSON of the result row), ``error``,
``traceback``, ``started``/``finished`` (Unix times on the worker), ``seconds``,
``worker``, ``attempts``, ``position`` (the task's index in its sweep) and ``created``
(UTC time of the write).

The schema is versioned: table ``meta`` holds ``application`` and ``schema_version``. A
file written by a newer certcompress (higher version) is refused with a message saying
so; a file that is not an SQLite database, or is corrupt, is refused with a
:class:`StoreError` naming it. The database runs in WAL mode, so ``results list`` can
read while a sweep writes.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .._version import utc_now
from ..errors import CertcompressError

__all__ = ["ResultStore", "StoreError", "SCHEMA_VERSION", "APPLICATION", "RECORD_COLUMNS"]

SCHEMA_VERSION = 1
APPLICATION = "certcompress.results"
RECORD_COLUMNS = ("sweep", "key", "kind", "label", "status", "error", "traceback", "started",
                  "finished", "seconds", "worker", "attempts", "position", "created", "spec")

_SCHEMA = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE results (
    sweep TEXT NOT NULL,
    key TEXT NOT NULL,
    kind TEXT NOT NULL,
    label TEXT NOT NULL DEFAULT '',
    spec TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'error')),
    row TEXT,
    error TEXT NOT NULL DEFAULT '',
    traceback TEXT NOT NULL DEFAULT '',
    started REAL,
    finished REAL,
    seconds REAL,
    worker TEXT NOT NULL DEFAULT '',
    attempts INTEGER,
    position INTEGER,
    created TEXT NOT NULL,
    PRIMARY KEY (sweep, key)
);
CREATE INDEX results_by_status ON results (sweep, status);
"""


class StoreError(CertcompressError, RuntimeError):
    """The results store cannot be used: missing, corrupt, not a certcompress store, or
    written by a newer version."""


def _now() -> str:
    return utc_now("milliseconds")


class ResultStore:
    """An open results store. ``create``: make the file if it does not exist (else a
    missing file is a :class:`StoreError`). Use as a context manager or call
    :meth:`close`."""

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True,
                 readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        if self.path.is_dir():
            raise StoreError(f"results store '{self.path}' is a directory; name a file, e.g. "
                             f"{self.path / 'runs.sqlite'}")
        if not self.path.exists():
            if not create or readonly:
                raise StoreError(f"results store '{self.path}' does not exist (run a sweep "
                                 "with --store to create it)")
            parent = self.path.parent if str(self.path.parent) else Path(".")
            if not parent.is_dir():
                raise StoreError(f"cannot create results store '{self.path}': directory "
                                 f"'{parent}' does not exist")
        if readonly:
            self._conn = self._open_readonly()
        else:
            try:
                self._conn = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open results store '{self.path}': {exc}") from None
        try:
            self._check_or_create()
        except BaseException:
            self._conn.close()
            raise

    def _open_readonly(self) -> sqlite3.Connection:
        """A connection that cannot write (SQLite ``mode=ro``), for reading a store that
        may be read-only (file, folder or medium): nothing is created or modified. A WAL
        store whose ``-shm`` cannot be created (read-only folder) is opened ``immutable``:
        no process can be writing it then."""
        if not os.access(self.path, os.R_OK):
            raise StoreError(f"cannot read results store '{self.path}': permission denied")
        uri = self.path.resolve().as_uri()
        last: sqlite3.Error | None = None
        for query in ("?mode=ro", "?mode=ro&immutable=1"):
            conn = None
            try:
                conn = sqlite3.connect(uri + query, uri=True, timeout=60, isolation_level=None)
                conn.execute("SELECT name FROM sqlite_master LIMIT 1").fetchall()
                return conn
            except sqlite3.OperationalError as exc:
                # "unable to open database file": the WAL index cannot be created in a
                # read-only folder; any other error is the file's own (checked below)
                if conn is not None:
                    conn.close()
                last = exc
                if "unable to open" not in str(exc) and "readonly" not in str(exc):
                    break
            except sqlite3.DatabaseError as exc:
                if conn is not None:
                    conn.close()
                raise self._corrupt(exc) from None
        if last is not None and "unable to open" not in str(last) and \
                "readonly" not in str(last):
            raise self._corrupt(last) from None
        raise StoreError(f"cannot open results store '{self.path}' read-only: {last}")

    # ------------------------------------------------------------------ opening
    def _corrupt(self, exc: BaseException | str) -> StoreError:
        return StoreError(
            f"'{self.path}' is not a readable certcompress results store ({exc}): the file is "
            "corrupt, truncated or not an SQLite database; move it away (keep it if its "
            "results matter: sqlite3 '.recover' may save them) or name another store file")

    def _check_or_create(self) -> None:
        c = self._conn
        try:
            check = c.execute("PRAGMA quick_check").fetchall()
            if check != [("ok",)]:
                raise self._corrupt("; ".join(str(r[0]) for r in check[:3]))
            tables = {r[0] for r in c.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not tables and self.readonly:
                raise StoreError(f"results store '{self.path}' is empty (no sweep has written "
                                 "it yet)")
            if not tables:
                c.execute("PRAGMA journal_mode=WAL")
                with self._transaction():
                    for stmt in filter(str.strip, _SCHEMA.split(";")):
                        c.execute(stmt)
                    c.executemany("INSERT INTO meta (name, value) VALUES (?, ?)",
                                  [("application", APPLICATION),
                                   ("schema_version", str(SCHEMA_VERSION)),
                                   ("created", _now())])
                return
            if "meta" not in tables:
                raise StoreError(f"'{self.path}' is an SQLite database but not a certcompress "
                                 f"results store (it has tables {', '.join(sorted(tables))} "
                                 "and no 'meta'); name another store file")
            meta = dict(c.execute("SELECT name, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            raise self._corrupt(exc) from None
        if meta.get("application") != APPLICATION:
            raise StoreError(f"'{self.path}' is an SQLite database of "
                             f"{meta.get('application', 'another application')!r}, not a "
                             "certcompress results store; name another store file")
        try:
            version = int(meta["schema_version"])
        except (KeyError, ValueError):
            raise self._corrupt(f"schema_version is {meta.get('schema_version')!r}") from None
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"results store '{self.path}' has schema version {version}, written by a newer "
                f"certcompress; this version reads schema versions up to {SCHEMA_VERSION}. "
                "Upgrade certcompress to read it, or name another store file (the file was "
                "not modified)")
        if version < 1:
            raise self._corrupt(f"schema_version {version}")
        if self.readonly:
            return
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA synchronous=FULL")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # ------------------------------------------------------------------ writing
    def write(self, *, sweep: str, key: str, kind: str, label: str, spec: str, status: str,
              row: dict[str, Any] | None, error: str = "", traceback: str = "",
              started: float | None = None, finished: float | None = None,
              seconds: float | None = None, worker: str = "", attempts: int | None = None,
              position: int | None = None) -> None:
        """Store one finished task (replacing an earlier result of the same key), in one
        transaction."""
        if status not in ("ok", "error"):
            raise ValueError(f"status must be 'ok' or 'error', got {status!r}")
        row_json = None if row is None else json.dumps(row, allow_nan=True)
        try:
            with self._transaction() as c:
                c.execute(
                    "INSERT OR REPLACE INTO results (sweep, key, kind, label, spec, status, row, "
                    "error, traceback, started, finished, seconds, worker, attempts, position, "
                    "created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (sweep, key, kind, label, spec, status, row_json, error, traceback, started,
                     finished, seconds, worker, attempts, position, _now()))
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot write to results store '{self.path}': {exc}") from None

    # ------------------------------------------------------------------ reading
    def keys(self, sweep: str, statuses: Iterable[str] = ("ok", "error")) -> set[str]:
        """Keys of ``sweep`` stored with one of ``statuses``."""
        wanted = tuple(statuses)
        marks = ", ".join("?" * len(wanted))
        return {r[0] for r in self._query(
            f"SELECT key FROM results WHERE sweep = ? AND status IN ({marks})",
            (sweep, *wanted))}

    def records(self, sweep: str | None = None, *, status: str | None = None,
                keys: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Stored results as dicts (``RECORD_COLUMNS`` plus ``row``, parsed), in sweep
        order then task position."""
        where, args = [], []
        if sweep is not None:
            where.append("sweep = ?")
            args.append(sweep)
        if status is not None:
            where.append("status = ?")
            args.append(status)
        sql = (f"SELECT {', '.join(RECORD_COLUMNS)}, row FROM results"
               f"{' WHERE ' + ' AND '.join(where) if where else ''} "
               "ORDER BY sweep, position, created, rowid")
        wanted = None if keys is None else set(keys)
        out = []
        for r in self._query(sql, tuple(args)):
            rec = dict(zip((*RECORD_COLUMNS, "row"), r))
            if wanted is not None and rec["key"] not in wanted:
                continue
            rec["row"] = None if rec["row"] is None else json.loads(rec["row"])
            out.append(rec)
        return out

    def sweeps(self) -> list[dict[str, Any]]:
        """One summary per sweep: name, tasks, ok, error, kinds, first and last write,
        total task seconds; in the order of their first write (``created`` has millisecond
        resolution, so writes within one millisecond are ordered by insertion)."""
        rows = self._query(
            "SELECT sweep, COUNT(*), SUM(status = 'ok'), SUM(status = 'error'), "
            "GROUP_CONCAT(DISTINCT kind), MIN(created), MAX(created), SUM(seconds) "
            "FROM results GROUP BY sweep ORDER BY MIN(created), MIN(rowid)", ())
        return [{"sweep": r[0], "tasks": r[1], "ok": r[2], "error": r[3],
                 "kinds": ",".join(sorted(str(r[4]).split(","))), "first": r[5], "last": r[6],
                 "task_seconds": r[7] if r[7] is not None else math.nan} for r in rows]

    def _query(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        try:
            return self._conn.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as exc:
            raise self._corrupt(exc) from None

    # ------------------------------------------------------------------ closing
    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
