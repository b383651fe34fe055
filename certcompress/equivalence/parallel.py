"""Parallel bounding of a round's regions: a process pool on this machine (``"local"``)
or Ray tasks (``"ray"``). Only the chain pair (plain tensors) and the regions travel;
the search itself stays in the calling process, so its rounds, and hence the verdict,
are the same on every executor and any number of workers.

``workers`` counts the calling process: it bounds chunks too, so ``workers=2`` starts
one process (or keeps one Ray task in flight) and the caller is the second. The caller
and the helpers take a round's chunks in order, one at a time (the first hold the
children of the worst regions, the costliest, so the lanes finish a round close
together), so none waits while another has chunks left; a helper gets chunks only once it has
started (importing torch takes seconds, 2-7 s on a busy 2-core machine): until then the
caller bounds every chunk itself, so the search never waits for a start-up. The
caller also runs the previous round's counterexample search (:mod:`.search`) while
the helpers bound. Measured
on the ACAS-like table pairs (docs/equivalence.md, "Parallel").
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigurationError
from .chain import ChainPair
from .search import Job, Pre, bound_chunk

__all__ = ["Pool", "EXECUTORS"]

EXECUTORS = (None, "serial", "local", "ray")

_CHAIN: ChainPair | None = None
_MODE = "crown"
_OPTIMIZE = 0

# how often a helper that has not started yet looks again (seconds)
_POLL = 0.005


def _init(chain: ChainPair, mode: str, optimize: int = 0, ready: Any = None) -> None:
    global _CHAIN, _MODE, _OPTIMIZE
    torch.set_num_threads(1)
    _CHAIN = chain
    _MODE = mode
    _OPTIMIZE = optimize
    if ready is not None:  # this process has imported the package: it can take chunks
        with ready.get_lock():
            ready.value += 1


def _ready() -> None:
    """A no-op task: submitting one per worker starts the workers (each imports torch and
    the package, seconds) while the search bounds its first rounds in the caller."""


def _work(job: Job) -> tuple[Tensor, Tensor, Pre]:
    assert _CHAIN is not None
    return bound_chunk(_CHAIN, *job, intermediate=_MODE, optimize=_OPTIMIZE)


def _ray_work(chain: ChainPair, mode: str, optimize: int, job: Job
              ) -> tuple[Tensor, Tensor, Pre]:
    torch.set_num_threads(1)
    return bound_chunk(chain, *job, intermediate=mode, optimize=optimize)


class Pool:
    """Bounds chunks of regions on ``workers`` processes: the caller and ``workers - 1``
    helpers, processes of a pool (``"local"``) or Ray tasks (``"ray"``); :meth:`map`
    yields the results in the jobs' order."""

    def __init__(self, kind: str, chain: ChainPair, workers: int | None = None,
                 intermediate: str = "crown", optimize: int = 0) -> None:
        self.kind = kind
        self.chain = chain
        self.mode = intermediate
        self.optimize = optimize
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.helpers = self.workers - 1
        self._pool: ProcessPoolExecutor | None = None
        self._ready_count: Any = None
        self._ray: Any = None
        self._probes: list[Any] = []
        self._owns_ray = False
        # chunks bound by the caller and by the helpers, over all rounds so far
        self.chunks = {"caller": 0, "helpers": 0}
        if kind == "local":
            if self.helpers:
                ctx = multiprocessing.get_context("spawn")
                self._ready_count = ctx.Value("i", 0)
                self._pool = ProcessPoolExecutor(
                    self.helpers, mp_context=ctx, initializer=_init,
                    initargs=(chain, intermediate, optimize, self._ready_count))
                # the pool starts its processes on demand: start them all now
                for _ in range(self.helpers):
                    self._pool.submit(_ready)
        elif kind == "ray":
            try:
                import ray  # optional heavy dependency
            except ImportError:
                raise ConfigurationError("executor='ray' needs Ray: pip install 'ray[default]'"
                                         ) from None
            self._ray = ray
            if self.helpers:
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
        if self._pool is not None:
            return int(self._ready_count.value) > k
        ready, _ = self._ray.wait([self._probes[k]], timeout=0)
        return bool(ready)

    def _remote(self, job: Job) -> tuple[Tensor, Tensor, Pre]:
        if self._pool is not None:
            return self._pool.submit(_work, job).result()
        return self._ray.get(self._fn.remote(self._chain_ref, self.mode, self.optimize,
                                             job))

    def _local(self, job: Job) -> tuple[Tensor, Tensor, Pre]:
        return bound_chunk(self.chain, *job, intermediate=self.mode, optimize=self.optimize)

    def map(self, jobs: list[Job], side: Callable[[], object] | None = None
            ) -> Iterator[tuple[Tensor, Tensor, Pre]]:
        """Bound every job; the results come back in the jobs' order (the bound of a
        chunk does not depend on who computed it). ``side`` runs in the caller first,
        while the started helpers take chunks."""
        results: list[tuple[Tensor, Tensor, Pre] | None] = [None] * len(jobs)
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
                    results[i] = self._remote(jobs[i])
                    with lock:
                        self.chunks["helpers"] += 1
            except BaseException as e:  # re-raised in the caller
                with lock:
                    errors.append(e)

        threads = [threading.Thread(target=helper, args=(k,), daemon=True)
                   for k in range(self.helpers if len(jobs) > 1 or side else 0)]
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
            for t in threads:
                t.join()
        if errors:
            raise errors[0]
        for r in results:
            assert r is not None
            yield r

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._ray is not None:
            if self._owns_ray:
                self._ray.shutdown()
            self._ray = None

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
