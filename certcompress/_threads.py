"""torch's intra-op thread count for a block of many small products."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["one_thread"]


@contextlib.contextmanager
def one_thread(enabled: bool = True) -> Iterator[None]:
    """Run the block on one torch thread (restored after, also on error). Bounding many
    small regions is many small matrix products: one thread is faster, and much faster on
    a busy machine, where extra threads wait for each other (docs/equivalence.md)."""
    if not enabled:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
