"""Cost estimates of the tiers: the row counts they are built on are checked one-sidedly
against what the propagation really does (never fewer rows than it runs)."""

from __future__ import annotations

import pytest
import torch
from _nets import compress, random_conv_net

import certcompress as cc
from certcompress.bounds.cost import estimate_costs, pair_costs
from certcompress.bounds.propagation.engine import PropagationOptions, propagate
from certcompress.bounds.propagation.lowering import lower_pair
from certcompress.errors import ConfigurationError


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("half_width", [0.01, 1.0])
def test_worst_case_rows_cover_the_rows_run(seed: int, half_width: float) -> None:
    model, shape = random_conv_net(["conv", "conv", "pool"], 4, 6, 3, seed)
    small = compress(model, "prune", seed)
    g, h = cc.trace(model, shape), cc.trace(small, shape)
    pair = lower_pair(g, h)
    centre = torch.rand(shape, generator=torch.Generator().manual_seed(seed),
                        dtype=torch.float64).unsqueeze(0)  # one problem
    state = propagate(pair, centre - half_width, centre + half_width)
    costs = pair_costs(pair)
    assert costs["crown_rows"] >= state.stats["backsub_rows"]
    assert costs["crown_rows"] > 0
    interval = propagate(pair, centre - half_width, centre + half_width,
                         PropagationOptions(intermediate="interval"))
    assert interval.stats.get("backsub_rows", 0) == 0
    # the bounds tier's own count: interval-pass rows plus the output rows
    tier = cc.certify(model, small, domain=cc.InputDomain.box(
        centre[0] - half_width, centre[0] + half_width, shape=shape), methods=("bounds",),
        search_steps=0,
        search_time=None).by_method["bounds"]
    assert costs["crown_rows"] + costs["output_rows"] >= tier.details["backsub_rows"]


def test_estimate_orders_the_tiers_and_reports_wide_nodes() -> None:
    model, shape = random_conv_net(["conv"], 8, 8, 10, 0)
    g = cc.trace(model, shape)
    est = estimate_costs(g)
    pm, iv, cr = (est.tier(n) for n in ("path-metric", "bounds (interval)", "bounds (crown)"))
    assert iv.forward_equivalents <= cr.forward_equivalents
    assert cr.seconds is not None and cr.seconds_at_least is not None
    assert cr.seconds_at_least <= cr.seconds
    assert est.neurons == 2 * 8 * 8 * 8
    assert "expected cost" in est.summary() and "bounds (crown)" in est.summary()
    assert pm.memory_bytes > 0 and cr.memory_bytes > iv.memory_bytes
    tight = estimate_costs(g, options=PropagationOptions(max_rows=10), time_it=False)
    assert tight.tier("bounds (crown)").forward_equivalents == \
        tight.tier("bounds (interval)").forward_equivalents  # every node over max_rows
    assert "keep interval bounds" in tight.tier("bounds (crown)").note
    assert tight.forward_seconds is None and tight.tier("bounds (crown)").seconds is None
    assert cc.CostEstimate is type(est)
    with pytest.raises(KeyError, match="no tier 'nope'"):
        est.tier("nope")
    with pytest.raises(ConfigurationError):
        PropagationOptions(max_rows=-1)


def test_output_rows_count_the_sign_vector_budget() -> None:
    """The sign-vector rows are every sign vector, or the tier's row budget where it has
    one (PropagationOptions.sign_rows)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(),
                              torch.nn.Linear(8, 6)).double().eval()
    pair = lower_pair(cc.trace(net, (1, 3)), cc.trace(compress(net, "round", 0, 0.05),
                                                      (1, 3)))
    every = pair_costs(pair, PropagationOptions(sign_rows=None))["output_rows"]
    assert every == 2 * 6 + 2 ** 6
    assert pair_costs(pair, PropagationOptions(sign_rows=10))["output_rows"] == 2 * 6 + 10
    assert pair_costs(pair, PropagationOptions(sign_vectors_up_to=5))["output_rows"] == 12
