"""The l1 path-metric ``||Phi(theta) - Phi(theta')||_1`` between two parameter sets of
one graph (docs/path-metrics.md, sections 2-4).

* Same signs (``theta_i * theta'_i >= 0``): with ``lo = min(|theta|, |theta'|)`` and
  ``hi = max(...)`` the metric is at most ``||Phi(hi)||_1 - ||Phi(lo)||_1``, computed by
  the difference pass without subtraction. It is exact when one parameter set
  dominates the other in magnitude (pruning: every path is kept or zeroed; rounding
  toward zero).
* Mixed signs: ``theta''`` keeps ``theta`` where signs agree and is 0 elsewhere; the
  triangle inequality through ``theta''`` gives ``d(theta, theta'') + d(theta'', theta')``,
  both same-sign pairs (the first is exact).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..errors import ConfigurationError, GraphMismatchError
from ..ir.graph import Graph
from ..ir.ops import AffineParams
from .actquant import activation_term, quantizer_nodes, without_quantizers
from .numerics import opposite_signs
from .passes import DifferencePass, graph_float_slack
from .pathnorm import graph_path_norm, outputs_to_numpy

__all__ = ["PathMetric", "graph_path_metric"]

METHOD_DOMINATED = "one parameter set dominates the other in magnitude (exact)"
METHOD_MINMAX = "||Phi(max|theta|)||_1 - ||Phi(min|theta|)||_1, same signs (upper bound)"
METHOD_TRIANGLE = "triangle inequality through the sign-agreeing parameters (upper bound)"


@dataclass(frozen=True)
class PathMetric:
    """The path-metric between an original and a compressed parameter set.

    ``value`` bounds ``||Phi(theta) - Phi(theta')||_1`` from above (float slack
    included); ``exact`` says it equals the path-metric up to that slack;
    ``per_output[o]`` bounds the sum over paths ending at output ``o``.
    """

    value: float
    exact: bool
    per_output: tuple[float, ...]
    method: str
    computed: float
    sign_changes: int
    changed_parameters: int
    path_norm_original: float
    path_norm_compressed: float
    float_slack_rel: float
    float_slack_abs: float
    input_shape: tuple[int, ...]


@dataclass(frozen=True)
class _Comparison:
    """One scan over both parameter sets: what the metric's method choice needs."""

    conflicts: int  # coordinates with strictly opposite signs
    changed: int  # coordinates that differ
    a_dominates: bool  # |a| >= |b| everywhere
    b_dominates: bool  # |b| >= |a| everywhere


def _tensor_pairs(a: Mapping[str, AffineParams], b: Mapping[str, AffineParams]
                  ) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    pairs = []
    for k in a:
        pa, pb = a[k], b[k]
        if (pa.bias is None) != (pb.bias is None):
            raise GraphMismatchError(f"node '{k}': one model has a bias, the other not")
        pairs.append((k, pa.weight, pb.weight))
        if pa.bias is not None and pb.bias is not None:
            pairs.append((k, pa.bias, pb.bias))
    return pairs


def _scan(a: Mapping[str, AffineParams], b: Mapping[str, AffineParams]
          ) -> tuple[_Comparison, dict[str, AffineParams] | None, dict[str, AffineParams] | None]:
    """Compare the two parameter sets in one scan and, when no sign conflicts, build
    ``lo = min(|a|, |b|)`` and ``max(|a|, |b|) - lo = ||a| - |b||`` (the same rounded
    subtraction, so the identity holds in floating point too).

    Memory-bound: float temporaries are kept to ``|a|``, ``|b|`` and their difference;
    signs are compared by ``opposite_signs``, never through a product.
    """
    conflicts = changed = 0
    a_dom = b_dom = True
    parts: dict[str, list[torch.Tensor | None]] = {}
    for k, ta, tb in _tensor_pairs(a, b):
        conflicts += int(torch.count_nonzero(opposite_signs(ta, tb)))
        changed += int(torch.count_nonzero(ta != tb))
        ma, mb = ta.abs(), tb.abs()
        diff = ma - mb
        if diff.numel():
            low, high = (float(v) for v in torch.aminmax(diff))  # one read, not two
            if math.isnan(low) or math.isnan(high):  # NaN: compare every element
                low, high = -float((diff < 0).any()), float((diff > 0).any())
            a_dom = a_dom and not low < 0
            b_dom = b_dom and not high > 0
        if conflicts == 0:
            parts.setdefault(k, []).extend((torch.minimum(ma, mb), diff.abs_()))
    cmp = _Comparison(conflicts, changed, a_dom, b_dom)
    if conflicts:
        return cmp, None, None
    lo = {k: AffineParams(v[0], v[2] if len(v) > 2 else None)  # type: ignore[arg-type]
          for k, v in parts.items()}
    delta = {k: AffineParams(v[1], v[3] if len(v) > 2 else None)  # type: ignore[arg-type]
             for k, v in parts.items()}
    return cmp, lo, delta


def _lo_delta(a: Mapping[str, AffineParams], b: Mapping[str, AffineParams]
              ) -> tuple[dict[str, AffineParams], dict[str, AffineParams]]:
    cmp, lo, delta = _scan(a, b)
    if lo is None or delta is None:
        raise AssertionError(f"_lo_delta needs same-sign parameters ({cmp.conflicts} "
                             "sign conflicts)")
    return lo, delta


def _same_sign_metric(graph: Graph, lo: Mapping[str, AffineParams],
                      delta: Mapping[str, AffineParams]) -> tuple[np.ndarray, np.ndarray]:
    """Per-output ``(||Phi(lo + delta)|| - ||Phi(lo)||, ||Phi(lo)||)``."""
    with torch.no_grad():
        outs = DifferencePass(graph, lo, delta).run()
    d, _ = outputs_to_numpy([o[1] for o in outs], "the path-metric")
    low, _ = outputs_to_numpy([o[0] for o in outs], "the path-norm")
    return d, low


def _sign_agreeing(a: Mapping[str, AffineParams], b: Mapping[str, AffineParams]
                   ) -> dict[str, AffineParams]:
    """``a`` where its sign agrees with ``b`` (or either is zero), 0 elsewhere."""
    def keep(ta: torch.Tensor, tb: torch.Tensor) -> torch.Tensor:
        return torch.where(opposite_signs(ta, tb), torch.zeros_like(ta), ta)
    return {k: AffineParams(keep(a[k].weight, b[k].weight),
                            None if a[k].bias is None or b[k].bias is None
                            else keep(a[k].bias, b[k].bias))  # type: ignore[arg-type]
            for k in a}


METHOD_ACTIVATIONS = ("; plus activation rounding and clipping: per quantizer, the suffix's "
                      "absolute-weight map applied to scale/2 + clipping (docs/quantization.md)")


def graph_path_metric(graph: Graph, other: Graph, radius: float | None = None) -> PathMetric:
    """Path-metric between ``graph.params`` (original) and ``other.params`` (compressed);
    the two graphs must have the same structure.

    With activation quantizers (:class:`~certcompress.ir.ops.ActQuantOp`, enabled) in
    either graph, ``radius`` (``max ||x||_inf`` over the domain) is required: the value
    then also bounds their rounding and clipping (``certcompress.bounds.actquant``),
    divided by ``max(radius, 1)`` so that ``max(radius, 1) * value`` stays the bound."""
    if quantizer_nodes(graph) or quantizer_nodes(other):
        if radius is None or not math.isfinite(radius) or radius < 0:
            raise ConfigurationError(
                "the graphs quantize activations: graph_path_metric needs the domain's "
                f"radius (max ||x||_inf) to bound their clipping, got radius={radius!r}")
        graph.check_same_structure(other)
        base = graph_path_metric(without_quantizers(graph), without_quantizers(other))
        rel, _ = graph_float_slack(graph, difference=False)
        per = activation_term(graph, radius, rel) + activation_term(other, radius, rel)
        factor = max(float(radius), 1.0)
        per = np.nextafter(per / factor, math.inf)
        total = math.nextafter(math.fsum(per.tolist()) * (1.0 + rel), math.inf)
        return replace(
            base, value=base.value + total, exact=False,
            per_output=tuple((np.asarray(base.per_output) + per).tolist()),
            method=base.method + METHOD_ACTIVATIONS)
    graph.check_same_structure(other)
    a, b = graph.params, other.params
    cmp, lo, delta = _scan(a, b)
    n_conflicts, changed = cmp.conflicts, cmp.changed
    rel, abs_ = graph_float_slack(graph, difference=True)
    if lo is not None and delta is not None:
        d, low = _same_sign_metric(graph, lo, delta)
        a_dom, b_dom = cmp.a_dominates, cmp.b_dominates
        exact = a_dom or b_dom
        method = METHOD_DOMINATED if exact else METHOD_MINMAX
        if a_dom:
            norm_a, norm_b = math.fsum((low + d).tolist()), math.fsum(low.tolist())
        elif b_dom:
            norm_a, norm_b = math.fsum(low.tolist()), math.fsum((low + d).tolist())
        else:
            norm_a = graph_path_norm(graph).computed
            norm_b = graph_path_norm(other).computed
    else:
        conflicts = _sign_agreeing(a, b)
        d1, low1 = _same_sign_metric(graph, *_lo_delta(a, conflicts))
        d2, _ = _same_sign_metric(graph, *_lo_delta(conflicts, b))
        d = d1 + d2
        rel = 2 * rel + rel * rel  # two passes and one addition
        abs_ = 2 * abs_
        exact = False
        method = METHOD_TRIANGLE
        norm_a = math.fsum((low1 + d1).tolist())
        norm_b = graph_path_norm(other).computed
    computed = math.fsum(d.tolist())
    up = 1.0 + rel
    return PathMetric(
        value=computed * up + abs_ if changed else 0.0,
        exact=exact,
        per_output=tuple((d * up + abs_).tolist()) if changed else tuple(d.tolist()),
        method=method, computed=computed, sign_changes=n_conflicts, changed_parameters=changed,
        path_norm_original=norm_a * up, path_norm_compressed=norm_b * up,
        float_slack_rel=rel, float_slack_abs=abs_, input_shape=graph.input_shape)
