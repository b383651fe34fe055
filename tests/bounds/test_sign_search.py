"""Row budgets of the bounds tier (issue 15, part 2; docs/bounds.md "Cost at scale"):
the sign-vector l1 bound by best-first branch-and-bound (``PropagationOptions.sign_rows``,
:mod:`certcompress.bounds.propagation.signs`) and the CROWN row budget per node
(``PropagationOptions.crown_rows_per_node``). Exhaustive search equals the flat
enumeration; a budgeted one lies between the exact maximum and the sum of per-output
bounds; every bound stays above the deviations the shared harness finds; the options are
recorded in the certificate and recertified."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
from pathlib import Path

import _soundness as sh
import pytest
import torch
from _nets import CONV_BLOCKS, VECTOR_BLOCKS, compress, random_conv_net, random_vector_net
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from propagation_helpers import check_tier_sound, random_box
from torch import nn

import certcompress as cc
from certcompress.bounds.numerics import round_up_sum
from certcompress.bounds.propagation import signs as signs_module
from certcompress.bounds.propagation.engine import (
    PairState,
    PropagationOptions,
    capped_row_max,
    output_bounds,
    output_upper_bounds,
    propagate,
)
from certcompress.bounds.propagation.lowering import lower_pair
from certcompress.bounds.propagation.signs import (
    AUTO_SIGN_MIN,
    AUTO_SIGN_WORK,
    block_rows,
    resolve_sign_rows,
    sign_vector_search,
)
from certcompress.bounds.tiers import bounds_tier, tier_registry
from certcompress.cli.domain_options import add_method_group, certify_kwargs
from certcompress.equivalence.tier import BabOptions
from certcompress.errors import ConfigurationError

COMPRESSIONS = st.one_of(
    st.tuples(st.just("prune"), st.sampled_from([0.1, 0.3, 0.6])),
    st.tuples(st.just("round"), st.sampled_from([0.01, 0.05, 0.2])),
    st.tuples(st.just("perturb"), st.sampled_from([0.01, 0.1, 0.5])),
)


def _state(net: nn.Module, comp: nn.Module, dom: cc.InputDomain,
           options: PropagationOptions | None = None) -> PairState:
    pair = lower_pair(cc.trace(net, dom.shape), cc.trace(comp, dom.shape))
    return propagate(pair, dom.lower_tensor().unsqueeze(0), dom.upper_tensor().unsqueeze(0),
                     options)


def _per_and_sum(state: PairState) -> tuple[torch.Tensor, float]:
    """The tier's per-output bounds and their rounded-up sum."""
    m = state.pair.output_size
    eye = torch.eye(m, dtype=torch.float64)
    ub = output_upper_bounds(state, {"d": torch.cat([eye, -eye])})
    per = torch.minimum(torch.maximum(ub[:m], ub[m:]).clamp(min=0.0),
                        output_bounds(state).dev()[0].clamp(min=0.0))
    return per, round_up_sum(per)


def _flat(state: PairState, cap: float) -> float:
    """``min(cap, max_s UB(s))`` over all ``2^m`` sign vectors (the flat enumeration)."""
    m = state.pair.output_size
    signs = torch.tensor(list(itertools.product((1.0, -1.0), repeat=m)), dtype=torch.float64)
    prob = torch.zeros(signs.shape[0], dtype=torch.int64)
    best = capped_row_max(lambda i: output_upper_bounds(state, {"d": signs[i]}), prob,
                          torch.tensor([cap], dtype=torch.float64), 64)
    return min(cap, float(best[0]))


def _rows(state: PairState):  # type: ignore[no-untyped-def]
    return lambda rows: output_upper_bounds(state, {"d": rows})


def _net(kind: str, seed: int, n_out: int, amount: float, box: float
         ) -> tuple[nn.Module, nn.Module, cc.InputDomain]:
    if kind == "conv":
        net, shape = random_conv_net(["conv", "residual"], 2, 4, n_out, seed)
    else:
        net, shape = random_vector_net(["dense", "residual", "dense"], 6, 3, n_out, seed)
    comp = compress(net, "perturb", seed + 1, amount)
    return net, comp, random_box(shape, seed + 2, box, degenerate=0.0)


# ------------------------------------------------------------ the search itself
def _affine(seed: int, n_out: int) -> tuple[nn.Module, nn.Module, cc.InputDomain]:
    """Two affine layers (no ReLU): back-substitution is the exact support function,
    subadditive, so the exhaustive search must equal the enumeration."""
    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, n_out)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    comp = compress(net, "perturb", seed + 1, 0.3)
    return net.eval(), comp.eval(), random_box((1, 4), seed + 2, 2.0, degenerate=0.0)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("block", [0, 3, 5])
def test_exhaustive_search_equals_the_flat_enumeration_on_affine_pairs(seed: int,
                                                                       block: int) -> None:
    net, comp, dom = _affine(seed, 5 + seed % 4)
    state = _state(net, comp, dom)
    per, total = _per_and_sum(state)
    flat = _flat(state, total)
    res = sign_vector_search(_rows(state), per, total, None, block=block)
    assert res.exhaustive
    assert abs(res.value - flat) <= 1e-12 * (abs(flat) + total), (res.value, flat)
    found = sh.attack_models(net, comp, dom, dom.shape, seed)
    sh.assert_sound(found, res.value, None, "exhaustive sign-vector search, affine")


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["vector", "conv"]), seed=st.integers(0, 2 ** 20),
       n_out=st.integers(3, 8), amount=st.sampled_from([0.05, 0.3, 1.0]),
       box=st.sampled_from([0.5, 2.0, 5.0]), block=st.sampled_from([0, 3, 5]))
def test_exhaustive_search_is_sound_and_never_above_the_enumeration(
        kind: str, seed: int, n_out: int, amount: float, box: float, block: int) -> None:
    net, comp, dom = _net(kind, seed, n_out, amount, box)
    state = _state(net, comp, dom)
    per, total = _per_and_sum(state)
    flat = _flat(state, total)
    res = sign_vector_search(_rows(state), per, total, None, block=block)
    assert res.exhaustive
    assert res.value <= flat * (1 + 1e-12) + 1e-300, (res.value, flat)
    found = sh.attack_models(net, comp, dom, dom.shape, seed)
    sh.assert_sound(found, res.value, None, "exhaustive sign-vector search")
    sh.record("sign-vector search, exhaustive", res.value, found.worst)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["vector", "conv", "affine"]), seed=st.integers(0, 2 ** 20),
       n_out=st.integers(4, 8), amount=st.sampled_from([0.05, 0.3, 1.0]),
       box=st.sampled_from([0.5, 2.0, 5.0]), budget=st.integers(0, 80),
       block=st.sampled_from([0, 3, 5]))
def test_budgeted_search_is_sound_and_at_most_the_sum(
        kind: str, seed: int, n_out: int, amount: float, box: float, budget: int,
        block: int) -> None:
    if kind == "affine":
        net, comp, dom = _affine(seed, n_out)
    else:
        net, comp, dom = _net(kind, seed, n_out, amount, box)
    state = _state(net, comp, dom)
    per, total = _per_and_sum(state)
    res = sign_vector_search(_rows(state), per, total, budget, block=block)
    assert res.rows <= budget
    assert res.value <= total
    if kind == "affine":  # subadditive: between the exact maximum and the sum
        flat = _flat(state, total)
        assert res.value >= flat - 1e-12 * (abs(flat) + total), (res.value, flat)
    found = sh.attack_models(net, comp, dom, dom.shape, seed)
    sh.assert_sound(found, res.value, None, f"sign-vector search, {budget} rows")
    sh.record("sign-vector search, budgeted", res.value, found.worst)


def test_more_rows_never_loosen_and_blocks_fit_the_budget() -> None:
    net, comp, dom = _net("vector", 11, 8, 1.0, 5.0)
    state = _state(net, comp, dom)
    per, total = _per_and_sum(state)
    values = [sign_vector_search(_rows(state), per, total, b, block=0).value
              for b in (0, 8, 32, 128, None)]
    assert values[0] == min(total, float(values[0]))
    assert all(a >= b for a, b in zip(values, values[1:])), values
    assert values[-1] <= values[0]
    # the block bounds are computed only where they fit in half the budget
    cost = block_rows(8, 5)
    small = sign_vector_search(_rows(state), per, total, 2 * cost - 1, block=5)
    big = sign_vector_search(_rows(state), per, total, 2 * cost, block=5)
    assert small.rows <= 2 * cost - 1 and cost <= big.rows <= 2 * cost


def test_search_input_errors() -> None:
    with pytest.raises(ValueError, match="budget"):
        sign_vector_search(lambda r: r.sum(1), torch.ones(3, dtype=torch.float64), 3.0, -1)
    empty = sign_vector_search(lambda r: r.sum(1), torch.zeros(0, dtype=torch.float64), 0.0,
                               None)
    assert (empty.value, empty.rows, empty.exhaustive) == (0.0, 0, True)


# ------------------------------------------------------------ the tier
OPTIONS = st.sampled_from([PropagationOptions(sign_rows=0),
                           PropagationOptions(sign_rows=6),
                           PropagationOptions(sign_rows=40),
                           PropagationOptions(sign_rows=None),
                           PropagationOptions(intermediate="interval", sign_rows=10),
                           PropagationOptions(sign_rows=12, slope_steps=3),
                           PropagationOptions(crown_rows_per_node=0),
                           PropagationOptions(crown_rows_per_node=1, sign_rows=20),
                           PropagationOptions(crown_rows_per_node=3, max_rows=4)])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=st.lists(st.sampled_from(VECTOR_BLOCKS), max_size=3),
       width=st.integers(2, 6), n_in=st.integers(1, 4), n_out=st.integers(1, 8),
       seed=st.integers(0, 2 ** 20), compression=COMPRESSIONS,
       box_width=st.sampled_from([0.05, 0.5, 2.0, 5.0]), options=OPTIONS)
def test_vector_tier_with_budgets_is_sound(blocks: list[str], width: int, n_in: int,
                                           n_out: int, seed: int,
                                           compression: tuple[str, float], box_width: float,
                                           options: PropagationOptions) -> None:
    net, shape = random_vector_net(blocks, width, n_in, n_out, seed)
    kind, amount = compression
    comp = compress(net, kind, seed + 7, amount)
    tier, found = check_tier_sound(net, comp, random_box(shape, seed + 3, box_width), seed,
                                   options)
    sh.record("bounds tier, row budgets: random boxes", tier.bound, found)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=st.lists(st.sampled_from(CONV_BLOCKS), min_size=1, max_size=3),
       channels=st.integers(1, 3), size=st.integers(3, 5), n_out=st.integers(1, 8),
       seed=st.integers(0, 2 ** 20), compression=COMPRESSIONS,
       box_width=st.sampled_from([0.1, 1.0, 2.0]), options=OPTIONS)
def test_conv_tier_with_budgets_is_sound(blocks: list[str], channels: int, size: int,
                                         n_out: int, seed: int,
                                         compression: tuple[str, float], box_width: float,
                                         options: PropagationOptions) -> None:
    net, shape = random_conv_net(blocks, channels, size, n_out, seed)
    kind, amount = compression
    comp = compress(net, kind, seed + 7, amount)
    check_tier_sound(net, comp, random_box(shape, seed + 3, box_width), seed, options)


def test_tier_records_the_sign_search() -> None:
    net, comp, dom = _net("vector", 5, 8, 1.0, 5.0)
    g, g2 = cc.trace(net, dom.shape), cc.trace(comp, dom.shape)
    exact = bounds_tier(g, g2, dom, PropagationOptions(sign_rows=256))  # 2^8: all rows
    assert exact.details["sign_search"] == "all" and exact.details["sign_exhaustive"]
    cut = bounds_tier(g, g2, dom, PropagationOptions(sign_rows=10))
    assert cut.details["sign_search"] == "branch-and-bound"
    assert cut.details["sign_rows_budget"] == 10 and cut.details["sign_rows_used"] <= 10
    assert cut.bound <= float(sum(cut.per_output)) * (1 + 1e-12)
    assert cut.per_output == exact.per_output
    auto = bounds_tier(g, g2, dom, PropagationOptions())  # a small pair: every row
    assert auto.bound == exact.bound and "sign_rows_budget" not in auto.details
    free = bounds_tier(g, g2, dom, PropagationOptions(sign_rows=None))
    assert "sign_rows_budget" not in free.details and free.details["sign_search"] == "all"
    assert free.bound == exact.bound


def test_zero_crown_rows_is_the_interval_mode() -> None:
    net, shape = random_conv_net(["conv", "residual", "conv"], 2, 5, 3, 4)
    comp = compress(net, "perturb", 5, 0.3)
    dom = random_box(shape, 6, 2.0)
    g, g2 = cc.trace(net, shape), cc.trace(comp, shape)
    zero = bounds_tier(g, g2, dom, PropagationOptions(crown_rows_per_node=0))
    inter = bounds_tier(g, g2, dom, PropagationOptions(intermediate="interval"))
    assert (zero.bound, zero.per_output) == (inter.bound, inter.per_output)
    assert zero.details["interval_neurons"] > 0 and zero.details["crown_rows_per_node"] == 0
    full = bounds_tier(g, g2, dom, PropagationOptions())
    assert "crown_rows_per_node" not in full.details
    one = bounds_tier(g, g2, dom, PropagationOptions(crown_rows_per_node=1))
    assert 0 < one.details["interval_neurons"] < zero.details["interval_neurons"]


def test_auto_sign_rows_follow_the_pair_size() -> None:
    assert resolve_sign_rows("auto", 1194, 10) is None  # a 784-100-100-10 MLP: all 1024
    assert resolve_sign_rows("auto", 252_426, 10) == AUTO_SIGN_WORK // 252_426  # resnet18
    assert resolve_sign_rows("auto", 10 ** 9, 10) == AUTO_SIGN_MIN
    assert resolve_sign_rows("auto", 10 ** 9, 5) is None  # 32 rows fit the minimum
    assert resolve_sign_rows(7, 10, 10) == 7 and resolve_sign_rows(None, 10 ** 9, 10) is None
    assert resolve_sign_rows("auto", 252_426, 10, cost=6) == AUTO_SIGN_WORK // (6 * 252_426)
    assert resolve_sign_rows("auto", 8_010, 10, cost=6) is None  # the digits CNN: all rows
    assert resolve_sign_rows("auto", 10 ** 9, 10, cost=6) == AUTO_SIGN_MIN // 6


@pytest.mark.parametrize("bad", [{"sign_rows": -1}, {"sign_rows": 2.5}, {"sign_rows": True},
                                 {"sign_rows": "all"},
                                 {"crown_rows_per_node": -3}, {"crown_rows_per_node": "4"}])
def test_budget_options_are_checked(bad: dict[str, object]) -> None:
    name = next(iter(bad))
    with pytest.raises(ConfigurationError, match=name):
        PropagationOptions(**bad)  # type: ignore[arg-type]


# ------------------------------------------------------------ the certificate
def test_certificate_records_the_budgets_and_recertifies(tmp_path: Path) -> None:
    net, comp, dom = _net("vector", 8, 8, 0.3, 2.0)
    net, comp = net.float(), comp.float()
    opts = PropagationOptions(sign_rows=14, crown_rows_per_node=2)
    cert = cc.certify(net, comp, domain=dom, search_steps=0, methods=("bounds",),
                      propagation=opts)
    tier = cert.by_method["bounds"]
    assert (tier.details["sign_rows_budget"], tier.details["crown_rows_per_node"]) == (14, 2)
    again = cc.Certificate.from_json(cert.to_json())
    stated = tier_registry().get("bounds").stated_options(again.by_method["bounds"])
    assert stated == dataclasses.replace(opts, device="cpu")  # re-checked on the CPU
    path = tmp_path / "c.onnx"
    cc.export_onnx(comp, path, certificate=cert, original=net, search_steps=2)
    report = cc.verify_onnx(path, original=net, search_steps=2, recertify=True)
    status = {c.name: c.status for c in report.checks}
    assert status["recertify"] == "passed", report
    # a certificate without the fields (made before they existed, or where "auto" gave
    # every sign vector) restates "auto" and no CROWN budget
    old = {k: v for k, v in tier.details.items()
           if k not in ("sign_rows_budget", "crown_rows_per_node", "interval_neurons")}
    bare = cc.certificate.MethodBound(method="bounds", bound=tier.bound,
                                      per_output=tier.per_output, scope=tier.scope,
                                      seconds=0.0, exact=False, details=old)
    restated = tier_registry().get("bounds").stated_options(bare)
    assert (restated.sign_rows, restated.crown_rows_per_node) == ("auto", None)


def test_every_sign_vector_on_a_budgeted_pair_is_restated(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """Where "auto" would budget (here: forced by a tiny AUTO_SIGN_WORK), a bound computed
    with every sign vector records 2^m rows, so recertification does not use "auto"."""
    monkeypatch.setattr(signs_module, "AUTO_SIGN_WORK", 1)
    net, comp, dom = _net("vector", 9, 8, 0.3, 2.0)
    g, g2 = cc.trace(net, dom.shape), cc.trace(comp, dom.shape)
    auto = bounds_tier(g, g2, dom, PropagationOptions())
    assert auto.details["sign_search"] == "branch-and-bound"
    assert auto.details["sign_rows_budget"] == AUTO_SIGN_MIN
    every = bounds_tier(g, g2, dom, PropagationOptions(sign_rows=None))
    assert every.details["sign_search"] == "all" and every.details["sign_rows_budget"] == 256
    tier = tier_registry().get("bounds")
    assert tier.stated_options(every).sign_rows == 256
    assert tier.stated_options(auto).sign_rows == AUTO_SIGN_MIN
    assert bounds_tier(g, g2, dom, tier.stated_options(every)).bound == every.bound


def test_cli_budget_and_routing_options_reach_the_tiers() -> None:
    """``--sign-rows``, ``--crown-rows-per-node`` and ``--no-chain`` mirror the Python
    options, for the bounds tier and through ``--bab-time`` for the bab tier."""
    p = argparse.ArgumentParser()
    add_method_group(p)
    assert certify_kwargs(p.parse_args([]), (1, 2))["propagation"] == PropagationOptions()
    kw = certify_kwargs(p.parse_args(["--sign-rows", "40", "--crown-rows-per-node", "8",
                                      "--no-chain"]), (1, 2))
    assert kw["propagation"] == PropagationOptions(sign_rows=40, crown_rows_per_node=8,
                                                   chain=False)
    every = certify_kwargs(p.parse_args(["--sign-rows", "all"]), (1, 2))["propagation"]
    assert every.sign_rows is None
    bab = certify_kwargs(p.parse_args(["--method", "bab", "--bab-time", "2", "--sign-rows",
                                       "16", "--no-chain"]), (1, 2))["propagation"]
    assert isinstance(bab, BabOptions)
    assert (bab.sign_rows, bab.chain, bab.time_budget) == (16, False, 2.0)
    for bad in ("-1", "many"):
        with pytest.raises(SystemExit):
            p.parse_args(["--sign-rows", bad])


def test_a_certificate_from_before_the_budget_is_restated_with_every_sign_vector() -> None:
    """A bounds-tier entry that maximized over sign vectors but records no
    ``sign_rows_used`` was made before the budget (every sign vector): recertify must
    recompute it that way, not with ``"auto"`` (a budget, looser, on large pairs)."""
    net = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 3)).double().eval()
    comp = compress(net, "round", 0, 0.05)
    dom = cc.InputDomain.box(-1.0, 1.0, shape=(1, 3))
    made = bounds_tier(cc.trace(net, (1, 3)), cc.trace(comp, (1, 3)), dom)
    assert made.details["sign_vectors"] is True and "sign_rows_used" in made.details
    tier = tier_registry().get("bounds")
    assert tier.stated_options(made).sign_rows == "auto"
    old = {k: v for k, v in made.details.items()
           if k not in ("sign_rows_used", "sign_exhaustive", "sign_search", "sign_rows_budget")}
    assert tier.stated_options(dataclasses.replace(made, details=old)).sign_rows is None
    cut = {**old, "sign_rows_used": 10, "sign_rows_budget": 10}
    assert tier.stated_options(dataclasses.replace(made, details=cut)).sign_rows == 10
