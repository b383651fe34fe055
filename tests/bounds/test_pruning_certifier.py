"""search_sparsity(certifier="bounds"): each step certified with the smaller of the
path-metric and bound-propagation bounds over the domain; the result's facts hold."""

from __future__ import annotations

import pytest
from _nets import random_vector_net

import certcompress as cc
from certcompress.compress.pruning import prune, search_sparsity
from certcompress.domain import InputDomain
from certcompress.errors import ConfigurationError


def test_bounds_certifier_allows_at_least_as_much_pruning() -> None:
    net, shape = random_vector_net(["dense", "dense"], 6, 3, 2, 3, scale=1.0)
    dom = InputDomain.box(0.0, 0.5, shape=shape)
    base = search_sparsity(net, 0.5, "magnitude", shape, dom.radius)
    found = search_sparsity(net, 0.5, "magnitude", certifier="bounds", domain=dom)
    assert found.bound <= 0.5 and found.pruned >= base.pruned
    assert "(bounds)" in found.plan.note and "box" in found.plan.note
    model, _ = prune(net, found.plan, input_shape=shape, input_radius=dom.radius)
    cert = cc.certify(net, model, domain=dom, methods=("path-metric", "bounds"),
                      search_steps=10)
    assert cert.bound == pytest.approx(found.bound, rel=1e-9)
    if found.next_bound is not None:
        assert found.next_bound > 0.5


def test_bad_certifier_and_both_domains_refused() -> None:
    net, shape = random_vector_net([], 3, 2, 1, 0)
    with pytest.raises(ConfigurationError, match="certifier"):
        search_sparsity(net, 1.0, "magnitude", shape, 1.0, certifier="exact")
    with pytest.raises(ConfigurationError, match="either domain"):
        search_sparsity(net, 1.0, "magnitude", shape, 1.0,
                        domain=InputDomain.box(0, 1, shape=shape))
