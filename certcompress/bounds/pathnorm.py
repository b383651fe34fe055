"""The l1 path-norm and path-magnitude scores (docs/path-metrics.md, sections 2, 4 and 5)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import NumericalRangeError
from ..ir.graph import Graph
from ..ir.ops import AffineParams
from .numerics import Scaled, to_float
from .passes import MagnitudePass, graph_float_slack

__all__ = ["PathNorm", "graph_path_norm", "path_magnitude_scores", "abs_params",
           "outputs_to_numpy"]


@dataclass(frozen=True)
class PathNorm:
    """``||Phi(theta)||_1`` of a graph, total and per output coordinate.

    ``value`` and ``per_output`` include the float slack (they are rigorous upper
    bounds of the exact value); ``computed`` is the raw float64 result.
    """

    value: float
    per_output: tuple[float, ...]
    computed: float
    float_slack_rel: float
    input_shape: tuple[int, ...]


class _AbsParams(Mapping[str, AffineParams]):
    """``|theta|`` of a graph's parameters, node by node on access: a pass holds one
    node's absolute weights at a time instead of a second copy of the whole model."""

    def __init__(self, params: Mapping[str, AffineParams]) -> None:
        self._params = params

    def __getitem__(self, key: str) -> AffineParams:
        return self._params[key].map(torch.abs)

    def __iter__(self) -> Iterator[str]:
        return iter(self._params)

    def __len__(self) -> int:
        return len(self._params)


def abs_params(graph: Graph) -> Mapping[str, AffineParams]:
    """``|theta|`` per parametric node, computed when a node is read."""
    return _AbsParams(graph.params)


def outputs_to_numpy(outs: list[Scaled], what: str) -> tuple[np.ndarray, float]:
    """Per-output float64 values and their exactly-rounded sum, checking the range."""
    e = max((s.exp for s in outs), default=0)
    if e:  # range check on the total (its log10 is what the error must report)
        to_float(math.fsum(float(s.t.sum()) * 2.0 ** (s.exp - e) for s in outs), e, what)
    pieces = []
    for s in outs:
        v = s.t.detach().reshape(-1).to(torch.float64).numpy()
        if s.exp:
            top = float(v.max()) if v.size else 0.0
            to_float(top, s.exp, what)  # raises with log10 if it overflows
            v = np.ldexp(v, s.exp)
        pieces.append(v)
    arr = np.concatenate(pieces) if pieces else np.zeros(0)
    if not np.all(np.isfinite(arr)):
        raise NumericalRangeError(f"{what} is not finite")
    return arr, math.fsum(arr.tolist())


def graph_path_norm(graph: Graph, params: Mapping[str, AffineParams] | None = None) -> PathNorm:
    """One float64 forward pass of the magnitude map on all-ones input."""
    p = abs_params(graph) if params is None else params
    with torch.no_grad():
        outs = MagnitudePass(graph, p).run()
    per, total = outputs_to_numpy(outs, "the path-norm")
    rel, abs_ = graph_float_slack(graph, difference=False)
    up = 1.0 + rel
    return PathNorm(value=total * up + abs_, per_output=tuple((per * up + abs_).tolist()),
                    computed=total, float_slack_rel=rel, input_shape=graph.input_shape)


def path_magnitude_scores(graph: Graph) -> dict[str, AffineParams]:
    """``score_i = |theta_i| * d||Phi(|theta|)||_1 / d|theta_i|`` for every weight and bias
    of every parametric node (float64, in the node's folded layout), from one forward
    and one backward pass. Because the path-norm is multi-affine in ``|theta|``, a score
    is exactly the path-metric of zeroing that one parameter (docs/path-metrics.md, section 5).
    """
    p = {k: AffineParams(v.weight.abs().requires_grad_(True),
                         None if v.bias is None else v.bias.abs().requires_grad_(True))
         for k, v in graph.params.items()}
    outs = MagnitudePass(graph, p).run()
    e = max(s.exp for s in outs)
    total = sum(s.t.sum() * 2.0 ** (s.exp - e) for s in outs)
    leaves = [t for v in p.values() for t in (v.weight, v.bias) if t is not None]
    grads = torch.autograd.grad(total, leaves, allow_unused=True)  # type: ignore[arg-type]
    it = iter(grads)
    scores: dict[str, AffineParams] = {}
    for k, v in p.items():
        gw = next(it)
        gb = next(it) if v.bias is not None else None
        sw = (v.weight.detach() * (gw if gw is not None else 0.0))
        sb = None if v.bias is None else v.bias.detach() * (gb if gb is not None else 0.0)
        if e:
            top = max(float(sw.max()) if sw.numel() else 0.0,
                      float(sb.max()) if sb is not None and sb.numel() else 0.0)
            to_float(top, e, "a path-magnitude score")
            sw = sw * 2.0 ** e
            sb = None if sb is None else sb * 2.0 ** e
        scores[k] = AffineParams(sw, sb)
    return scores
