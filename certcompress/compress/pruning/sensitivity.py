"""Where the budget goes: the certified bound of pruning each layer alone.

For every layer a plan prunes, the bound of pruning that layer alone at the plan's
mask, in the certificate's units (``max(r,1) * path-metric``, l1 output deviation over
``||x||_inf <= r``). The path-metric is subadditive over disjoint sets of removed
weights (a removed path is counted by at least one layer), so the plan's bound is at
most the sum of the per-layer bounds; ``share`` is each layer's part of that sum.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from torch import nn

from ...api import trace
from ...resolve import resolve_radius
from ._layers import input_shape_for, prunable_layers
from .criteria import resolve_masks
from .plan import PruningPlan
from .search import MaskCertifier

__all__ = ["layer_sensitivity"]

COLUMNS = ["layer", "weights", "pruned", "ratio", "bound", "share"]


def layer_sensitivity(model: nn.Module, plan: PruningPlan,
                      input_shape: Sequence[int] | None = None,
                      input_radius: float | None = None) -> pd.DataFrame:
    """One row per prunable layer: ``weights``, ``pruned`` (by ``plan``), ``ratio``,
    ``bound`` (certified bound of pruning only that layer as the plan does) and ``share``
    (``bound`` over the sum of the layers' bounds; NaN when that sum is 0).
    ``df.attrs`` holds ``plan_bound`` (the whole plan's bound, <= the sum), ``radius``,
    ``input_shape`` and ``forward_passes``."""
    shape = input_shape_for(model, input_shape, "the sensitivity table")
    radius = resolve_radius(model, input_radius, domain_hint=False)[0]
    layers = prunable_layers(model)
    graph = trace(model, shape)
    same = plan.input_shape is None or tuple(plan.input_shape) == shape
    masks = resolve_masks(model, plan, shape, graph=graph if same else None)
    cert = MaskCertifier(graph, layers, radius)
    rows = []
    for ly in layers:
        keep = masks[ly.name]
        pruned = int((~keep).sum())
        rows.append({"layer": ly.name, "weights": ly.numel, "pruned": pruned,
                     "ratio": pruned / ly.numel, "bound": cert.bound({ly.name: keep})})
    df = pd.DataFrame(rows, columns=COLUMNS[:-1])
    total = float(df["bound"].sum())
    df["share"] = df["bound"] / total if total > 0 else float("nan")
    df.attrs.update(plan_bound=cert.bound(masks), radius=radius, input_shape=shape,
                    forward_passes=cert.passes)
    return df

