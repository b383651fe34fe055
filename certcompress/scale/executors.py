"""Executors: where tasks run. One interface, :meth:`Executor.map_unordered` (submit
tasks, yield each :class:`Outcome` as it finishes), three places:

:class:`LocalExecutor` (``"local"``, the default)
    A process pool on this machine (``spawn`` start method, ``workers`` = CPU cores by
    default, one torch thread per worker). A worker process that dies (killed, out of
    memory) is replaced and the task it was running is retried up to ``max_retries``
    times; then it becomes an error outcome.
:class:`RayExecutor` (``"ray"``)
    Ray tasks on a local instance (``address=None``, ``num_cpus`` CPUs) or a running
    cluster (``address="auto"`` or ``"ray://host:10001"``); Ray re-runs a task whose
    worker is lost up to ``max_retries`` times. ``ship_files=True`` puts the weights,
    data and factory files in Ray's object store, for clusters without a shared file
    system.
:class:`SerialExecutor` (``"serial"``)
    In this process, one task after the other (debugging: breakpoints work).

Only a task's JSON spec travels to a worker (models by spec, files by path or object
store); only a dict of scalars comes back. A task that raises is an ``error`` outcome,
never an exception of the executor. Stopping the iteration (Ctrl-C, an error in the
caller) cancels what has not finished and stops the worker processes.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Generator, Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import ConfigurationError
from . import _worker
from .tasks import Task

__all__ = ["Executor", "LocalExecutor", "RayExecutor", "SerialExecutor", "Outcome",
           "EXECUTORS", "make_executor"]


@dataclass(frozen=True)
class Outcome:
    """The result of one task: ``status`` ``"ok"`` with ``row``, or ``"error"`` with
    ``error`` (type and message) and ``traceback``; ``started``/``finished`` are Unix
    times on the worker, ``seconds`` the wall time of the work, ``worker`` ``host:pid``,
    ``attempts`` how many runs it took (None where the engine does not say)."""

    key: str
    status: str
    row: Mapping[str, Any] | None
    error: str
    traceback: str
    started: float
    finished: float
    seconds: float
    worker: str
    attempts: int | None = 1


def _lost(key: str, message: str, attempts: int | None) -> dict[str, Any]:
    import time

    now = time.time()
    return {"key": key, "status": "error", "row": None, "error": message, "traceback": "",
            "started": now, "finished": now, "seconds": 0.0, "worker": "", "attempts": attempts}


class Executor(ABC):
    """Base class. Override map: ``_run(tasks)`` (a generator of outcome dicts, one per
    key, in any order), ``close()`` and ``describe()``. :meth:`map_unordered` checks the
    tasks and every outcome; an executor is a context manager and may be reused for
    several sweeps."""

    name: ClassVar[str] = ""

    def map_unordered(self, tasks: Iterable[Task]) -> Generator[Outcome, None, None]:
        """Run ``tasks`` (distinct keys) and yield one :class:`Outcome` each, as they
        finish."""
        todo: dict[str, Task] = {}
        for i, t in enumerate(tasks):
            if not isinstance(t, Task):
                raise ConfigurationError(f"tasks[{i}] is a {type(t).__name__}, not a Task")
            if t.key in todo:
                raise ConfigurationError(f"tasks[{i}] repeats the key of another task "
                                         f"({t.display}); give each configuration once")
            todo[t.key] = t
        if not todo:
            return
        seen: set[str] = set()
        runner = self._run(todo)
        try:
            for out in runner:
                key = out.get("key")
                if key not in todo or key in seen:
                    raise RuntimeError(f"{type(self).__name__} returned an outcome for "
                                       f"{'an unknown' if key not in todo else 'a finished'} "
                                       f"key {key!r} (a bug in certcompress)")
                seen.add(key)
                yield Outcome(key=key, status=out["status"], row=out.get("row"),
                              error=out.get("error", ""), traceback=out.get("traceback", ""),
                              started=float(out["started"]), finished=float(out["finished"]),
                              seconds=float(out["seconds"]), worker=str(out.get("worker", "")),
                              attempts=out.get("attempts", 1))
        finally:  # stopped early (Ctrl-C, an error in the caller): stop the workers now
            runner.close()
        missing = [k for k in todo if k not in seen]
        if missing:
            raise RuntimeError(f"{type(self).__name__} finished without an outcome for "
                               f"{len(missing)} task(s), e.g. {todo[missing[0]].display} "
                               "(a bug in certcompress)")

    @abstractmethod
    def _run(self, tasks: Mapping[str, Task]) -> Generator[dict[str, Any], None, None]: ...

    def close(self) -> None:  # noqa: B027 (an executor without workers has nothing to release)
        """Release workers (idempotent)."""

    def describe(self) -> str:
        return self.name

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------- serial
class SerialExecutor(Executor):
    """Runs each task in this process, in order (through its JSON spec, like a worker)."""

    name = "serial"

    def _run(self, tasks: Mapping[str, Task]) -> Generator[dict[str, Any], None, None]:
        for key, task in tasks.items():
            yield _worker.execute(key, task.to_json())


# ---------------------------------------------------------------------- local
class LocalExecutor(Executor):
    """A ``spawn`` process pool of ``workers`` processes (default: the CPU cores), each
    running ``threads_per_worker`` torch threads (None: torch's default). The pool
    starts on first use and is kept until :meth:`close`."""

    name = "local"

    def __init__(self, workers: int | None = None, *, max_retries: int = 2,
                 threads_per_worker: int | None = 1) -> None:
        w = (os.cpu_count() or 1) if workers is None else workers
        if isinstance(w, bool) or not isinstance(w, int) or w < 1:
            raise ConfigurationError(f"workers must be an integer >= 1, got {workers!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigurationError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        if threads_per_worker is not None and (not isinstance(threads_per_worker, int)
                                               or threads_per_worker < 1):
            raise ConfigurationError(f"threads_per_worker must be an integer >= 1 or None, got "
                                     f"{threads_per_worker!r}")
        self.workers = w
        self.max_retries = max_retries
        self.threads = threads_per_worker
        self._ctx = multiprocessing.get_context("spawn")
        self._pool: ProcessPoolExecutor | None = None
        self._started: Any = None

    def describe(self) -> str:
        return f"local ({self.workers} worker{'s' if self.workers != 1 else ''})"

    def _pool_now(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._started = self._ctx.SimpleQueue()
            self._pool = ProcessPoolExecutor(self.workers, mp_context=self._ctx,
                                             initializer=_worker.init_local_worker,
                                             initargs=(self._started, os.getpid()))
        return self._pool

    def _running_keys(self) -> dict[int, str]:
        """Worker pid -> the key of the last task it started (since the pool started).
        A worker runs one task at a time, so an earlier task of the same worker had
        finished, even when its result was lost with the broken pool."""
        running: dict[int, str] = {}
        q = self._started
        while q is not None and not q.empty():
            key, pid = q.get()
            running[pid] = key
        return running

    def _crashed_pids(self) -> set[int]:
        """Workers that died by themselves: the pool terminates the others (SIGTERM)
        when it notices a broken worker."""
        procs = getattr(self._pool, "_processes", None) or {}
        return {pid for pid, p in procs.items()
                if p.exitcode is not None and p.exitcode != -signal.SIGTERM}

    def _run(self, tasks: Mapping[str, Task]) -> Generator[dict[str, Any], None, None]:
        pending = dict(tasks)
        attempts = dict.fromkeys(tasks, 0)
        try:
            while pending:
                pool = self._pool_now()
                futures: dict[Future[dict[str, Any]], str] = {
                    pool.submit(_worker.local_execute, k, t.to_json(), self.threads): k
                    for k, t in pending.items()}
                broken = False
                waiting = set(futures)
                while waiting:
                    done, waiting = wait(waiting, return_when=FIRST_COMPLETED)
                    for fut in done:
                        key = futures[fut]
                        try:
                            out = fut.result()
                        except BrokenProcessPool:
                            broken = True
                            continue
                        del pending[key]
                        out["attempts"] = attempts[key] + 1
                        yield out
                if broken:
                    yield from self._after_crash(pending, attempts)
        except BaseException:  # Ctrl-C, or the caller stopped iterating: stop the workers
            self._terminate()
            raise

    def _after_crash(self, pending: dict[str, Task], attempts: dict[str, int]
                     ) -> Generator[dict[str, Any], None, None]:
        """A worker died: charge an attempt to the unfinished task that worker was running
        (if that cannot be told: the unfinished task each worker was running, or every
        unfinished one), fail those out of retries, and start a fresh pool for the rest."""
        # Let the pool's manager thread finish terminating and joining its workers first:
        # before that, the exit code of a worker can read None (or the join races our
        # read), and an innocent task running beside the crash would be charged.
        manager = getattr(self._pool, "_executor_manager_thread", None)
        if manager is not None:
            manager.join(timeout=60)
        running = {pid: k for pid, k in self._running_keys().items() if k in pending}
        crashed = self._crashed_pids()
        self._terminate()
        culprits = {k for pid, k in running.items() if pid in crashed}
        for key in sorted(culprits or set(running.values()) or pending):
            attempts[key] += 1
            if attempts[key] > self.max_retries:
                del pending[key]
                yield _lost(key, f"WorkerLost: the worker process running this task died "
                                 f"({attempts[key]} attempt(s); killed, crashed or out of "
                                 "memory)", attempts[key])

    def _terminate(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            if proc.is_alive():
                proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        self._started = None

    def close(self) -> None:
        self._terminate()  # idle workers: stopping them beats waiting for their exit


# ---------------------------------------------------------------------- Ray
class RayExecutor(Executor):
    """Ray tasks (1 CPU and ``threads_per_task`` torch threads each) with ``max_retries``
    re-runs on worker loss. ``address``: None starts a local instance with ``num_cpus``
    CPUs (default: all); ``"auto"`` or ``"ray://host:10001"`` connects to a cluster. If
    Ray is already initialized in this process, that session is used and left running.
    ``runtime_env`` is passed to ``ray.init`` (e.g. ``{"pip": ["certcompress"]}``)."""

    name = "ray"

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None,
                 max_retries: int = 3, threads_per_task: int | None = 1,
                 ship_files: bool = False, runtime_env: Mapping[str, Any] | None = None
                 ) -> None:
        if address is not None and num_cpus is not None:
            raise ConfigurationError("num_cpus is for a local Ray instance (address=None); "
                                     "a cluster's CPUs are set where it is started")
        if num_cpus is not None and (not isinstance(num_cpus, int) or num_cpus < 1):
            raise ConfigurationError(f"num_cpus must be an integer >= 1, got {num_cpus!r}")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigurationError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        self.address = address
        self.num_cpus = num_cpus
        self.max_retries = max_retries
        self.threads = threads_per_task
        self.ship_files = ship_files
        self.runtime_env = dict(runtime_env) if runtime_env else None
        self._owns = False
        self._remote: Any = None
        self._blobs: dict[tuple[str, str], Any] = {}

    def describe(self) -> str:
        where = (f"local instance, {self.num_cpus or 'all'} CPUs" if self.address is None
                 else self.address)
        return f"ray ({where})"

    def _ensure(self) -> Any:
        try:
            import ray
        except ModuleNotFoundError:
            raise ConfigurationError("executor 'ray' needs Ray: pip install 'ray>=2.9' (or "
                                     "use executor='local')") from None
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"address": self.address, "include_dashboard": False}
            if self.num_cpus is not None:
                kwargs["num_cpus"] = self.num_cpus
            if self.runtime_env:
                kwargs["runtime_env"] = self.runtime_env
            try:
                ray.init(**kwargs)
            except ConnectionError as exc:
                raise ConfigurationError(f"cannot connect to the Ray cluster at "
                                         f"{self.address!r}: {exc}") from None
            self._owns = True
        if self._remote is None:
            self._remote = ray.remote(num_cpus=1, max_retries=self.max_retries,
                                      retry_exceptions=False)(_ray_execute)
        return ray

    def _shipped(self, ray: Any, task: Task) -> tuple[list[str], list[Any]]:
        from .refs import file_sha256

        names, refs = [], []
        for path in dict.fromkeys(task.files()):
            digest = file_sha256(path)
            if (path, digest) not in self._blobs:
                with open(path, "rb") as fh:
                    self._blobs[(path, digest)] = ray.put(fh.read())
            names.append(f"{digest}/{os.path.basename(path)}|{path}")
            refs.append(self._blobs[(path, digest)])
        return names, refs

    def _run(self, tasks: Mapping[str, Task]) -> Generator[dict[str, Any], None, None]:
        ray = self._ensure()
        refs: dict[Any, str] = {}
        for key, task in tasks.items():
            names, blobs = self._shipped(ray, task) if self.ship_files else ([], [])
            refs[self._remote.remote(key, task.to_json(), self.threads, names, *blobs)] = key
        pending = list(refs)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                for ref in ready:
                    try:
                        out = ray.get(ref)
                        out["attempts"] = None
                    except ray.exceptions.RayError as exc:
                        first = next((ln for ln in str(exc).splitlines() if ln.strip()), "")
                        out = _lost(refs[ref], f"{type(exc).__name__}: {first} (Ray gave up "
                                               f"after {self.max_retries} retries)", None)
                    yield out
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise

    def close(self) -> None:
        self._blobs.clear()
        self._remote = None
        if self._owns:
            import ray

            ray.shutdown()
            self._owns = False


def _ray_execute(key: str, spec: str, threads: int | None, names: list[str], *blobs: bytes
                 ) -> dict[str, Any]:
    """The Ray task: materialize shipped files (content-addressed, under the temporary
    directory) and run the spec with its paths pointing at them."""
    if names:
        from .tasks import task_from_json

        paths = {}
        root = os.path.join(tempfile.gettempdir(), "certcompress-ray-files")
        for name, blob in zip(names, blobs):
            rel, original = name.split("|", 1)
            local = os.path.join(root, rel)
            if not os.path.exists(local):
                os.makedirs(os.path.dirname(local), exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=os.path.dirname(local))
                with os.fdopen(fd, "wb") as fh:
                    fh.write(blob)
                os.replace(tmp, local)
            paths[original] = local
        spec = task_from_json(spec).relocated(paths).to_json()
    return _worker.execute(key, spec, threads)


# ---------------------------------------------------------------------- by name
EXECUTORS: dict[str, type[Executor]] = {"local": LocalExecutor, "ray": RayExecutor,
                                        "serial": SerialExecutor}


def make_executor(executor: str | Executor, *, address: str | None = None,
                  workers: int | None = None, num_cpus: int | None = None) -> Executor:
    """An executor by name (``"local"``, ``"ray"``, ``"serial"``) or the given one."""
    if isinstance(executor, Executor):
        if address is not None or workers is not None or num_cpus is not None:
            raise ConfigurationError("address, workers and num_cpus configure an executor by "
                                     "name; set them on the Executor object instead")
        return executor
    if executor == "local":
        if address is not None:
            raise ConfigurationError("address is for executor='ray'")
        return LocalExecutor(workers)
    if executor == "ray":
        if workers is not None:
            raise ConfigurationError("workers is for executor='local'; a local Ray instance "
                                     "takes num_cpus")
        return RayExecutor(address, num_cpus=num_cpus)
    if executor == "serial":
        return SerialExecutor()
    raise ConfigurationError(f"executor {executor!r} is unknown; use one of "
                             f"{', '.join(EXECUTORS)} or an Executor object")
