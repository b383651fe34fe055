"""Read a results store: ``cc.results.load("runs.sqlite", sweep="resnet-zoo")`` is a pandas
DataFrame of everything finished so far (also while the sweep still runs).

Frame columns: ``sweep``, ``label``, ``kind``, ``status``, then the result row's columns
(the union over the tasks, NaN where a task has no such column), then ``error``,
``seconds``, ``started``, ``finished`` (UTC datetimes on the worker), ``worker``,
``attempts``, ``created`` and ``key``. :func:`list_sweeps` summarizes every sweep,
:func:`show` formats one, :func:`export` writes CSV or JSON atomically.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .._io import atomic_path
from ..errors import ConfigurationError
from .store import ResultStore

__all__ = ["load", "list_sweeps", "show", "export", "frame", "META_FRONT", "META_BACK"]

META_FRONT = ("sweep", "label", "kind", "status")
META_BACK = ("error", "seconds", "started", "finished", "worker", "attempts", "created", "key")
_META = set(META_FRONT) | set(META_BACK) | {"traceback", "spec", "position"}


def frame(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The DataFrame of store records (see the module docstring for the columns)."""
    row_cols: dict[str, None] = {}
    flat = []
    for rec in records:
        row = {(f"row_{k}" if k in _META else k): v for k, v in (rec.get("row") or {}).items()}
        row_cols.update(dict.fromkeys(row))
        flat.append({**{k: rec.get(k) for k in (*META_FRONT, *META_BACK)}, **row})
    columns = [*META_FRONT, *row_cols, *META_BACK]
    df = pd.DataFrame(flat, columns=columns)
    for col in ("started", "finished"):
        df[col] = pd.to_datetime(df[col].astype("float64"), unit="s", utc=True)
    df["attempts"] = df["attempts"].astype("Int64")
    return df


def load(store: str | os.PathLike[str], sweep: str | None = None, *,
         status: str | None = None) -> pd.DataFrame:
    """Every finished task of ``sweep`` (all sweeps when None) in ``store``, optionally
    only ``status`` ``"ok"`` or ``"error"``. The store must exist."""
    if status not in (None, "ok", "error"):
        raise ConfigurationError(f"status must be 'ok', 'error' or None, got {status!r}")
    with ResultStore(store, create=False, readonly=True) as st:
        if sweep is not None and not st.keys(sweep):
            known = [s["sweep"] for s in st.sweeps()]
            raise ConfigurationError(f"store '{store}' has no sweep {sweep!r}; sweeps: "
                                     f"{', '.join(known) or '(none)'}")
        return frame(st.records(sweep, status=status))


def list_sweeps(store: str | os.PathLike[str]) -> pd.DataFrame:
    """One row per sweep: tasks, ok, error, kinds, first and last write, task seconds."""
    with ResultStore(store, create=False, readonly=True) as st:
        return pd.DataFrame(st.sweeps(), columns=["sweep", "tasks", "ok", "error", "kinds",
                                                  "first", "last", "task_seconds"])


def show(store: str | os.PathLike[str], sweep: str, *, columns: Iterable[str] | None = None,
         max_rows: int = 50) -> str:
    """A text summary of ``sweep``: counts, time span, the errors, and its rows (the
    given ``columns``, default: label, status and the row's columns)."""
    df = load(store, sweep)
    ok = int((df["status"] == "ok").sum())
    bad = df[df["status"] == "error"]
    lines = [f"sweep {sweep!r} in {store}: {len(df)} finished task(s), {ok} ok, {len(bad)} "
             f"failed; kinds {', '.join(sorted(df['kind'].unique()))}; written "
             f"{df['created'].min()} .. {df['created'].max()}; "
             f"{df['seconds'].sum():.1f} task-seconds"]
    for _, r in bad.head(10).iterrows():
        lines.append(f"  FAILED {r['label'] or r['key'][:12]}: {r['error']}")
    if len(bad) > 10:
        lines.append(f"  ... and {len(bad) - 10} more failures")
    cols = list(columns) if columns is not None else ["label", "status"] + [
        c for c in df.columns if c not in _META]
    unknown = [c for c in cols if c not in df.columns]
    if unknown:
        raise ConfigurationError(f"column {unknown[0]!r} is not in sweep {sweep!r}; columns: "
                                 f"{', '.join(df.columns)}")
    with pd.option_context("display.max_columns", 12, "display.width", 160):
        lines.append(df[cols].to_string(max_rows=max_rows, index=False))
    return "\n".join(lines)


def export(store: str | os.PathLike[str], path: str | os.PathLike[str],
           sweep: str | None = None, *, status: str | None = None) -> Path:
    """Write the frame of ``sweep`` (all sweeps when None) to ``path``: ``.csv`` or
    ``.json`` (records, ISO dates), atomically (a failed export leaves no file)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise ConfigurationError(f"export file '{p}' must end in .csv or .json")
    df = load(store, sweep, status=status)
    with atomic_path(p) as tmp:
        if suffix == ".csv":
            df.to_csv(tmp, index=False)
        else:
            df.to_json(tmp, orient="records", date_format="iso", indent=1)
    return p
