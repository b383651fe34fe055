"""The l1 path-metric ``||Phi(theta) - Phi(theta')||_1`` between two parameter sets of
one graph (shared doc, sections 2-4).

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
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import GraphMismatchError
from ..ir.graph import Graph
from ..ir.ops import AffineParams
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


def _pair(a: Mapping[str, AffineParams], b: Mapping[str, AffineParams]
          ) -> tuple[dict[str, AffineParams], dict[str, AffineParams], int, int, int]:
    """``lo``, ``hi - lo``, and (a dominates, b dominates, changed) counts."""
    lo: dict[str, AffineParams] = {}
    delta: dict[str, AffineParams] = {}
    a_dom = b_dom = True
    changed = 0
    for k in a:
        pa, pb = a[k], b[k]
        ts: list[tuple[torch.Tensor | None, torch.Tensor | None]] = []
        for ta, tb in ((pa.weight, pb.weight), (pa.bias, pb.bias)):
            if ta is None or tb is None:
                ts.append((None, None))
                continue
            ma, mb = ta.abs(), tb.abs()
            low = torch.minimum(ma, mb)
            ts.append((low, torch.maximum(ma, mb) - low))
            a_dom = a_dom and bool((ma >= mb).all())
            b_dom = b_dom and bool((mb >= ma).all())
            changed += int((ta != tb).sum())
        (wl, wd), (bl, bd) = ts
        assert wl is not None and wd is not None
        lo[k] = AffineParams(wl, bl)
        delta[k] = AffineParams(wd, bd)
    return lo, delta, int(a_dom), int(b_dom), changed


def _same_sign_metric(graph: Graph, a: Mapping[str, AffineParams],
                      b: Mapping[str, AffineParams]
                      ) -> tuple[np.ndarray, np.ndarray, bool, bool, int]:
    lo, delta, a_dom, b_dom, changed = _pair(a, b)
    with torch.no_grad():
        outs = DifferencePass(graph, lo, delta).run()
    d, _ = outputs_to_numpy([o[1] for o in outs], "the path-metric")
    low, _ = outputs_to_numpy([o[0] for o in outs], "the path-norm")
    return d, low, bool(a_dom), bool(b_dom), changed


def graph_path_metric(graph: Graph, other: Graph) -> PathMetric:
    """Path-metric between ``graph.params`` (original) and ``other.params`` (compressed);
    the two graphs must have the same structure."""
    graph.check_same_structure(other)
    a, b = graph.params, other.params
    conflicts: dict[str, AffineParams] = {}
    n_conflicts = 0
    for k in a:
        pa, pb = a[k], b[k]
        if (pa.bias is None) != (pb.bias is None):
            raise GraphMismatchError(f"node '{k}': one model has a bias, the other not")
        w = torch.where(pa.weight * pb.weight < 0, torch.zeros_like(pa.weight), pa.weight)
        bb = None if pa.bias is None or pb.bias is None else torch.where(
            pa.bias * pb.bias < 0, torch.zeros_like(pa.bias), pa.bias)
        n_conflicts += int((pa.weight * pb.weight < 0).sum())
        if pa.bias is not None and pb.bias is not None:
            n_conflicts += int((pa.bias * pb.bias < 0).sum())
        conflicts[k] = AffineParams(w, bb)
    changed = 0
    for k in a:
        changed += int((a[k].weight != b[k].weight).sum())
        ba, bb_ = a[k].bias, b[k].bias
        if ba is not None and bb_ is not None:
            changed += int((ba != bb_).sum())
    rel, abs_ = graph_float_slack(graph, difference=True)
    if n_conflicts == 0:
        d, low, a_dom, b_dom, _ = _same_sign_metric(graph, a, b)
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
        d1, low1, _, _, _ = _same_sign_metric(graph, a, conflicts)
        d2, _, _, _, _ = _same_sign_metric(graph, conflicts, b)
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
