"""What runs inside a worker process (a local pool process or a Ray worker): parse the
task's JSON spec, run it, and return a plain outcome dict. A task that raises becomes an
``error`` outcome (exception type, message and traceback); nothing but the spec text
arrives and nothing but scalars leave."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import traceback
from typing import Any

__all__ = ["execute", "init_local_worker", "local_execute"]

_STARTED: Any = None  # the local pool's start queue (set in each worker by its initializer)


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else ""


def execute(key: str, spec: str, threads: int | None = None) -> dict[str, Any]:
    """Run the task ``spec`` (its JSON) and return the outcome: ``key``, ``status`` (ok
    or error), ``row`` (dict of scalars) or ``error`` and ``traceback``, ``started`` and
    ``finished`` (Unix times), ``seconds`` (wall time of the work) and ``worker``."""
    started = time.time()
    t0 = time.perf_counter()
    out: dict[str, Any] = {"key": key, "worker": f"{socket.gethostname()}:{os.getpid()}",
                           "started": started}
    try:
        if threads:
            import torch

            torch.set_num_threads(threads)
        from .tasks import task_from_json

        task = task_from_json(spec)
        if task.key != key:
            raise RuntimeError(f"the task spec hashes to {task.key}, not the key {key} it was "
                               "sent with (certcompress versions differ between driver and "
                               "worker?)")
        out.update(status="ok", row=task.run(), error="", traceback="")
    except Exception as exc:
        out.update(status="error", row=None,
                   error=f"{type(exc).__name__}: {_first_line(exc)}".rstrip(": "),
                   traceback="".join(traceback.format_exception(type(exc), exc,
                                                                exc.__traceback__)))
    out.update(finished=time.time(), seconds=time.perf_counter() - t0)
    return out


# ---------------------------------------------------------------------- local pool
def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:  # the sweep process died (killed): do not linger
            os._exit(1)
        time.sleep(0.5)


def init_local_worker(started: Any, parent: int) -> None:
    """Initializer of a local pool process: leave Ctrl-C to the sweep process (it stops
    the pool), exit when the sweep process dies, and report task starts on ``started``."""
    global _STARTED
    _STARTED = started
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True,
                     name="certcompress-parent-watch").start()


def local_execute(key: str, spec: str, threads: int | None) -> dict[str, Any]:
    """:func:`execute` in a local pool process, after telling the pool it started."""
    if _STARTED is not None:
        _STARTED.put((key, os.getpid()))
    return execute(key, spec, threads)
