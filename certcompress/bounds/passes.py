"""The two engine passes over a graph, defined once per IR node kind.

``MagnitudePass`` (docs/path-metrics.md, section 4): feed all-ones inputs through every op's
absolute-weight map with non-negative parameters ``P``. The output at ``o`` is the sum
over paths ending at ``o`` of ``prod |theta|`` along the path, i.e. the per-output
l1 path-norm ``||Phi_o(P)||_1``; the sum over outputs is ``||Phi(P)||_1``.

``DifferencePass`` (section 4, numerics): for non-negative ``lo <= hi`` coordinate-wise,
propagate ``a = Phi-norm(lo)`` and ``d = Phi-norm(hi) - Phi-norm(lo)`` together, never
subtracting two large numbers: for a parametric node with ``W_hi = W_lo + dW``,
``a' = A_{W_lo}(a) + b_lo`` and ``d' = A_{W_lo}(d) + A_{dW}(a + d) + db``; every term is
non-negative. For a fixed op (same weights in both) ``d' = L(d)`` (its linear part).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ..ir.graph import Graph, GraphInterpreter, IRNode
from ..ir.ops import AffineOp, AffineParams, IROp
from .numerics import (
    ABS_SLACK,
    Scaled,
    align,
    float_slack,
    renormalize,
    rescale_exponent,
    scale_down,
)

__all__ = ["MagnitudePass", "DifferencePass", "graph_float_slack", "ones_input"]


def ones_input(graph: Graph) -> Scaled:
    return Scaled(torch.ones(graph.input_shape, dtype=torch.float64))


def _fixed(op: IROp, xs: list[Tensor], exp: int, constants: bool) -> Tensor:
    """A fixed op's magnitude map on tensors scaled by ``2**exp``.

    ``magnitude`` is affine in its inputs (a linear part plus the op's constant terms),
    so on scaled inputs the constant part, ``magnitude(0, constants=True)``, is scaled
    down separately. This holds for every op, built-in or from a plugin, without
    knowing which ops have constants (for one without, the constant part is zero).
    """
    if not constants or exp == 0:
        return op.magnitude(xs, None, constants)
    linear = op.magnitude(xs, None, False)
    const = op.magnitude([torch.zeros_like(x) for x in xs], None, True)
    return linear + scale_down(const, exp)


def _bias(b: Tensor, exp: int) -> Tensor:
    """A bias seen from a tensor scaled by ``2**exp`` (``exp >= 0``)."""
    return scale_down(b, exp) if exp else b


class MagnitudePass(GraphInterpreter[Scaled]):
    """Per-node ``||Phi_v(P)||_1`` for non-negative parameters ``params``."""

    def __init__(self, graph: Graph, params: Mapping[str, AffineParams]) -> None:
        super().__init__(graph)
        self.params = params

    def run_node(self, node: IRNode, inputs: list[Scaled]) -> Scaled:
        op = node.op
        assert op is not None
        if isinstance(op, AffineOp):
            p = self.params[node.name]
            x = inputs[0]
            b = None if p.bias is None else _bias(p.bias, x.exp)
            return renormalize(Scaled(op.apply(x.t, p.weight, b), x.exp), node.name)
        ts, e = align(inputs) if len(inputs) > 1 else ([inputs[0].t], inputs[0].exp)
        return renormalize(Scaled(_fixed(op, ts, e, True), e), node.name)

    def run(self) -> list[Scaled]:
        return self.run_values(ones_input(self.graph))


class DifferencePass(GraphInterpreter[tuple[Scaled, Scaled]]):
    """Per-node ``(Phi-norm(lo), Phi-norm(hi) - Phi-norm(lo))`` without subtraction.

    ``lo`` and ``d = hi - lo`` (coordinate-wise, non-negative) are given per parametric
    node; ``a`` and ``d`` of a node share one exponent.
    """

    def __init__(self, graph: Graph, lo: Mapping[str, AffineParams],
                 delta: Mapping[str, AffineParams]) -> None:
        super().__init__(graph)
        self.lo = lo
        self.delta = delta

    def run_node(self, node: IRNode, inputs: list[tuple[Scaled, Scaled]]) -> tuple[Scaled, Scaled]:
        op = node.op
        assert op is not None
        if isinstance(op, AffineOp):
            (a, d) = inputs[0]
            e = a.exp
            lo, dp = self.lo[node.name], self.delta[node.name]
            d_out: Tensor | None
            if bool(d.t.any()):
                a_out, d_out = op.apply_many([a.t, d.t], lo.weight)
                hi_in = a.t + d.t
            else:  # nothing changed upstream: A_lo(0) = 0 exactly, and a + d = a
                a_out, d_out, hi_in = op.apply(a.t, lo.weight, None), None, a.t
            if lo.bias is not None:
                a_out = op.add_bias(a_out, _bias(lo.bias, e))
            if bool(dp.weight.any()) or (dp.bias is not None and bool(dp.bias.any())):
                db = None if dp.bias is None else _bias(dp.bias, e)
                term = op.apply(hi_in, dp.weight, db)
                d_out = term if d_out is None else d_out + term
            if d_out is None:
                d_out = torch.zeros_like(a_out)
            return self._renorm(a_out, d_out, e, node.name)
        if len(inputs) > 1:
            ts, e = align([x for pair in inputs for x in pair])
            a_ts, d_ts = ts[0::2], ts[1::2]
        else:
            (a, d), e = inputs[0], inputs[0][0].exp
            a_ts, d_ts = [a.t], [d.t]
        return self._renorm(_fixed(op, a_ts, e, True), op.magnitude(d_ts, None, False), e,
                            node.name)

    @staticmethod
    def _renorm(a: Tensor, d: Tensor, e: int, where: str) -> tuple[Scaled, Scaled]:
        k = rescale_exponent(a, d, where=where)
        if k:
            a, d = scale_down(a, k), scale_down(d, k)
        return Scaled(a, e + k), Scaled(d, e + k)

    def run(self) -> list[tuple[Scaled, Scaled]]:
        x = ones_input(self.graph)
        return self.run_values((x, Scaled(torch.zeros_like(x.t))))


def graph_float_slack(graph: Graph, difference: bool) -> tuple[float, float]:
    """``(relative, absolute)`` slack for a pass over ``graph`` (see ``numerics``)."""
    max_terms = 2
    for node in graph.nodes[1:]:
        op = node.op
        if isinstance(op, AffineOp):
            p = graph.params[node.name]
            out_ch = max(1, op.out_channels(p))
            k = p.weight.numel() // out_ch + 1
            if getattr(op, "transposed", False):
                k = p.weight.numel() // max(1, p.weight.shape[1]) + 1
        else:
            ins = [graph.node(i) for i in node.inputs]
            in_numel = sum(_numel(i.shape) for i in ins)
            k = max(1, in_numel // max(1, _numel(node.shape))) * 2 + 8 + len(ins)
        max_terms = max(max_terms, (2 * k + 3) if difference else k)
    rel = float_slack(max_terms, len(graph.nodes))
    return rel, ABS_SLACK * len(graph.nodes)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
