"""One BLAS / torch thread for the mean-field tests: their matrices are small, and on a
shared or loaded machine multi-threaded BLAS on them is many times slower (the same
reason mf.designed_sweep and mf.sweep run single-threaded)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from threadpoolctl import threadpool_limits


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(before)
