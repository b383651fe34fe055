"""Pruning criteria and the exact selection of the weights a plan prunes.

Scores are float64 tensors in each layer's weight layout; a lower score is pruned first.

``magnitude``
    ``|w|``. Not invariant to neuron rescaling.
``path-magnitude``
    ``|w| * d||Phi(|theta|)||_1 / d|w|`` from one forward and one backward float64 pass
    on the traced graph (BatchNorm folded: the folded weight has the module weight's
    layout, so a folded score is the module weight's score). It equals exactly the
    path-metric of removing that weight alone, the sum over a set bounds the path-metric
    of removing the set, and it is invariant to neuron rescaling (docs/path-metrics.md, section 5).
``random``
    Uniform scores from ``torch.Generator().manual_seed(seed)``, drawn layer by layer in
    model order.

Selection is exact and deterministic: ``k = floor(fraction * n + 1/2)`` weights are
pruned out of ``n`` candidates, those with the ``k`` smallest scores, ties broken by
position (layer order in the model, then row-major index within the weight).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ...bounds.pathnorm import path_magnitude_scores
from ...errors import ConfigurationError, GraphMismatchError
from ...ir.graph import Graph
from ...ir.ops import ConvOp, LinearOp
from ._layers import Layer, check_names, excluded_names, prunable_layers

if TYPE_CHECKING:
    from .plan import PruningPlan

__all__ = ["CRITERIA", "check_criterion", "weight_scores", "layer_nodes", "prune_count",
           "ranks", "resolve_masks", "Masks"]

CRITERIA = ("magnitude", "path-magnitude", "random")
Masks = dict[str, Tensor]  # layer name -> bool tensor of the weight's shape, True = keep


def check_criterion(value: object, field: str = "criterion") -> str:
    if not isinstance(value, str):
        raise ConfigurationError(f"{field} must be a string, one of {', '.join(CRITERIA)}; "
                                 f"got {type(value).__name__} {value!r}")
    name = value.strip().lower().replace("_", "-")
    if name not in CRITERIA:
        raise ConfigurationError(f"{field} = {value!r} is not a pruning criterion; available: "
                                 f"{', '.join(CRITERIA)}")
    return name


def prune_count(fraction: float, n: int) -> int:
    """Number of weights pruned out of ``n`` at ``fraction`` (round half up)."""
    return min(n, max(0, math.floor(fraction * n + 0.5)))


def layer_nodes(graph: Graph, layers: Sequence[Layer]) -> dict[str, list[str]]:
    """For each layer, the graph nodes whose (folded) weight is that layer's weight."""
    by_param = {ly.param: ly for ly in layers}
    out: dict[str, list[str]] = {ly.name: [] for ly in layers}
    for n in graph.affine_nodes:
        if not isinstance(n.op, (LinearOp, ConvOp)) or not n.param_names:
            continue
        ly = by_param.get(n.param_names[0])
        if ly is None:
            continue
        shape = tuple(graph.params[n.name].weight.shape)
        if shape != ly.shape:
            raise GraphMismatchError(f"graph node '{n.name}' holds {ly.param} with shape "
                                     f"{shape}, the module weight has shape {ly.shape}")
        out[ly.name].append(n.name)
    return out


def _path_magnitude(graph: Graph, layers: Sequence[Layer]) -> dict[str, Tensor]:
    node_scores = path_magnitude_scores(graph)
    nodes = layer_nodes(graph, layers)
    out = {}
    for ly in layers:
        s = torch.zeros(ly.shape, dtype=torch.float64)  # unused weight: no path, score 0
        for name in nodes[ly.name]:
            s = s + node_scores[name].weight.detach()
        out[ly.name] = s
    return out


def weight_scores(model: nn.Module, criterion: str, layers: Sequence[Layer] | None = None, *,
                  graph: Graph | None = None, input_shape: Sequence[int] | None = None,
                  seed: int = 0) -> dict[str, Tensor]:
    """Scores of every weight of ``layers`` (default: all prunable layers) under
    ``criterion``; ``path-magnitude`` traces ``model`` for ``input_shape`` unless
    ``graph`` is given."""
    criterion = check_criterion(criterion)
    lys = prunable_layers(model) if layers is None else tuple(layers)
    if criterion == "magnitude":
        return {ly.name: model.get_parameter(ly.param).detach().to(torch.float64).abs()
                for ly in lys}
    if criterion == "random":
        gen = torch.Generator().manual_seed(int(seed))
        return {ly.name: torch.rand(ly.shape, generator=gen, dtype=torch.float64) for ly in lys}
    if graph is None:
        from ...api import trace

        graph = trace(model, input_shape)
    return _path_magnitude(graph, lys)


def ranks(scores: Mapping[str, Tensor], names: Sequence[str]) -> dict[str, Tensor]:
    """Position of every weight of ``names`` in the joint order (ascending score, ties
    by position); weights with rank ``< k`` are the ``k`` pruned first."""
    flat = torch.cat([scores[n].reshape(-1) for n in names]) if names else torch.zeros(0)
    order = torch.sort(flat, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel())
    out, offset = {}, 0
    for n in names:
        size = scores[n].numel()
        out[n] = rank[offset:offset + size].reshape(scores[n].shape)
        offset += size
    return out


def resolve_masks(model: nn.Module, plan: PruningPlan, input_shape: Sequence[int] | None = None,
                  *, graph: Graph | None = None) -> Masks:
    """The keep-mask of every prunable layer of ``model`` under ``plan`` (all-True for a
    layer the plan leaves alone). Deterministic: the same model and plan give the same
    masks."""
    layers = prunable_layers(model)
    by_name = {ly.name: ly for ly in layers}
    excluded = excluded_names(layers, plan.exclude)
    check_names(layers, plan.layers)
    clash = sorted(excluded & set(plan.layers))
    if clash:
        raise ConfigurationError(f"layers[{clash[0]!r}] has a rule but is also excluded by "
                                 "'exclude'; remove one of the two")
    shape = plan.input_shape if plan.input_shape is not None else input_shape
    cache: dict[str, dict[str, Tensor]] = {}

    def scores(criterion: str) -> dict[str, Tensor]:
        if criterion not in cache:
            cache[criterion] = weight_scores(model, criterion, layers, graph=graph,
                                             input_shape=shape, seed=plan.seed)
        return cache[criterion]

    masks: Masks = {ly.name: torch.ones(ly.shape, dtype=torch.bool) for ly in layers}
    if plan.scope == "global":
        names = [ly.name for ly in layers if ly.name not in excluded]
        assert plan.sparsity is not None
        k = prune_count(plan.sparsity, sum(by_name[n].numel for n in names))
        for n, r in ranks(scores(plan.criterion), names).items():
            masks[n] = r >= k
        return masks
    for name, rule in plan.layers.items():
        ly = by_name[name]
        field = f"layers[{name!r}]"
        if rule.mask is not None:
            if tuple(rule.mask.shape) != ly.shape:
                raise ConfigurationError(f"{field}.mask has shape {tuple(rule.mask.shape)}; the "
                                         f"weight {ly.param} has shape {ly.shape}")
            masks[name] = rule.mask.clone()
        elif rule.pruned_indices is not None:
            bad = [i for i in rule.pruned_indices if not 0 <= i < ly.numel]
            if bad:
                raise ConfigurationError(f"{field}.pruned_indices: index {bad[0]} is outside "
                                         f"[0, {ly.numel}) for {ly.param} of shape {ly.shape}")
            flat = torch.ones(ly.numel, dtype=torch.bool)
            flat[torch.tensor(list(rule.pruned_indices), dtype=torch.long)] = False
            masks[name] = flat.reshape(ly.shape)
        else:
            assert rule.ratio is not None
            crit = rule.criterion or plan.criterion
            k = prune_count(rule.ratio, ly.numel)
            masks[name] = ranks(scores(crit), [name])[name] >= k
    return masks
