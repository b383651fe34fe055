"""search_sparsity(certifier="equivalence"): every step proven by branch-and-bound (l1,
epsilon = budget); the returned plan's deviation stays within the budget on a dense grid,
and it prunes at least as much as the bound-propagation certifier on a small pair."""

from __future__ import annotations

import math

import pytest
from _pairs import grid, mlp, outputs

from certcompress.compress.pruning import prune, search_sparsity
from certcompress.domain import InputDomain
from certcompress.errors import ConfigurationError


def test_equivalence_certifier_plan_holds_on_a_grid() -> None:
    net = mlp(2, 8, 2, 2, 11)
    dom = InputDomain.box(-0.5, 0.5, shape=(1, 2))
    budget = 0.3
    found = search_sparsity(net, budget, "magnitude", certifier="equivalence", domain=dom,
                            timeout=5)
    assert found.bound <= budget and found.pruned > 0
    assert "(equivalence)" in found.plan.note
    # a step is either proven within the budget or counts as not proven
    assert all(b <= budget or math.isinf(b) for _, b in found.steps)
    if found.next_bound is not None:
        assert found.next_bound > budget  # unknown or falsified steps count as inf
    model, _ = prune(net, found.plan, input_shape=(1, 2), input_radius=dom.radius)
    f, g = outputs(net, model, grid(dom, 2))
    assert float((f - g).abs().sum(1).max()) <= found.bound * (1 + 1e-9)
    ref = search_sparsity(net, budget, "magnitude", certifier="bounds", domain=dom)
    assert found.pruned >= ref.pruned


def test_equivalence_certifier_needs_a_positive_budget() -> None:
    net = mlp(2, 4, 1, 1, 0)
    dom = InputDomain.box(-0.5, 0.5, shape=(1, 2))
    with pytest.raises(ConfigurationError, match="epsilon > 0"):
        search_sparsity(net, 0.0, "magnitude", certifier="equivalence", domain=dom)
    with pytest.raises(ConfigurationError, match="timeout"):
        search_sparsity(net, 0.1, "magnitude", certifier="equivalence", domain=dom,
                        timeout=0)
