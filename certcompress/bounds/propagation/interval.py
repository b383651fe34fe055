"""Interval propagation (IBP) of the pair: bounds on ``z`` (the original network's value
at a node), ``c`` (the compressed network's) and their difference ``d = z - c``.

Every tensor has a leading problem dimension ``P`` then the node's per-problem shape.
Rules, one per primitive kind:

* input: ``z = c = [l, u]``, ``d = [0, 0]``;
* affine: center/radius form, ``z``: ``W m + b`` and ``|W| r``; the difference in both
  exact forms ``W z - W' c + (b - b') = W' d + (W - W') z + db = W d + (W - W') c + db``,
  intersected (the ReluDiff idea: ``d`` is propagated, not recomputed from ``z`` and ``c``);
* fixed linear map ``L``: ``L m + const`` and ``|L| r``; ``d`` without the constant;
* perturbation ``|e_z| <= delta_z``, ``|e_c| <= delta_c``: ``z`` and ``c`` widened by
  their delta, ``d`` by the sum;
* ReLU: monotone on ``z`` and ``c``; ``d' = ReLU(z) - ReLU(c)`` lies between
  ``min(d, 0)`` and ``max(d, 0)`` and in ``[ReLU(l_z) - ReLU(u_c), ReLU(u_z) - ReLU(l_c)]``,
  and equals ``d`` where both are active.

After each node the three intervals are made consistent (``d`` within ``z - c``, ``z``
within ``c + d``, ``c`` within ``z - d``). ``magnitude`` propagates the same quantities on
absolute values (``|W| M + |b|``); the rounding margin is proportional to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ...errors import SoundnessError
from .primitives import PAffine, PInput, PLinear, PNode, PPerturb, PReLU

__all__ = ["PairBounds", "Magnitude", "input_bounds", "propagate_node", "magnitude_node",
           "relu_interval",
           "make_consistent", "widen"]


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


def _mid_rad(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    return (lo + hi) * 0.5, (hi - lo) * 0.5


def input_bounds(lower: Tensor, upper: Tensor) -> tuple[PairBounds, Magnitude]:
    zero = torch.zeros_like(lower)
    m = torch.maximum(lower.abs(), upper.abs())
    return PairBounds(lower, upper, lower, upper, zero, zero.clone()), Magnitude(m, m)


def _affine(node: PAffine, b: PairBounds) -> PairBounds:
    mz, rz = _mid_rad(b.zl, b.zu)
    mc, rc = _mid_rad(b.cl, b.cu)
    md, rd = _mid_rad(b.dl, b.du)
    ez, ec = node.apply(mz, node.w) + node.bias, node.apply(mc, node.wc) + node.bias_c
    fz, fc = node.apply(rz, node.w_abs), node.apply(rc, node.wc_abs)
    if not node.changed:
        ed, fd = node.apply(md, node.w), node.apply(rd, node.w_abs)
        return PairBounds(ez - fz, ez + fz, ec - fc, ec + fc, ed - fd, ed + fd)
    # d' = W' d + dW z + db
    e1 = node.apply(md, node.wc) + node.apply(mz, node.dw) + node.dbias
    f1 = node.apply(rd, node.wc_abs) + node.apply(rz, node.dw_abs)
    # d' = W d + dW c + db
    e2 = node.apply(md, node.w) + node.apply(mc, node.dw) + node.dbias
    f2 = node.apply(rd, node.w_abs) + node.apply(rc, node.dw_abs)
    return PairBounds(ez - fz, ez + fz, ec - fc, ec + fc,
                      torch.maximum(e1 - f1, e2 - f2), torch.minimum(e1 + f1, e2 + f2))


def _linear(node: PLinear, bs: Sequence[PairBounds]) -> PairBounds:
    out = []
    for lo_name, hi_name, const in (("zl", "zu", True), ("cl", "cu", True), ("dl", "du", False)):
        mids, rads = zip(*(_mid_rad(getattr(b, lo_name), getattr(b, hi_name)) for b in bs))
        e = node.apply(list(mids))
        if const and node.const is not None:
            e = e + node.const
        f = node.apply_abs(list(rads))
        out.extend([e - f, e + f])
    return PairBounds(*out)


def relu_interval(b: PairBounds) -> PairBounds:
    """Interval bounds after a ReLU on both networks, the difference through it included."""
    zl, zu, cl, cu = b.zl.clamp(min=0), b.zu.clamp(min=0), b.cl.clamp(min=0), b.cu.clamp(min=0)
    dl = torch.maximum(b.dl.clamp(max=0), zl - cu)
    du = torch.minimum(b.du.clamp(min=0), zu - cl)
    both = (b.zl >= 0) & (b.cl >= 0)
    dl = torch.where(both, torch.maximum(dl, b.dl), dl)
    du = torch.where(both, torch.minimum(du, b.du), du)
    return PairBounds(zl, zu, cl, cu, dl, du)


def _envelope(b: PairBounds, src: PairBounds, groups: Tensor) -> PairBounds:
    """Intersect with the bounds of a maximum over ``groups`` of ``src``'s elements:
    ``max_g l <= max <= max_g u`` for ``z`` and ``c``, and ``max z - max c`` between the
    group's smallest and largest difference."""
    P = src.zl.shape[0]
    flat = groups.reshape(-1)

    def g(t: Tensor) -> Tensor:
        return t.reshape(P, -1)[:, flat].reshape((P,) + tuple(groups.shape))

    env = PairBounds(g(src.zl).amax(-1), g(src.zu).amax(-1), g(src.cl).amax(-1),
                     g(src.cu).amax(-1), g(src.dl).amin(-1), g(src.du).amax(-1))
    return b.intersect(env)


def propagate_node(node: PNode, inputs: Sequence[PairBounds],
                   earlier: Sequence[PairBounds] = ()) -> PairBounds:
    """Interval bounds at ``node`` from the bounds at its inputs (``earlier``: the
    bounds of every earlier node, for max-pooling envelopes)."""
    if isinstance(node, PAffine):
        return _affine(node, inputs[0])
    if isinstance(node, PLinear):
        out = _linear(node, inputs)
        if node.envelope is not None and earlier:
            out = _envelope(out, earlier[node.envelope[0]], node.envelope[1])
        return out
    if isinstance(node, PReLU):
        return relu_interval(inputs[0])
    if isinstance(node, PPerturb):
        b, ez, ec = inputs[0], node.delta_z, node.delta_c
        return PairBounds(b.zl - ez, b.zu + ez, b.cl - ec, b.cu + ec, b.dl - (ez + ec),
                          b.du + (ez + ec))
    raise TypeError(f"no interval rule for {type(node).__name__}")


def magnitude_node(node: PNode, inputs: Sequence[Magnitude]) -> Magnitude:
    if isinstance(node, PAffine):
        m = inputs[0]
        return Magnitude(node.apply(m.mz, node.w_abs) + node.bias.abs(),
                         node.apply(m.mc, node.wc_abs) + node.bias_c.abs())
    if isinstance(node, PLinear):
        c = 0.0 if node.const is None else node.const.abs()
        return Magnitude(node.apply_abs([m.mz for m in inputs]) + c,
                         node.apply_abs([m.mc for m in inputs]) + c)
    if isinstance(node, PReLU):
        return inputs[0]
    if isinstance(node, PPerturb):
        return Magnitude(inputs[0].mz + node.delta_z, inputs[0].mc + node.delta_c)
    if isinstance(node, PInput):
        raise TypeError("the input's magnitude comes from its box")
    raise TypeError(f"no magnitude rule for {type(node).__name__}")


def widen(b: PairBounds, m: Magnitude, eta: float, floor: float = 0.0) -> PairBounds:
    """Push every bound outward by ``eta`` times the magnitude plus the absolute ``floor``
    (the rounding margin: relative for rounding, absolute for underflow)."""
    if eta == 0.0 and floor == 0.0:
        return b
    ez, ec = eta * m.mz + floor, eta * m.mc + floor
    ed = ez + ec
    return PairBounds(b.zl - ez, b.zu + ez, b.cl - ec, b.cu + ec, b.dl - ed, b.du + ed)


def make_consistent(b: PairBounds, where: str) -> PairBounds:
    """Intersect with ``d = z - c`` (each interval within what the other two allow).
    An empty interval can only come from a bug: it raises :class:`SoundnessError`."""
    dl = torch.maximum(b.dl, b.zl - b.cu)
    du = torch.minimum(b.du, b.zu - b.cl)
    zl = torch.maximum(b.zl, b.cl + dl)
    zu = torch.minimum(b.zu, b.cu + du)
    cl = torch.maximum(b.cl, b.zl - du)
    cu = torch.minimum(b.cu, b.zu - dl)
    out = PairBounds(zl, zu, cl, cu, dl, du)
    for lo, hi, name in ((zl, zu, "z"), (cl, cu, "c"), (dl, du, "d")):
        if bool((lo > hi).any()):
            i = int((lo - hi).argmax())
            raise SoundnessError(
                f"empty bound interval for {name} at '{where}' (element {i}: "
                f"{float(lo.reshape(-1)[i])!r} > {float(hi.reshape(-1)[i])!r}): a bug in the "
                "bound propagation; please report it with the models")
    return out
