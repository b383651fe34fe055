"""torch's intra-op thread count for a block of many small products."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

__all__ = ["one_thread"]

# torch's thread count is a process-wide setting plus each thread's own OpenMP count;
# torch.set_num_threads sets both, and a thread's first torch.get_num_threads (or first
# parallel op) copies the process-wide one into its own. Blocks that overlap in several
# threads must not each save what the others set: the count from before the first block
# is restored by each thread as it leaves its outermost block, and every thread reads its
# count before setting 1 (so a later restore elsewhere does not overwrite its 1 while it
# is still inside); the process ends where it began.
_lock = threading.Lock()
_active = 0  # threads inside a block
_original = 0  # the count before the first of them entered
_depth = threading.local()  # this thread's nesting depth


@contextlib.contextmanager
def one_thread(enabled: bool = True) -> Iterator[None]:
    """Run the block on one torch thread (restored after, also on error; nested blocks
    and blocks in several threads at once restore the count from before the first).
    Bounding many small regions is many small matrix products: one thread is faster,
    and much faster on a busy machine, where extra threads wait for each other
    (docs/equivalence.md)."""
    global _active, _original
    if not enabled:
        yield
        return
    with _lock:
        depth = getattr(_depth, "n", 0)
        current = torch.get_num_threads()  # also fixes this thread's own count
        if depth == 0:
            if _active == 0:
                _original = current
            _active += 1
        _depth.n = depth + 1
        torch.set_num_threads(1)
    try:
        yield
    finally:
        with _lock:
            _depth.n -= 1
            if _depth.n == 0:
                _active -= 1
                torch.set_num_threads(_original)
