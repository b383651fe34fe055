"""Fixtures of the scale-out tests: a fresh zoo directory per test and one local process
pool for the whole session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from scale_zoo import Zoo, write_zoo

from certcompress.scale import LocalExecutor


@pytest.fixture()
def zoo(tmp_path: Path) -> Zoo:
    """A fresh zoo per test (counters and crash markers start empty)."""
    return write_zoo(tmp_path / "zoo")


@pytest.fixture(scope="session")
def local_pool() -> Iterator[LocalExecutor]:
    """One two-process pool for every test (its workers start once, in about 5-10 s)."""
    with LocalExecutor(workers=2) as pool:
        yield pool
