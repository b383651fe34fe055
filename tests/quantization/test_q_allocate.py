"""Certified bit allocation against exhaustive search on small networks: the returned
configuration's certificate is within budget, lowering any single layer by one step
breaks the budget (local minimality), and the size form never does worse than the best
uniform width. Also: the sensitivity table equals one engine pass per entry, and bad
inputs give clear errors."""

from __future__ import annotations

import functools
import itertools

import pytest
from _nets import random_conv_net, random_vector_net
from torch import nn

import certcompress as cc
from certcompress.compress.quantization import (
    QuantConfig,
    choose_bitwidths,
    quantization_grid,
    sensitivity_table,
)
from certcompress.compress.quantization.quantizers import affine_layers
from certcompress.errors import ConfigurationError

CANDS = [2, 3, 5]


@functools.cache
def _case(kind: str, seed: int) -> tuple[nn.Module, tuple[int, ...], list[str], dict[str, int],
                                          dict[tuple[int, ...], float]]:
    """A network and the certified bound of every configuration (exhaustive search,
    each certified independently by cc.certify on the quantized model)."""
    if kind == "mlp":
        net, shape = random_vector_net(["dense", "dense_bn"], 8, 5, 3, seed)
        cands = CANDS
    else:
        net, shape = random_conv_net(["conv_bn", "maxpool"], 3, 4, 3, seed)
        cands = [2, 4, 6]
    layers = list(affine_layers(net))
    n = {name: affine_layers(net)[name].weight.numel() for name in layers}
    table = {}
    for combo in itertools.product(cands, repeat=len(layers)):
        q = quantization_grid(net, QuantConfig.from_bits(dict(zip(layers, combo)))).apply(net)
        table[combo] = cc.certify(net, q, shape, 1.0, search_steps=0).bound
    return net, shape, layers, n, table


def _bits(n: dict[str, int], layers: list[str], combo: tuple[int, ...]) -> int:
    return sum(n[name] * b for name, b in zip(layers, combo))


@pytest.mark.parametrize("kind,seed", [("mlp", 0), ("mlp", 5), ("conv", 2)])
@pytest.mark.parametrize("quantile", [0.15, 0.5, 0.85])
def test_budget_form_is_certified_and_locally_minimal(kind: str, seed: int,
                                                      quantile: float) -> None:
    net, shape, layers, n, table = _case(kind, seed)
    cands = sorted({c for combo in table for c in combo})
    bounds = sorted(table.values())
    budget = bounds[int(quantile * (len(bounds) - 1))]
    al = choose_bitwidths(net, budget, candidates=cands, input_shape=shape, input_radius=1.0)
    combo = tuple(al.bits[name] for name in layers)
    # the certificate is the quantized model's own, within budget, equal to exhaustive
    assert al.bound <= budget
    assert al.bound == pytest.approx(table[combo], rel=1e-12)
    assert al.certificate.compressed_digest == cc.parameter_digest(al.model)
    assert al.total_bits == _bits(n, layers, combo)
    # local minimality, checked on the exhaustive table
    assert al.locally_minimal is True
    for i in range(len(layers)):
        j = cands.index(combo[i])
        if j > 0:
            lower = list(combo)
            lower[i] = cands[j - 1]
            assert table[tuple(lower)] > budget, f"layer {layers[i]} could go lower"
    # never more bits than the best uniform width within budget, and near the optimum
    feasible = {c: _bits(n, layers, c) for c, v in table.items() if v <= budget}
    uniform = [b for c, b in feasible.items() if len(set(c)) == 1]
    if uniform:
        assert al.total_bits <= min(uniform)
    assert al.total_bits <= 1.15 * min(feasible.values())


@pytest.mark.parametrize("avg", [2.5, 3.0, 4.2])
def test_size_form_minimizes_the_bound_within_the_bits(avg: float) -> None:
    net, shape, layers, n, table = _case("mlp", 0)
    cap = avg * sum(n.values())
    al = choose_bitwidths(net, avg_bits=avg, candidates=CANDS, input_shape=shape,
                          input_radius=1.0)
    combo = tuple(al.bits[name] for name in layers)
    assert al.total_bits <= cap and al.average_bits <= avg
    assert al.bound == pytest.approx(table[combo], rel=1e-12)
    within = {c: v for c, v in table.items() if _bits(n, layers, c) <= cap}
    best_uniform = min(v for c, v in within.items() if len(set(c)) == 1)
    assert al.bound <= best_uniform * (1 + 1e-12)
    assert al.bound <= 1.1 * min(within.values())


def test_greedy_method_is_certified_and_locally_minimal() -> None:
    net, shape, layers, _, table = _case("mlp", 5)
    budget = sorted(table.values())[len(table) // 3]
    al = choose_bitwidths(net, budget, candidates=CANDS, input_shape=shape, input_radius=1.0,
                          method="greedy")
    assert "greedy" in al.method and al.bound <= budget and al.locally_minimal
    combo = tuple(al.bits[name] for name in layers)
    for i in range(len(layers)):
        j = CANDS.index(combo[i])
        if j:
            assert table[combo[:i] + (CANDS[j - 1],) + combo[i + 1:]] > budget


def test_sensitivity_table_equals_one_pass_per_entry() -> None:
    net, shape = random_conv_net(["conv_bn", "residual", "maxpool"], 3, 4, 3, 7)
    fast = sensitivity_table(net, [2, 4, 8], input_shape=shape, input_radius=2.0)
    slow = sensitivity_table(net, [2, 4, 8], input_shape=shape, input_radius=2.0,
                             method="passes")
    assert fast.layers == slow.layers and fast.candidates == (2, 4, 8)
    for a, b in zip(fast.bounds, slow.bounds):
        assert a == pytest.approx(b, rel=1e-9)
    # and the passes agree with certify on the model quantized at one layer
    name = fast.layers[1]
    q = quantization_grid(net, QuantConfig.from_bits({name: 4})).apply(net)
    assert slow.bound(name, 4) == pytest.approx(
        cc.certify(net, q, shape, 2.0, search_steps=0).bound, rel=1e-12)
    frame = fast.to_frame()
    assert list(frame.columns) == ["weights", "bound@2bit", "bound@4bit", "bound@8bit"]
    assert bool((frame["bound@2bit"] >= frame["bound@8bit"]).all())


def test_a_budget_below_the_widest_candidate_is_refused_with_the_bound() -> None:
    net, shape, *_ = _case("mlp", 0)
    with pytest.raises(ConfigurationError, match=r"below the certified bound .*\(5 bits\)"):
        choose_bitwidths(net, 1e-9, candidates=CANDS, input_shape=shape, input_radius=1.0)


@pytest.mark.parametrize("kwargs,match", [
    ({"budget": 0.0}, "budget must be a finite number > 0"),
    ({"budget": -1.0}, "budget must be a finite number > 0"),
    ({"budget": float("nan")}, "budget must be a finite number > 0"),
    ({}, "exactly one of budget"),
    ({"budget": 1.0, "avg_bits": 4.0}, "exactly one of budget"),
    ({"avg_bits": 1.5}, "avg_bits must be"),
    ({"budget": 1.0, "candidates": [1, 4]}, "candidates must be one of"),
    ({"budget": 1.0, "candidates": []}, "at least one bit width"),
    ({"budget": 1.0, "layers": ["fc9"]}, r"\['fc9'\]"),
    ({"budget": 1.0, "granularity": "per-row"}, "granularity"),
    ({"budget": 1.0, "bias_bits": 40}, "bias_bits"),
    ({"budget": 1.0, "method": "anneal"}, "method"),
])
def test_bad_inputs_give_errors_naming_the_field(kwargs: dict, match: str) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    kw = {"input_shape": (1, 3), "input_radius": 1.0, **kwargs}
    with pytest.raises(ConfigurationError, match=match):
        choose_bitwidths(model, **kw)


def test_input_domain_is_required_without_a_plugin() -> None:
    model = nn.Sequential(nn.Linear(3, 2)).eval()
    with pytest.raises(ConfigurationError, match="input_shape is required"):
        choose_bitwidths(model, 1.0)
    with pytest.raises(ConfigurationError, match="input_radius is required"):
        choose_bitwidths(model, 1.0, input_shape=(1, 3))


@pytest.mark.parametrize("seed", [0, 3])
def test_bounds_certifier_allocation_is_within_budget_and_locally_minimal(seed: int) -> None:
    """certifier='bounds': the certificate (smaller of the path-metric and bounds tiers over
    the box) is within budget, every single-layer step down breaks it (each checked by an
    independent cc.certify), and the allocation is no larger than the path-metric one."""
    net, shape = random_vector_net(["dense", "dense_bn"], 6, 4, 3, seed)
    dom = cc.InputDomain.box(0.0, 1.0, shape=shape)
    layers = list(affine_layers(net))
    n = {name: affine_layers(net)[name].weight.numel() for name in layers}

    def tier_bound(combo: tuple[int, ...]) -> float:
        q = quantization_grid(net, QuantConfig.from_bits(dict(zip(layers, combo)))).apply(net)
        return cc.certify(net, q, domain=dom, methods=("path-metric", "bounds"),
                          search_steps=0).bound

    budget = tier_bound(tuple([4] * len(layers)))  # uniform 4-bit meets it
    al = choose_bitwidths(net, budget, candidates=CANDS + [4, 8], certifier="bounds",
                          domain=dom)
    combo = tuple(al.bits[name] for name in layers)
    assert al.bound <= budget and al.locally_minimal
    assert set(al.certificate.by_method) == {"path-metric", "bounds"}
    assert al.certificate.bound == pytest.approx(tier_bound(combo), rel=1e-12)
    cands = sorted(CANDS + [4, 8])
    for i, b in enumerate(combo):
        k = cands.index(b)
        if k == 0:
            continue
        lower = list(combo)
        lower[i] = cands[k - 1]
        assert tier_bound(tuple(lower)) > budget, f"layer {layers[i]} could go lower"
    assert _bits(n, layers, combo) <= _bits(n, layers, tuple([4] * len(layers)))
    try:
        pm = choose_bitwidths(net, budget, candidates=CANDS + [4, 8], input_shape=shape,
                              input_radius=1.0)
    except ConfigurationError:  # the path-metric tier alone cannot meet the budget
        return
    assert al.total_bits <= pm.total_bits


def test_bounds_certifier_errors() -> None:
    net, shape = random_vector_net(["dense"], 4, 3, 2, 0)
    dom = cc.InputDomain.box(0.0, 1.0, shape=shape)
    with pytest.raises(ConfigurationError, match="needs domain"):
        choose_bitwidths(net, 1.0, candidates=CANDS, certifier="bounds", input_shape=shape,
                         input_radius=1.0)
    with pytest.raises(ConfigurationError, match="budget form only"):
        choose_bitwidths(net, avg_bits=4.0, candidates=CANDS, certifier="bounds", domain=dom)
    with pytest.raises(ConfigurationError, match="below the certified bound"):
        choose_bitwidths(net, 1e-300, candidates=CANDS, certifier="bounds", domain=dom)
    with pytest.raises(ConfigurationError, match="certifier must be"):
        choose_bitwidths(net, 1.0, candidates=CANDS, certifier="crown", domain=dom)
