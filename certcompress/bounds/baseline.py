"""The rescaling-dependent layerwise operator-norm baseline (docs/path-metrics.md, section 7).

For a layered network (a chain of affine maps and 1-Lipschitz, zero-preserving fixed
ops), with biases carried as an extra input coordinate (augmented matrices
``[[W, b], [0, 1]]``, whose ``inf -> inf`` norm is ``max(max_i sum_j |W_ij| + |b_i|, 1)``),
telescoping gives

    ||R(x) - R'(x)||_inf <= sum_l (prod_{k>l} ||A'_k||) ||A_l - A'_l|| (prod_{k<l} ||A_k||)
                             * max(||x||_inf, 1).

It changes under neuron rescaling, the path-metric does not; certcompress reports both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..ir.graph import Graph
from ..ir.ops import (
    AffineOp,
    AffineParams,
    ClampOp,
    FixedLinearOp,
    IndexOp,
    LeakyReLUOp,
    LinearCombinationOp,
    MaxPoolOp,
    ReLUOp,
)

__all__ = ["Baseline", "operator_norm_baseline"]


@dataclass(frozen=True)
class Baseline:
    """``bound_linf`` (before the ``max(r, 1)`` factor) or None with ``note`` saying why."""

    bound_linf: float | None
    note: str


def _op_norm(op: AffineOp, p: AffineParams, in_shape: tuple[int, ...]) -> float:
    ones = torch.ones(in_shape, dtype=torch.float64)
    w = p.weight.abs()
    b = None if p.bias is None else p.bias.abs()
    rows = op.apply(ones, w, b)
    return max(float(rows.max()) if rows.numel() else 0.0, 1.0)


def _diff_norm(op: AffineOp, p: AffineParams, q: AffineParams, in_shape: tuple[int, ...]) -> float:
    ones = torch.ones(in_shape, dtype=torch.float64)
    w = (p.weight - q.weight).abs()
    b = None if p.bias is None or q.bias is None else (p.bias - q.bias).abs()
    rows = op.apply(ones, w, b)
    return float(rows.max()) if rows.numel() else 0.0


def _lipschitz(graph: Graph, name: str) -> float | None:
    """linf Lipschitz constant of a fixed op that maps 0 to 0, or None."""
    node = graph.node(name)
    op = node.op
    if isinstance(op, (ReLUOp, MaxPoolOp, IndexOp)):
        return 1.0
    if isinstance(op, ClampOp):
        lo, hi = op.lower, op.upper
        ok = (lo is None or lo <= 0) and (hi is None or hi >= 0)
        return 1.0 if ok else None
    if isinstance(op, LeakyReLUOp):
        return max(1.0, abs(op.negative_slope))
    if isinstance(op, LinearCombinationOp) and len(op.coefficients) == 1 and op.const == 0:
        return abs(op.coefficients[0])
    if isinstance(op, FixedLinearOp):
        ones = torch.ones(graph.node(node.inputs[0]).shape, dtype=torch.float64)
        return float(op.forward([ones], None).max())
    return None


def operator_norm_baseline(graph: Graph, other: Graph) -> Baseline:
    """The telescoping bound between ``graph`` (original) and ``other`` (compressed)."""
    if not graph.is_layered():
        return Baseline(None, "not a layered network (skip connections or concatenation): "
                              "the layerwise telescoping bound does not apply")
    # Chain of factors: ("affine", A, A', diff) or ("fixed", L)
    orig_norms: list[float] = []
    comp_norms: list[float] = []
    diffs: list[float] = []
    for node in graph.nodes[1:]:
        if isinstance(node.op, AffineOp):
            in_shape = graph.node(node.inputs[0]).shape
            p, q = graph.params[node.name], other.params[node.name]
            orig_norms.append(_op_norm(node.op, p, in_shape))
            comp_norms.append(_op_norm(node.op, q, in_shape))
            diffs.append(_diff_norm(node.op, p, q, in_shape))
        else:
            lip = _lipschitz(graph, node.name)
            if lip is None:
                return Baseline(None, f"node '{node.name}' ({node.op.describe() if node.op else ''})"
                                      " is not a 1-Lipschitz zero-preserving map")
            orig_norms.append(max(lip, 1.0))
            comp_norms.append(max(lip, 1.0))
            diffs.append(0.0)
    total = 0.0
    n = len(diffs)
    for i in range(n):
        if diffs[i] == 0.0:
            continue
        after = math.prod(comp_norms[i + 1:])
        before = math.prod(orig_norms[:i])
        total += after * diffs[i] * before
    return Baseline(total, "layerwise inf->inf operator norms with augmented bias coordinate")
