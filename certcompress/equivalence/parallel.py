"""Parallel bounding of a round's regions: a process pool on this machine (``"local"``)
or Ray tasks (``"ray"``). Only the chain pair (plain tensors) and the regions travel;
the search itself stays in the calling process, so its rounds, and hence the verdict,
are the same on every executor and any number of workers."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
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


def _init(chain: ChainPair, mode: str, optimize: int = 0) -> None:
    global _CHAIN, _MODE, _OPTIMIZE
    torch.set_num_threads(1)
    _CHAIN = chain
    _MODE = mode
    _OPTIMIZE = optimize


def _ready() -> None:
    """A no-op task: submitting one per worker starts the workers (each imports torch and
    the package, seconds) while the search bounds its root region."""


def _work(job: Job) -> tuple[Tensor, Tensor, Pre]:
    assert _CHAIN is not None
    return bound_chunk(_CHAIN, *job, intermediate=_MODE, optimize=_OPTIMIZE)


def _ray_work(chain: ChainPair, mode: str, optimize: int, job: Job
              ) -> tuple[Tensor, Tensor, Pre]:
    torch.set_num_threads(1)
    return bound_chunk(chain, *job, intermediate=mode, optimize=optimize)


class Pool:
    """Bounds chunks of regions on ``workers`` processes (``"local"``) or Ray CPUs
    (``"ray"``); :meth:`map` yields the results in the jobs' order."""

    def __init__(self, kind: str, chain: ChainPair, workers: int | None = None,
                 intermediate: str = "crown", optimize: int = 0) -> None:
        self.kind = kind
        self.mode = intermediate
        self.optimize = optimize
        self.workers = max(1, workers or os.cpu_count() or 1)
        self._pool: ProcessPoolExecutor | None = None
        self._ray: Any = None
        if kind == "local":
            ctx = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init,
                                             initargs=(chain, intermediate, optimize))
            # the pool starts its processes on demand: start them all now
            for _ in range(self.workers):
                self._pool.submit(_ready)
        elif kind == "ray":
            try:
                import ray
            except ImportError:
                raise ConfigurationError("executor='ray' needs Ray: pip install 'ray[default]'"
                                         ) from None
            if not ray.is_initialized():
                ray.init(num_cpus=self.workers, include_dashboard=False,
                         log_to_driver=False, ignore_reinit_error=True)
                self._owns_ray = True
            else:
                self._owns_ray = False
            self._ray = ray
            self._fn = ray.remote(num_cpus=1)(_ray_work)
            self._chain_ref = ray.put(chain)
        else:
            raise ConfigurationError(f"executor {kind!r} is unknown; use None, 'serial', "
                                     "'local' or 'ray'")

    def map(self, jobs: list[Job]) -> Iterator[tuple[Tensor, Tensor, Pre]]:
        if self._pool is not None:
            yield from self._pool.map(_work, jobs)
            return
        ray = self._ray
        refs = [self._fn.remote(self._chain_ref, self.mode, self.optimize, job) for job in jobs]
        yield from ray.get(refs)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._ray is not None:
            if getattr(self, "_owns_ray", False):
                self._ray.shutdown()
            self._ray = None

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
