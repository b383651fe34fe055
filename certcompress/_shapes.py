"""Shape arithmetic in plain Python.

``torch.broadcast_shapes`` imports torch's symbolic-shape machinery (sympy) on its first
call, a large part of a command's start-up; the tracer and the input domain broadcast
concrete shapes only, which needs none of it."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["broadcast_shapes"]


def broadcast_shapes(*shapes: Sequence[int]) -> tuple[int, ...]:
    """The shape the given shapes broadcast to (NumPy's and torch's rules); a
    ``ValueError`` naming the shapes when they do not broadcast."""
    rank = max((len(s) for s in shapes), default=0)
    out = [1] * rank
    for shape in shapes:
        for i, d in enumerate(shape, start=rank - len(shape)):
            d = int(d)
            if d < 0:
                raise ValueError(f"negative dimension in shape {tuple(shape)}")
            if out[i] == 1:
                out[i] = d
            elif d != 1 and d != out[i]:
                raise ValueError(f"shapes {', '.join(str(tuple(s)) for s in shapes)} do not "
                                 "broadcast")
    return tuple(out)
