"""Activation quantization in the path-metric tier (docs/quantization.md, "Activation
quantization").

Let ``f`` be the original network and ``f_q`` the compressed one, whose activation
quantizers ``Q_1, ..., Q_K`` (topological order) compute ``Q_k(u) = clamp(u, lo_k, hi_k)
+ e_k`` with ``|e_k| <= delta_k``. With ``f_w`` the compressed network with every
quantizer removed (weights changed only) and ``h_k`` the one with ``Q_1..Q_k`` applied,

``||f - f_q||_1 <= ||f - f_w||_1 + sum_k ||h_{k-1} - h_k||_1``.

``h_{k-1}`` and ``h_k`` differ only at ``Q_k``, whose output moves by at most
``err_k = delta_k + clip_k`` per element, and downstream of it both are the fixed
network ``g_k`` (compressed weights, later quantizers absent), so
``||h_{k-1}(x) - h_k(x)||_1 <= sum_o (|G_k| err_k)_o``: the absolute-weight map of the
suffix ``g_k`` (its per-element Lipschitz factor: every path from the neuron to the
outputs, product of absolute weights) applied to ``err_k``. The clipping term
``clip_k = max(0, M_k - hi_k, M_k + lo_k)`` uses ``M_k >= |u|``, a magnitude bound of
the quantizer's input over ``||x||_inf <= r`` (quantizers before ``k`` applied); with
ranges that cover every reachable value the bounds tier proves it zero, this tier only
when ``M_k`` stays inside the range. The suffix maps of all quantizers are linear, so
one pass computes the whole sum: at every quantizer node, add ``err_k`` to the
propagated value.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor

from ..errors import NumericalRangeError
from ..ir.graph import Graph
from ..ir.ops import ActQuantOp, AffineOp

__all__ = ["quantizer_nodes", "without_quantizers", "activation_term"]


def quantizer_nodes(graph: Graph) -> list[str]:
    """Names of the enabled activation quantizers of ``graph``."""
    return [n.name for n in graph.nodes if isinstance(n.op, ActQuantOp) and n.op.enabled]


def without_quantizers(graph: Graph) -> Graph:
    """``graph`` with every activation quantizer disabled (the identity)."""
    if not quantizer_nodes(graph):
        return graph
    nodes = tuple(replace(n, op=replace(n.op, enabled=False))
                  if isinstance(n.op, ActQuantOp) else n for n in graph.nodes)
    return replace(graph, nodes=nodes)


def activation_term(graph: Graph, radius: float, rel: float) -> np.ndarray:
    """Per-output upper bound of ``sum_k ||h_{k-1}(x) - h_k(x)||`` over
    ``||x||_inf <= radius`` (module docstring) for ``graph``'s quantizers; ``rel`` is the
    relative float64 rounding slack of one pass over the graph (applied at every node to
    the magnitudes, and once to the result)."""
    up = 1.0 + rel
    mags: dict[str, Tensor] = {}
    sens: dict[str, Tensor] = {}
    with torch.no_grad():
        for n in graph.nodes:
            if n.op is None:
                mags[n.name] = torch.full(n.shape, float(radius), dtype=torch.float64)
                sens[n.name] = torch.zeros(n.shape, dtype=torch.float64)
                continue
            op = n.op
            ms = [mags[i] for i in n.inputs]
            ss = [sens[i] for i in n.inputs]
            if isinstance(op, ActQuantOp):
                m, s = ms[0], ss[0]
                if op.enabled:
                    lo, hi = float(op.lower), float(op.upper)
                    big = max(abs(lo), abs(hi))
                    inner = torch.clamp(m, max=big) if lo <= 0.0 <= hi else torch.full_like(m, big)
                    clip = torch.clamp(torch.maximum(m - hi, m + lo), min=0.0)
                    err = (clip + op.delta) * up
                    m, s = (inner + op.delta) * up, s + err
            elif isinstance(op, AffineOp):
                p = graph.params[n.name]
                wa = p.weight.abs()
                m = op.apply(ms[0], wa, None if p.bias is None else p.bias.abs())
                s = op.apply(ss[0], wa, None)
            else:
                m = op.magnitude(ms, None, True)
                s = op.magnitude(ss, None, False)
            mags[n.name] = m * up
            sens[n.name] = s * up
    out = torch.cat([sens[o].reshape(-1) for o in graph.outputs]).numpy() * up
    if not np.all(np.isfinite(out)):
        raise NumericalRangeError(
            "the activation-rounding term of the path-metric tier overflows float64; "
            "certify over a smaller domain or use the bounds tier")
    return np.nextafter(out, math.inf)
