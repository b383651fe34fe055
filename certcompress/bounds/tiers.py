"""Certification tiers: each method's bound, with its scope written plainly.

A tier is one way of bounding the output deviation ``||f(x) - f'(x)||_1`` of the
original ``f`` and the compressed ``f'``. Tiers of the same *scope* answer the same
question and may be combined by taking the minimum; tiers of different scopes may not.

``path-metric``
    ``max(r, 1) * path-metric`` (Theorem 3.1 of Gonon et al.) with
    ``r = max ||x||_inf`` over the domain: a worst case over the whole ball of radius r,
    hence over the domain. Cheap (a few forward passes), parameter-only, usually loose.
``bounds``
    differential bound propagation of the pair over the domain's box
    (:mod:`certcompress.bounds.propagation`): interval bounds on ``x``, ``x'`` and their
    difference, tightened by linear relaxations with back-substitution; per-output bounds
    ``max |f_o - f'_o|`` and an l1 bound that also maximizes ``<s, f - f'>`` over the
    sign vectors ``s`` when the output is small. Sound in float64 (outward margin
    stated in the result).

Both have the scope :data:`WORST_CASE`.
"""

from __future__ import annotations

import itertools
import math
import time

import torch

from ..certificate import WORST_CASE, MethodBound
from ..domain import InputDomain
from ..errors import NumericalRangeError
from ..ir.graph import Graph
from .numerics import float_slack
from .pathmetric import PathMetric, graph_path_metric
from .propagation.engine import (
    ROUNDING_NOTE,
    PropagationOptions,
    output_bounds,
    output_upper_bounds,
    propagate,
)
from .propagation.lowering import lower_pair

__all__ = ["MethodBound", "WORST_CASE", "METHODS", "path_metric_tier", "bounds_tier",
           "check_methods"]

METHODS = ("path-metric", "bounds")


def check_methods(methods: object) -> tuple[str, ...]:
    """Validated method names (a string or a sequence of them), duplicates removed."""
    from ..errors import ConfigurationError

    if isinstance(methods, str):
        methods = (methods,)
    try:
        names = tuple(dict.fromkeys(str(m) for m in methods))  # type: ignore[attr-defined]
    except TypeError:
        raise ConfigurationError(f"methods must be a sequence of names from {METHODS}, got "
                                 f"{methods!r}") from None
    bad = [m for m in names if m not in METHODS]
    if bad or not names:
        raise ConfigurationError(f"unknown certification method(s) {bad or '(none)'}; choose "
                                 f"from {', '.join(METHODS)}")
    return names


def _round_up_sum(values: torch.Tensor) -> float:
    """A float64 upper bound of the exact sum of non-negative ``values``."""
    n = int(values.numel())
    s = float(values.sum())
    return math.nextafter(s * (1.0 + float_slack(max(n, 1), 1)), math.inf) if s > 0 else 0.0


def path_metric_tier(graph: Graph, other: Graph, radius: float,
                     pm: PathMetric | None = None) -> tuple[MethodBound, PathMetric]:
    """``max(radius, 1) * path-metric`` (with ``radius = max ||x||_inf`` over the domain)."""
    t0 = time.perf_counter()
    if pm is None:
        pm = graph_path_metric(graph, other, radius)
    factor = max(float(radius), 1.0)
    result = MethodBound(
        method="path-metric", bound=factor * pm.value,
        per_output=tuple(factor * v for v in pm.per_output), scope=WORST_CASE,
        seconds=time.perf_counter() - t0, exact=pm.exact,
        details={"factor": factor, "path_metric": pm.value, "computation": pm.method,
                 "covers": f"every x with ||x||_inf <= {float(radius):.6g} (contains the "
                           "domain)"})
    return result, pm


def bounds_tier(graph: Graph, other: Graph, domain: InputDomain,
                options: PropagationOptions | None = None) -> MethodBound:
    """Differential bound propagation of the pair over the domain's box."""
    if tuple(domain.shape) != tuple(graph.input_shape):
        from ..errors import ConfigurationError

        raise ConfigurationError(f"the domain's shape {domain.shape} differs from the traced "
                                 f"input shape {tuple(graph.input_shape)}")
    opts = options or PropagationOptions()
    t0 = time.perf_counter()
    pair = lower_pair(graph, other)
    lower = domain.lower_tensor().unsqueeze(0)
    upper = domain.upper_tensor().unsqueeze(0)
    state = propagate(pair, lower, upper, opts)
    m = pair.output_size
    eye = torch.eye(m, dtype=torch.float64)
    ub = output_upper_bounds(state, {"d": torch.cat([eye, -eye])})
    crown = torch.maximum(ub[:m], ub[m:]).clamp(min=0.0)
    interval = output_bounds(state).dev()[0].clamp(min=0.0)  # widened per node already
    per = torch.minimum(crown, interval)
    if not bool(torch.isfinite(per).all()):
        raise NumericalRangeError(
            f"the bounds tier's output bounds overflow float64 (crown {float(crown.max()):.3g}, "
            f"interval {float(interval.max()):.3g}); certify over a smaller domain or use the "
            "path-metric tier")
    l1 = _round_up_sum(per)
    if not math.isfinite(l1):
        raise NumericalRangeError(f"the bounds tier's l1 bound overflows float64 (largest "
                                  f"per-output bound {float(per.max()):.3g}, {per.numel()} "
                                  "outputs); certify over a smaller domain")
    sign_rows = 0
    if 0 < m <= opts.sign_vectors_up_to:
        signs = torch.tensor(list(itertools.product((1.0, -1.0), repeat=m)),
                             dtype=torch.float64)
        sign_rows = int(signs.shape[0])
        best = float(output_upper_bounds(state, {"d": signs}).max())
        l1 = min(l1, max(best, 0.0))
    seconds = time.perf_counter() - t0
    return MethodBound(
        method="bounds", bound=l1, per_output=tuple(float(v) for v in per), scope=WORST_CASE,
        seconds=seconds, exact=False,
        details={"intermediate": opts.intermediate, "primitive_nodes": len(pair.nodes),
                 "relu_nodes": pair.relu_count,
                 "backsub_rows": int(state.stats.get("backsub_rows", 0)) + 2 * m + sign_rows,
                 "skipped_nodes": int(state.stats.get("skipped_nodes", 0)),
                 "sign_vectors": sign_rows > 0, "rounding_margin_rel": state.eta,
                 "rounding": ROUNDING_NOTE, "domain": domain.describe()})
