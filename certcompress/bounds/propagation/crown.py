"""Back-substitution (CROWN/DeepPoly): upper bounds of linear forms of the pair.

A *form* at node ``v`` is ``<L_z, z_v> + <L_d, d_v> + const``: ``z`` is the original
network's value, ``d = z - c`` the difference to the compressed network's value ``c``
(a form of the compressed network alone is ``L_z = L``, ``L_d = -L``). Each ``L`` has a
leading row dimension (one form per row). Going backward through the nodes in reverse
topological order, each node rewrites the form at its output as a form at its inputs:

* affine: ``z = W z_in + b`` and ``d = W' d_in + (W - W') z_in + (b - b')`` (exact), so
  ``L_z -> W^T L_z + (W - W')^T L_d`` and ``L_d -> W'^T L_d`` (transposes are
  vector-Jacobian products);
* fixed linear ``L``: ``L^T`` on both, the constant on ``z`` only;
* ReLU: an upper bound from the relaxation (``relax.relu_backward``);
* input: ``z = x`` in the row's box and ``d = 0``: the form's maximum over the box is
  ``const + <L_z, mid> + <|L_z|, rad>``.

Rows belong to problems (``prob[r]``) when there are several input boxes.

Early concretization: whenever every pending form sits at one node ``i`` (a cut of the
graph), the form's maximum over node ``i``'s interval bounds is also an upper bound;
with ``bounds`` given, the result is the smaller of that and the full back-substitution,
row by row (back-substituting further is not always tighter than stopping at a node
whose intervals are already tight). Over ``(z, d)`` and, rewritten with ``z = c + d``,
over ``(c, d)``; the smaller of the two.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .interval import PairBounds
from .primitives import PAffine, PairNet, PInput, PLinear, PPerturb, PReLU
from .relax import ReluRelaxation, relu_backward

__all__ = ["Form", "backsubstitute", "SplitParams"]

SplitParams = Mapping[int, Mapping[str, Tensor]]  # node -> {"theta", "alpha_z", "alpha_c"}


@dataclass
class Form:
    """Coefficients ``coef[q]`` (``q`` in ``z``, ``d``) of shape ``(R, *shape)`` and a
    constant ``(R,)``."""

    coef: dict[str, Tensor]
    const: Tensor

    def add(self, q: str, t: Tensor | None) -> None:
        if t is not None:
            self.coef[q] = self.coef[q] + t if q in self.coef else t


def _dot(coef: Tensor, t: Tensor) -> Tensor:
    """``<coef[r], t>`` per row; ``t`` is ``shape`` or ``(R or 1, *shape)``."""
    return (coef * t).reshape(coef.shape[0], -1).sum(1)


def _affine_step(node: PAffine, form: Form, out: Form) -> None:
    lz, ld = form.coef.get("z"), form.coef.get("d")
    if lz is not None:
        out.add("z", node.t_w(lz)[0])
        out.const = out.const + _dot(lz, node.bias)
    if ld is not None:
        if node.changed:
            out.add("d", node.t_wc(ld)[0])
            out.add("z", node.t_dw(ld)[0])
            out.const = out.const + _dot(ld, node.dbias)
        else:
            out.add("d", node.t_w(ld)[0])


def _box_max(coef: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """``max <coef[r], t>`` over ``lo <= t <= hi`` per row."""
    return _dot(coef.clamp(min=0), hi) + _dot(coef.clamp(max=0), lo)


def concretize(form: Form, b: PairBounds, prob: Tensor | None) -> Tensor:
    """Upper bound ``(R,)`` of ``form`` (at a node with interval bounds ``b``) over those
    intervals: the smaller of the ``(z, d)`` and the ``(c, d)`` readings."""
    def rows(t: Tensor) -> Tensor:
        return t if prob is None else t[prob]

    lz, ld = form.coef.get("z"), form.coef.get("d")
    zl, zu, cl, cu, dl, du = (rows(t) for t in (b.zl, b.zu, b.cl, b.cu, b.dl, b.du))
    v1 = form.const + (0 if lz is None else _box_max(lz, zl, zu)) + \
        (0 if ld is None else _box_max(ld, dl, du))
    if lz is None:
        return v1
    ld2 = lz if ld is None else lz + ld
    v2 = form.const + _box_max(lz, cl, cu) + _box_max(ld2, dl, du)
    return torch.minimum(v1, v2)


def backsubstitute(pair: PairNet, start: Mapping[int, Form],
                   relax: Mapping[int, ReluRelaxation], lower: Tensor, upper: Tensor,
                   prob: Tensor | None, params: SplitParams | None = None,
                   bounds: Sequence[PairBounds] | None = None) -> Tensor:
    """Upper bounds ``(R,)`` of the forms ``start`` (at one or more nodes, the same rows)
    over the input boxes ``lower``/``upper`` (``(P, *input_shape)``). ``params[node]``
    optionally gives per-row ``theta``, ``alpha_z``, ``alpha_c`` at a ReLU node.
    ``bounds`` (every node's interval bounds) enables early concretization at cuts."""
    pending: dict[int, Form] = {k: Form(dict(f.coef), f.const) for k, f in start.items()}
    total: Tensor | None = None
    early: Tensor | None = None
    for i in range(max(pending), -1, -1):
        if bounds is not None and len(pending) == 1 and i in pending and i > 0 \
                and i < len(bounds):
            v = concretize(pending[i], bounds[i], prob)
            early = v if early is None else torch.minimum(early, v)
        form = pending.pop(i, None)
        if form is None:
            continue
        node = pair.nodes[i]
        if isinstance(node, PInput):
            value = form.const
            lx = form.coef.get("z")
            if lx is not None:
                mid = (lower + upper) * 0.5
                rad = (upper - lower) * 0.5
                if prob is not None:
                    mid, rad = mid[prob], rad[prob]
                value = value + _dot(lx, mid) + _dot(lx.abs(), rad)
            total = value
            continue
        if isinstance(node, PReLU):
            out = _take(pending, node.inputs[0], form.const)
            p = None if params is None else params.get(i)
            cz, cd, const = relu_backward(
                relax[i], form.coef.get("z"), form.coef.get("d"), prob,
                None if p is None else p.get("theta"),
                None if p is None else p.get("alpha_z"),
                None if p is None else p.get("alpha_c"))
            out.add("z", cz)
            out.add("d", cd)
            out.const = out.const + const
            continue
        if isinstance(node, PAffine):
            out = _take(pending, node.inputs[0], form.const)
            _affine_step(node, form, out)
            continue
        if isinstance(node, PPerturb):
            # z_out = z + e_z, d_out = d + e_z - e_c: the form passes through and gains
            # max over e of (lz + ld) e_z - ld e_c = |lz + ld| delta_z + |ld| delta_c
            lz, ld = form.coef.get("z"), form.coef.get("d")
            const = form.const
            lzd = lz if ld is None else (ld if lz is None else lz + ld)
            if lzd is not None:
                const = const + _dot(lzd.abs(), node.delta_z.expand(node.shape))
            if ld is not None:
                const = const + _dot(ld.abs(), node.delta_c.expand(node.shape))
            out = _take(pending, node.inputs[0], const)
            out.add("z", lz)
            out.add("d", ld)
            continue
        if isinstance(node, PLinear):
            outs = [_take(pending, j, None) for j in node.inputs]
            const = form.const
            for q, lam in form.coef.items():
                for o, part in zip(outs, node.transpose(lam)):
                    o.add(q, part)
                if q == "z" and node.const is not None:
                    const = const + _dot(lam, node.const_out())
            outs[0].const = outs[0].const + const
            continue
        raise TypeError(f"no back-substitution rule for {type(node).__name__}")
    if total is None:
        raise RuntimeError("back-substitution did not reach the input")
    return total if early is None else torch.minimum(total, early)


def _take(pending: dict[int, Form], j: int, const: Tensor | None) -> Form:
    """The form accumulating at node ``j`` (created on first use); ``const`` is moved
    into it (each form's constant travels down to the input exactly once)."""
    f = pending.get(j)
    if f is None:
        f = Form({}, torch.zeros((), dtype=torch.float64) if const is None else const)
        pending[j] = f
    elif const is not None:
        f.const = f.const + const
    return f
