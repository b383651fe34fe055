"""Budget search: the returned plan's bound is within the budget, the next denser step's
is not (both re-certified independently through cc.certify on real pruned modules), and
the search spends few forward passes."""

from __future__ import annotations

import math

import pytest
import torch
from pruning_nets import mlp, res_bn_net

import certcompress as cc
from certcompress.compress.pruning import PruningPlan, apply_masks, prune, search_sparsity
from certcompress.compress.pruning._layers import prunable_layers
from certcompress.compress.pruning.criteria import ranks, weight_scores

SHAPE = (1, 1, 4, 4)


def _next_step_model(model, result):
    """The model pruned by the next denser step, built independently of the search."""
    names = [ly.name for ly in prunable_layers(model)]
    scores = weight_scores(model, result.criterion, input_shape=SHAPE)
    r = ranks(scores, names)
    return apply_masks(model, {n: r[n] >= result.next_pruned for n in names})


@pytest.mark.parametrize("criterion", ["path-magnitude", "magnitude", "random"])
@pytest.mark.parametrize("fraction", [0.05, 0.3])
def test_returned_bound_within_budget_and_next_step_beyond(criterion: str,
                                                           fraction: float) -> None:
    model = res_bn_net(seed=1)
    radius = 1.5
    full = prune(model, PruningPlan.magnitude(model, 1.0), SHAPE, radius, search_steps=0)[1]
    budget = fraction * full.bound
    res = search_sparsity(model, budget, criterion, SHAPE, radius)
    assert res.bound <= budget < res.next_bound
    assert res.next_pruned == res.pruned + 1
    pruned, cert = prune(model, res.plan, SHAPE, radius, search_steps=10)
    assert cert.bound == res.bound  # the same exact certificate, computed independently
    assert cert.changed_parameters == res.pruned
    nxt = cc.certify(model, _next_step_model(model, res), SHAPE, radius, search_steps=0)
    assert nxt.bound == res.next_bound
    n = res.candidates
    assert res.forward_passes <= 2 * math.log2(n) + 2
    assert res.plan.to_dict()["sparsity"] == pytest.approx(res.pruned / n)


def test_per_layer_scope_search() -> None:
    model = res_bn_net(seed=2)
    res = search_sparsity(model, 40.0, "path-magnitude", SHAPE, 1.0, scope="per-layer")
    assert res.bound <= 40.0 < res.next_bound
    _, cert = prune(model, res.plan, SHAPE, 1.0, search_steps=0)
    assert cert.bound == res.bound
    ratio = res.plan.layers["fc"].ratio
    assert all(r.ratio == ratio for r in res.plan.layers.values())
    assert res.next_sparsity is not None and res.next_sparsity > res.sparsity
    assert res.forward_passes <= 2 * math.log2(res.candidates) + 2


def test_budget_above_everything_prunes_all_and_zero_budget_prunes_only_free_weights() -> None:
    model = mlp([4, 6, 3], seed=0)
    with torch.no_grad():
        model[0].weight[0, :2] = 0.0  # two weights whose removal costs nothing
    big = search_sparsity(model, 1e9, "magnitude", (1, 4), 1.0)
    assert big.next_bound is None and big.sparsity == 1.0
    zero = search_sparsity(model, 0.0, "magnitude", (1, 4), 1.0)
    assert zero.pruned == 2 and zero.bound == 0.0 and zero.next_bound > 0.0


def test_excluded_layers_stay_dense_in_the_search() -> None:
    model = res_bn_net(seed=4)
    res = search_sparsity(model, 1e9, "path-magnitude", SHAPE, 1.0, exclude=["conv1"])
    pruned, _ = prune(model, res.plan, SHAPE, 1.0, search_steps=0)
    assert torch.equal(pruned.conv1.weight, model.conv1.weight)
    assert bool((pruned.fc.weight == 0).all())


@pytest.mark.parametrize("budget", [-1.0, float("nan"), float("inf"), "1"])
def test_invalid_budget_is_refused(budget) -> None:
    with pytest.raises(cc.ConfigurationError, match="budget"):
        search_sparsity(res_bn_net(), budget, "magnitude", SHAPE, 1.0)


def test_radius_is_required_without_a_plugin() -> None:
    with pytest.raises(cc.ConfigurationError, match="input_radius is required"):
        search_sparsity(res_bn_net(), 1.0, "magnitude", SHAPE)
