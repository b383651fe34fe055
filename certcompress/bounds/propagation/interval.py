"""Interval propagation (IBP) of the pair: bounds on ``z`` (the original network's value
at a node), ``c`` (the compressed network's) and their difference ``d = z - c``.

Every tensor has a leading problem dimension ``P`` then the node's per-problem shape.
The values here are shared by every pass; the per-kind rules (affine, fixed linear,
ReLU, input) are the ``interval`` methods of :mod:`.rules`. The input's bounds are
``z = c = [l, u]``, ``d = [0, 0]``; the ReLU's (:func:`relu_interval`, also used by the
chain pass): monotone on ``z`` and ``c``; ``d' = ReLU(z) - ReLU(c)`` lies between
``min(d, 0)`` and ``max(d, 0)`` and in ``[ReLU(l_z) - ReLU(u_c), ReLU(u_z) - ReLU(l_c)]``,
and equals ``d`` where both are active.

After each node the three intervals are made consistent (``d`` within ``z - c``, ``z``
within ``c + d``, ``c`` within ``z - d``). ``magnitude`` propagates the same quantities on
absolute values (``|W| M + |b|``); the rounding margin is proportional to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ...errors import SoundnessError

__all__ = ["PairBounds", "Magnitude", "input_bounds", "relu_interval", "make_consistent",
           "intersect_difference",
           "widen"]


@dataclass(frozen=True)
class PairBounds:
    """Elementwise bounds at one node: ``zl <= z <= zu``, ``cl <= c <= cu``,
    ``dl <= d <= du`` (each ``(P, *shape)``, float64)."""

    zl: Tensor
    zu: Tensor
    cl: Tensor
    cu: Tensor
    dl: Tensor
    du: Tensor

    def intersect(self, other: PairBounds) -> PairBounds:
        return PairBounds(torch.maximum(self.zl, other.zl), torch.minimum(self.zu, other.zu),
                          torch.maximum(self.cl, other.cl), torch.minimum(self.cu, other.cu),
                          torch.maximum(self.dl, other.dl), torch.minimum(self.du, other.du))

    def dev(self) -> Tensor:
        """``max |d|`` elementwise."""
        return torch.maximum(self.du, -self.dl)


@dataclass(frozen=True)
class Magnitude:
    """``mz >= |z|`` and ``mc >= |c|`` computed on absolute values (every term of every
    sum that produced a bound at the node is at most this large, up to the factor the
    rounding margin states)."""

    mz: Tensor
    mc: Tensor


def input_bounds(lower: Tensor, upper: Tensor) -> tuple[PairBounds, Magnitude]:
    zero = torch.zeros_like(lower)
    m = torch.maximum(lower.abs(), upper.abs())
    return PairBounds(lower, upper, lower, upper, zero, zero.clone()), Magnitude(m, m)


def relu_interval(b: PairBounds) -> PairBounds:
    """Interval bounds after a ReLU on both networks, the difference through it included."""
    zl, zu, cl, cu = b.zl.clamp(min=0), b.zu.clamp(min=0), b.cl.clamp(min=0), b.cu.clamp(min=0)
    dl = torch.maximum(b.dl.clamp(max=0), zl - cu)
    du = torch.minimum(b.du.clamp(min=0), zu - cl)
    both = (b.zl >= 0) & (b.cl >= 0)
    dl = torch.where(both, torch.maximum(dl, b.dl), dl)
    du = torch.where(both, torch.minimum(du, b.du), du)
    return PairBounds(zl, zu, cl, cu, dl, du)


def widen(b: PairBounds, m: Magnitude, eta: float, floor: float = 0.0) -> PairBounds:
    """Push every bound outward by ``eta`` times the magnitude plus the absolute ``floor``
    (the rounding margin: relative for rounding, absolute for underflow)."""
    if eta == 0.0 and floor == 0.0:
        return b
    ez, ec = eta * m.mz + floor, eta * m.mc + floor
    ed = ez + ec
    return PairBounds(b.zl - ez, b.zu + ez, b.cl - ec, b.cu + ec, b.dl - ed, b.du + ed)


def intersect_difference(b: PairBounds) -> PairBounds:
    """Each of the ``z``, ``c`` and ``d = z - c`` intervals within what the other two
    allow (the intervals may come out empty: the caller decides what that means)."""
    dl = torch.maximum(b.dl, b.zl - b.cu)
    du = torch.minimum(b.du, b.zu - b.cl)
    zl = torch.maximum(b.zl, b.cl + dl)
    zu = torch.minimum(b.zu, b.cu + du)
    cl = torch.maximum(b.cl, b.zl - du)
    cu = torch.minimum(b.cu, b.zu - dl)
    return PairBounds(zl, zu, cl, cu, dl, du)


def make_consistent(b: PairBounds, where: str) -> PairBounds:
    """Intersect with ``d = z - c`` (:func:`intersect_difference`). An empty interval can
    only come from a bug: it raises :class:`SoundnessError`."""
    out = intersect_difference(b)
    zl, zu, cl, cu, dl, du = out.zl, out.zu, out.cl, out.cu, out.dl, out.du
    for lo, hi, name in ((zl, zu, "z"), (cl, cu, "c"), (dl, du, "d")):
        if bool((lo > hi).any()):
            i = int((lo - hi).argmax())
            raise SoundnessError(
                f"empty bound interval for {name} at '{where}' (element {i}: "
                f"{float(lo.reshape(-1)[i])!r} > {float(hi.reshape(-1)[i])!r}): a bug in the "
                "bound propagation; please report it with the models")
    return out
