"""Parallel bounding of a round's regions: helper processes on this machine (``"local"``)
or Ray tasks (``"ray"``). Only the chain pair (plain tensors) and the regions travel;
the search itself stays in the calling process, so its rounds, and hence the verdict,
are the same on every executor and any number of workers.

``workers`` counts the calling process: it bounds chunks too, so ``workers=2`` uses
one helper (or keeps one Ray task in flight) and the caller is the second. The caller
and the helpers take a round's chunks in order, one at a time (the first hold the
children of the worst regions, the costliest, so the lanes finish a round close
together), so none waits while another has chunks left; a helper gets chunks only once
it has started (importing torch takes seconds, 3-5 s on the 2-core machine): until then
the caller bounds every chunk itself, so the search never waits for a start-up. The
caller also runs the previous round's counterexample search (:mod:`.search`) while
the helpers bound.

Warm helpers (``"local"``): the helper processes outlive a call. They are started on
first use, one set per number of helpers, kept for the later calls of this process
(``verify_equivalence``, ``equiv-batch``'s instances), and stopped by
:func:`close_pools` or at exit. Each has its own pipe; a call sends its chain pair to a
helper once, with the helper's first chunk of that call, so calls with different pairs
reuse the same processes. A set is used by one call at a time (a concurrent call from
another thread starts a private set, stopped when it ends); a forked child forgets its
parent's sets; helpers ignore SIGINT (Ctrl-C stops the caller, which stops them at exit)
and exit when the caller's end of their pipe closes. A call interrupted while a helper
still bounds a chunk stops that set (the next call starts a fresh one). Measured on the
ACAS-like table pairs (docs/equivalence.md, "Parallel").
"""

from __future__ import annotations

import atexit
import itertools
import multiprocessing
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigurationError
from .chain import ChainPair
from .search import Job, Pre, bound_chunk

__all__ = ["Pool", "EXECUTORS", "close_pools", "warm_pools"]

EXECUTORS = (None, "serial", "local", "ray")

# how often a helper that has not started yet looks again (seconds)
_POLL = 0.005
# how long close_pools waits for a helper to stop before terminating it (seconds)
_STOP_WAIT = 5.0

Bounded = tuple[Tensor, Tensor, Pre]


def _ready() -> None:
    """A no-op Ray task: submitting one per helper starts the Ray workers (each imports
    torch and the package, seconds) while the search bounds its first rounds in the
    caller."""


def _ray_work(chain: ChainPair, mode: str, optimize: int, job: Job, packed: bool
              ) -> Bounded:
    torch.set_num_threads(1)
    return bound_chunk(chain, *_unpack(job, packed), intermediate=mode, optimize=optimize)


def _picklable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any pickling failure: send the text instead
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _pack(job: Job) -> tuple[Job, bool]:
    """``job`` with its parents' layer bounds sent once per pair of children: the search
    splits each parent in two, so rows ``2i`` and ``2i + 1`` of every prior tensor are
    equal (checked here, bit for bit; otherwise the job goes whole). ``(job, packed)``."""
    lo, hi, cz, cd, r, prior = job
    P = lo.shape[0]
    if prior is None or P % 2 or not any(t is not None for t in prior):
        return job, False
    if not all(t is None or torch.equal(t[0::2], t[1::2]) for t in prior):
        return job, False
    return (lo, hi, cz, cd, r, [None if t is None else t[0::2].clone() for t in prior]), True


def _unpack(job: Job, packed: bool) -> Job:
    if not packed:
        return job
    lo, hi, cz, cd, r, prior = job
    assert prior is not None
    return (lo, hi, cz, cd, r,
            [None if t is None else t.repeat_interleave(2, dim=0) for t in prior])


def _serve(conn: Connection) -> None:
    """A helper process: bound the chunks it is sent with the current call's chain pair.

    Messages: ``("chain", token, chain, mode, optimize)`` (the pair of the call
    ``token``), ``("job", token, job, packed)`` (:func:`_pack`; answered ``("ok",
    result)`` or ``("error", exception)``), ``("stop",)``. The caller's end closing ends it too."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the caller decides when helpers stop
    torch.set_num_threads(1)
    conn.send(("ready", os.getpid()))
    current: tuple[int, ChainPair, str, int] | None = None
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the caller is gone
            return
        if msg[0] == "stop":
            return
        if msg[0] == "chain":
            current = (msg[1], msg[2], msg[3], msg[4])
            continue
        try:
            if current is None or current[0] != msg[1]:
                raise RuntimeError("a chunk arrived before its call's chain pair")
            _, chain, mode, optimize = current
            job = _unpack(msg[2], msg[3])
            out: tuple[str, Any] = ("ok", bound_chunk(chain, *job, intermediate=mode,
                                                      optimize=optimize))
        except Exception as exc:  # noqa: BLE001 - re-raised in the caller
            out = ("error", _picklable(exc))
        try:
            conn.send(out)
        except (EOFError, OSError):
            return


class _StartFailed(RuntimeError):
    """A helper exited before it started: the caller bounds its share (noted)."""


class _Helpers:
    """``n`` helper processes (spawned), each with its own pipe; used by one call at a
    time (:attr:`lock`)."""

    def __init__(self, n: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.owner = os.getpid()
        self.lock = threading.Lock()
        self.procs: list[Any] = []
        self.conns: list[Connection] = []
        self.started = [False] * n
        self.failed = [""] * n  # why it exited before it started
        self.token: list[int | None] = [None] * n  # the call whose pair each one holds
        self.broken = False
        for _ in range(n):
            mine, theirs = ctx.Pipe()
            p = ctx.Process(target=_serve, args=(theirs,), daemon=True,
                            name="certcompress-bab-helper")
            p.start()
            theirs.close()
            self.procs.append(p)
            self.conns.append(mine)

    def alive(self) -> bool:
        return not self.broken and self.owner == os.getpid() and \
            all(p.is_alive() for p in self.procs)

    def poll_started(self, k: int) -> bool:
        """Whether helper ``k`` has started; :class:`_StartFailed` if it exited first."""
        if self.started[k]:
            return True
        if self.failed[k]:
            raise _StartFailed(self.failed[k])
        try:
            if self.conns[k].poll(0):
                msg = self.conns[k].recv()
                if msg[0] == "ready":
                    self.started[k] = True
                    return True
        except (EOFError, OSError):
            pass
        else:
            if self.procs[k].is_alive():
                return False
        self.broken = True
        self.failed[k] = (
            f"helper process {k} of executor='local' exited while starting (exit code "
            f"{self.procs[k].exitcode}); the caller bounded its chunks. Helpers are "
            "spawned: a script that calls verify_equivalence(executor='local') needs the "
            "`if __name__ == '__main__':` guard around its work")
        raise _StartFailed(self.failed[k])

    def call(self, k: int, token: int, chain: ChainPair, mode: str, optimize: int,
             job: Job) -> Bounded:
        conn = self.conns[k]
        try:
            if self.token[k] != token:
                conn.send(("chain", token, chain, mode, optimize))
                self.token[k] = token
            conn.send(("job", token) + _pack(job))
            kind, payload = conn.recv()
        except (EOFError, OSError, BrokenPipeError):
            self.broken = True
            code = self.procs[k].exitcode
            raise RuntimeError(f"helper process {k} of executor='local' died (exit code "
                               f"{code}); the next call starts fresh helpers") from None
        if kind == "error":
            raise payload
        return payload  # type: ignore[no-any-return]

    def close(self) -> None:
        """Stop the processes (ask, wait, then terminate); only the owning process does."""
        self.broken = True
        if self.owner != os.getpid():
            return
        for conn in self.conns:
            try:
                conn.send(("stop",))
            except (EOFError, OSError):
                pass
        deadline = time.monotonic() + _STOP_WAIT
        for p in self.procs:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.terminate()
                p.join(1.0)
        for conn in self.conns:
            conn.close()


_WARM: dict[int, _Helpers] = {}
_WARM_LOCK = threading.Lock()


def _acquire(n: int) -> tuple[_Helpers, bool, bool]:
    """Helpers for one call: ``(helpers, private, warm)``: the warm set of ``n`` (started
    now if there is none or it broke), or a private set when another call holds it;
    ``warm``: the set was running before this call."""
    with _WARM_LOCK:
        h = _WARM.get(n)
        if h is not None and not h.alive():
            del _WARM[n]  # broken or dead: forget it; stop it unless a call holds it
            if h.lock.acquire(blocking=False):
                h.close()
                h.lock.release()
            h = None
        warm = h is not None
        if h is None:
            h = _WARM[n] = _Helpers(n)
        if h.lock.acquire(blocking=False):
            return h, False, warm
    return _Helpers(n), True, False


def _release(h: _Helpers, private: bool, stop: bool) -> None:
    """End a call's use of ``h``: a private set, one asked to ``stop`` or one no longer
    registered (replaced after it broke) is stopped; the warm set stays."""
    if not private:
        with _WARM_LOCK:
            registered = _WARM.get(len(h.procs)) is h
            if stop and registered:
                del _WARM[len(h.procs)]
        stop = stop or not registered
    if private or stop:
        h.close()
    if not private:
        h.lock.release()


def close_pools() -> int:
    """Stop the warm helper processes of ``executor="local"`` (they are kept between
    calls; this runs at exit too). Returns how many processes were stopped. A call that
    is running keeps its helpers until it ends."""
    stopped = 0
    with _WARM_LOCK:
        sets = list(_WARM.items())
        for n, h in sets:
            if h.lock.acquire(blocking=False):
                del _WARM[n]
                stopped += len(h.procs) if h.owner == os.getpid() else 0
                h.close()
                h.lock.release()
    return stopped


def warm_pools() -> dict[int, list[int]]:
    """The warm helper sets of this process: number of helpers -> their process ids."""
    with _WARM_LOCK:
        return {n: [int(p.pid) for p in h.procs] for n, h in _WARM.items() if h.alive()}


def _forget_after_fork() -> None:
    # a forked child does not own its parent's helpers: drop them without stopping them
    global _WARM_LOCK
    _WARM.clear()
    _WARM_LOCK = threading.Lock()


atexit.register(close_pools)
os.register_at_fork(after_in_child=_forget_after_fork)

_TOKENS = itertools.count(1)


class Pool:
    """Bounds chunks of regions on ``workers`` processes: the caller and ``workers - 1``
    helpers, warm helper processes (``"local"``) or Ray tasks (``"ray"``); :meth:`map`
    yields the results in the jobs' order."""

    def __init__(self, kind: str, chain: ChainPair, workers: int | None = None,
                 intermediate: str = "crown", optimize: int = 0) -> None:
        self.kind = kind
        self.chain = chain
        self.mode = intermediate
        self.optimize = optimize
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.helpers = self.workers - 1
        self.token = next(_TOKENS)
        self._local_set: _Helpers | None = None
        self._private = False
        # whether the helpers had been started before this call (a warm pool)
        self.warm = False
        self._ray: Any = None
        self._probes: list[Any] = []
        self._owns_ray = False
        self._threads: list[threading.Thread] = []
        # what went wrong without failing the call (a helper that could not start)
        self.notes: list[str] = []
        # chunks bound by the caller and by the helpers, over all rounds so far
        self.chunks = {"caller": 0, "helpers": 0}
        if kind == "local":
            if self.helpers:
                self._local_set, self._private, self.warm = _acquire(self.helpers)
        elif kind == "ray":
            try:
                import ray  # optional heavy dependency
            except ImportError:
                raise ConfigurationError("executor='ray' needs Ray: pip install 'ray[default]'"
                                         ) from None
            self._ray = ray
            if self.helpers:
                self.warm = ray.is_initialized()
                if not ray.is_initialized():
                    ray.init(num_cpus=self.helpers, include_dashboard=False,
                             log_to_driver=False, ignore_reinit_error=True)
                    self._owns_ray = True
                self._fn = ray.remote(num_cpus=1)(_ray_work)
                self._chain_ref = ray.put(chain)
                # one task per helper: each starts a Ray worker (imports torch), the
                # helper takes chunks once its own has returned
                probe = ray.remote(num_cpus=1)(_ready)
                self._probes = [probe.remote() for _ in range(self.helpers)]
        else:
            raise ConfigurationError(f"executor {kind!r} is unknown; use None, 'serial', "
                                     "'local' or 'ray'")

    def _started(self, k: int) -> bool:
        """Whether helper ``k`` can take a chunk without waiting for its start-up."""
        if self._local_set is not None:
            return self._local_set.poll_started(k)
        ready, _ = self._ray.wait([self._probes[k]], timeout=0)
        return bool(ready)

    def _remote(self, k: int, job: Job) -> Bounded:
        if self._local_set is not None:
            return self._local_set.call(k, self.token, self.chain, self.mode, self.optimize,
                                        job)
        return self._ray.get(self._fn.remote(self._chain_ref, self.mode, self.optimize,
                                             *_pack(job)))

    def _local(self, job: Job) -> Bounded:
        return bound_chunk(self.chain, *job, intermediate=self.mode, optimize=self.optimize)

    def map(self, jobs: list[Job], side: Callable[[], object] | None = None
            ) -> Iterator[Bounded]:
        """Bound every job; the results come back in the jobs' order (the bound of a
        chunk does not depend on who computed it). ``side`` runs in the caller first,
        while the started helpers take chunks."""
        if self.kind == "local" and self.helpers and self._local_set is None:
            raise RuntimeError("this Pool is closed")
        results: list[Bounded | None] = [None] * len(jobs)
        lock = threading.Lock()
        nxt = [0]  # jobs[nxt[0]:] are not taken yet
        errors: list[BaseException] = []

        def take() -> int | None:
            # in order: the first chunks hold the children of the worst regions, the
            # costliest (more unstable neurons), so the cheap ones come last and the
            # lanes finish a round close together
            with lock:
                if nxt[0] >= len(jobs) or errors:
                    return None
                nxt[0] += 1
                return nxt[0] - 1

        def helper(k: int) -> None:
            try:
                while not self._started(k):
                    with lock:
                        if nxt[0] >= len(jobs) or errors:
                            return
                    time.sleep(_POLL)
                while (i := take()) is not None:
                    results[i] = self._remote(k, jobs[i])
                    with lock:
                        self.chunks["helpers"] += 1
            except _StartFailed as e:  # the others (the caller) bound its chunks
                with lock:
                    if str(e) not in self.notes:
                        self.notes.append(str(e))
            except BaseException as e:  # re-raised in the caller
                with lock:
                    errors.append(e)

        threads = [threading.Thread(target=helper, args=(k,), daemon=True,
                                    name=f"certcompress-bab-helper-{k}")
                   for k in range(self.helpers if len(jobs) > 1 or side else 0)]
        self._threads = threads
        for t in threads:
            t.start()
        try:
            if side is not None:
                side()
            while (i := take()) is not None:
                results[i] = self._local(jobs[i])
                self.chunks["caller"] += 1
        finally:
            with lock:  # nothing left, or a failure here: the helpers take no more
                nxt[0] = len(jobs)
            for t in threads:  # each finishes the chunk it holds (a second Ctrl-C here
                t.join()       # leaves it running: close() then stops its process)
        if errors:
            raise errors[0]
        for r in results:
            assert r is not None
            yield r

    def close(self) -> None:
        """End this call's use of the helpers: a warm local set stays for the next call
        (unless a helper still holds a chunk, or broke: then it is stopped), a private
        one is stopped; Ray is shut down if this pool started it."""
        if self._local_set is not None:
            busy = any(t.is_alive() for t in self._threads)
            h, self._local_set = self._local_set, None
            _release(h, self._private, stop=busy or h.broken)
        if self._ray is not None:
            if self._owns_ray:
                self._ray.shutdown()
            self._ray = None

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
