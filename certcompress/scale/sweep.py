"""``cc.sweep(tasks)``: run tasks on an executor, store each result as it finishes, resume.

    results = cc.sweep(tasks)                                   # this machine, process pool
    results = cc.sweep(tasks, executor="ray", address="auto")  # a Ray cluster

Every finished task is written to the SQLite store (:mod:`certcompress.scale.store`) in
its own transaction; tasks whose key the store already holds for this sweep are skipped,
so re-running an interrupted sweep (Ctrl-C, a killed process, a lost Ray worker) computes
only what is missing. A task that raises is stored as an ``error`` row and the sweep goes
on (``retry_failed=True`` runs the stored failures again).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

from ..errors import ConfigurationError
from .executors import Executor, make_executor
from .results import frame
from .store import ResultStore
from .tasks import Task

__all__ = ["sweep", "SweepSummary"]


@dataclass(frozen=True)
class SweepSummary:
    """What one :func:`sweep` call did: tasks given (``total``, after dropping
    ``duplicates``), ``succeeded`` and ``failed`` in this call, ``skipped`` (already in the
    store), wall ``seconds``, and whether it was ``interrupted``."""

    sweep: str
    store: str
    executor: str
    total: int
    succeeded: int
    failed: int
    skipped: int
    duplicates: int
    seconds: float
    interrupted: bool = False

    def __str__(self) -> str:
        dup = f", {self.duplicates} duplicate(s) dropped" if self.duplicates else ""
        head = "INTERRUPTED " if self.interrupted else ""
        return (f"{head}sweep {self.sweep!r} on {self.executor}: {self.succeeded} succeeded, "
                f"{self.failed} failed, {self.skipped} skipped (already in {self.store}) of "
                f"{self.total} task(s){dup} in {self.seconds:.1f} s")


def _unique(tasks: Iterable[Task]) -> tuple[list[Task], int]:
    out: dict[str, Task] = {}
    dup = 0
    for i, t in enumerate(tasks):
        if not isinstance(t, Task):
            raise ConfigurationError(f"tasks[{i}] is a {type(t).__name__}, not a Task (build "
                                     "tasks with CertifyTask, PruneTask, QuantizeTask, "
                                     "MeanFieldTask or the helpers in certcompress.scale)")
        if t.key in out:
            dup += 1
        else:
            out[t.key] = t
    return list(out.values()), dup


def sweep(tasks: Iterable[Task], executor: str | Executor = "local",
          store: str | os.PathLike[str] = "runs.sqlite", sweep: str = "default",
          address: str | None = None, progress: bool = True, *, workers: int | None = None,
          num_cpus: int | None = None, retry_failed: bool = False) -> pd.DataFrame:
    """Run ``tasks`` and return the DataFrame of their results (one row per task, in the
    order given, from this run or from the store; columns as in
    :func:`certcompress.scale.results.load`), with the :class:`SweepSummary` in
    ``df.attrs["summary"]``.

    ``executor``: ``"local"`` (a process pool of ``workers`` processes, default one per
    core), ``"ray"`` (a local Ray instance with ``num_cpus`` CPUs, or the cluster at
    ``address``: ``"auto"`` or ``"ray://host:10001"``), ``"serial"`` (this process), or an
    :class:`~certcompress.scale.executors.Executor` (left open for reuse). ``store``: the
    SQLite file (created if missing); ``sweep``: the name rows are stored under.
    ``progress``: a bar on stderr (done, failed, remaining, rate) and the summary line.
    On Ctrl-C the workers are stopped, what finished stays stored, and KeyboardInterrupt
    propagates: run the same call again to resume.
    """
    if not isinstance(sweep, str) or not sweep.strip():
        raise ConfigurationError(f"sweep must be a non-empty name, got {sweep!r}")
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    todo, dup = _unique(tasks)
    order = {t.key: i for i, t in enumerate(todo)}
    with ResultStore(store) as st:
        done = st.keys(sweep, ("ok",) if retry_failed else ("ok", "error"))
        pending = [t for t in todo if t.key not in done]
        ex = make_executor(executor, address=address, workers=workers, num_cpus=num_cpus)
        owned = not isinstance(executor, Executor)
        ok = failed = 0
        interrupted = False
        bar = tqdm(total=len(pending), desc=f"sweep {sweep}", unit="task", file=sys.stderr,
                   disable=not progress or not pending, dynamic_ncols=True)
        by_key = {t.key: t for t in pending}
        outcomes = ex.map_unordered(pending)
        try:
            for out in outcomes:
                task = by_key[out.key]
                st.write(sweep=sweep, key=out.key, kind=task.kind, label=task.display,
                         spec=task.to_json(), status=out.status,
                         row=None if out.row is None else dict(out.row), error=out.error,
                         traceback=out.traceback, started=out.started, finished=out.finished,
                         seconds=out.seconds, worker=out.worker, attempts=out.attempts,
                         position=order[out.key])
                ok += out.status == "ok"
                failed += out.status == "error"
                bar.set_postfix_str(f"ok={ok} failed={failed} "
                                    f"left={len(pending) - ok - failed}", refresh=False)
                bar.update(1)
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            outcomes.close()
            if owned:
                ex.close()
            bar.close()
            summary = SweepSummary(sweep, str(store), ex.describe(), len(todo), ok, failed,
                                   len(todo) - len(pending), dup, time.perf_counter() - t0,
                                   interrupted)
            if progress or interrupted:
                tail = ("; run the same sweep again to resume" if interrupted else "")
                print(f"{summary}{tail}", file=sys.stderr)
        records = st.records(sweep, keys=order)
    records.sort(key=lambda r: order[r["key"]])
    df = frame(records)
    df.attrs["summary"] = summary
    return df
