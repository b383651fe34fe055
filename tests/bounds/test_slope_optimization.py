"""Optimized ReLU slopes in the bounds tier (``PropagationOptions.slope_steps``,
docs/bounds.md "Optimized slopes"): one-sided soundness against the shared harness
(float64 and float32), never looser than the default relaxation, slopes always in their
ranges (and out-of-range slopes caught by the harness), recorded in the certificate and
recertified."""

from __future__ import annotations

import argparse
from dataclasses import replace
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
from certcompress.bounds.propagation.engine import (
    PropagationOptions,
    output_upper_bounds,
    propagate,
)
from certcompress.bounds.propagation.lowering import lower_pair
from certcompress.bounds.propagation.optimize import (
    optimized_largest_row,
    optimized_output_upper_bounds,
    project_slopes,
)
from certcompress.bounds.propagation.relax import ReluRelaxation
from certcompress.bounds.tiers import bounds_tier, tier_registry
from certcompress.cli.domain_options import add_method_group, certify_kwargs
from certcompress.equivalence.tier import BabOptions
from certcompress.errors import ConfigurationError

COMPRESSIONS = st.one_of(
    st.tuples(st.just("prune"), st.sampled_from([0.1, 0.3, 0.6])),
    st.tuples(st.just("round"), st.sampled_from([0.01, 0.05, 0.2])),
    st.tuples(st.just("perturb"), st.sampled_from([0.01, 0.1, 0.5])),
    st.tuples(st.just("flip"), st.sampled_from([0.05, 0.3])),
)
OPTIONS = st.sampled_from([PropagationOptions(slope_steps=4),
                           PropagationOptions(slope_steps=8, slope_lr=0.5),
                           PropagationOptions(intermediate="interval", slope_steps=6),
                           PropagationOptions(max_rows=4, sign_vectors_up_to=0,
                                              slope_steps=5)])


def _check_never_looser(net: nn.Module, comp: nn.Module, dom: cc.InputDomain, seed: int,
                        options: PropagationOptions) -> None:
    opt, found = check_tier_sound(net, comp, dom, seed, options)
    g, g2 = cc.trace(net, dom.shape), cc.trace(comp, dom.shape)
    base = bounds_tier(g, g2, dom, replace(options, slope_steps=0))
    assert opt.bound <= base.bound, (opt.bound, base.bound)
    assert all(a <= b for a, b in zip(opt.per_output, base.per_output)), \
        (opt.per_output, base.per_output)
    assert opt.details["slope_steps"] == options.slope_steps
    assert "slope_steps" not in base.details
    sh.record("bounds tier, optimized slopes: random boxes", opt.bound, found)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=st.lists(st.sampled_from(VECTOR_BLOCKS), max_size=3),
       width=st.integers(2, 6), n_in=st.integers(1, 4), n_out=st.integers(1, 3),
       seed=st.integers(0, 2 ** 20), compression=COMPRESSIONS, include_bn=st.booleans(),
       box_width=st.sampled_from([0.05, 0.5, 2.0, 5.0]), options=OPTIONS)
def test_vector_optimized_slopes_are_sound_and_never_looser(
        blocks: list[str], width: int, n_in: int, n_out: int, seed: int,
        compression: tuple[str, float], include_bn: bool, box_width: float,
        options: PropagationOptions) -> None:
    net, shape = random_vector_net(blocks, width, n_in, n_out, seed)
    kind, amount = compression
    comp = compress(net, kind, seed + 7, amount, include_bn=include_bn)
    _check_never_looser(net, comp, random_box(shape, seed + 3, box_width), seed, options)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=st.lists(st.sampled_from(CONV_BLOCKS), max_size=3),
       channels=st.integers(1, 3), size=st.integers(3, 5), n_out=st.integers(1, 2),
       seed=st.integers(0, 2 ** 20), compression=COMPRESSIONS,
       box_width=st.sampled_from([0.1, 1.0, 2.0]), options=OPTIONS)
def test_conv_optimized_slopes_are_sound_and_never_looser(
        blocks: list[str], channels: int, size: int, n_out: int, seed: int,
        compression: tuple[str, float], box_width: float,
        options: PropagationOptions) -> None:
    net, shape = random_conv_net(blocks, channels, size, n_out, seed)
    kind, amount = compression
    comp = compress(net, kind, seed + 7, amount)
    _check_never_looser(net, comp, random_box(shape, seed + 3, box_width), seed, options)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(width=st.integers(2, 6), n_in=st.integers(1, 4), n_out=st.integers(1, 3),
       seed=st.integers(0, 2 ** 20), compression=COMPRESSIONS,
       box_width=st.sampled_from([0.5, 2.0, 5.0]))
def test_float32_certificate_with_optimized_slopes_is_sound(
        width: int, n_in: int, n_out: int, seed: int, compression: tuple[str, float],
        box_width: float) -> None:
    net, shape = random_vector_net(["dense", "dense"], width, n_in, n_out, seed)
    kind, amount = compression
    comp = compress(net, kind, seed + 7, amount)
    dom = random_box(shape, seed + 3, box_width)
    cert = cc.certify(net, comp, domain=dom, search_steps=0, arithmetic="float32",
                      methods=("bounds",), propagation=PropagationOptions(slope_steps=6))
    tier = cert.by_method["bounds"]
    assert tier.details["slope_steps"] == 6
    found = sh.attack_models(net, comp, dom, shape, seed, float32=True, per_output=True)
    sh.assert_sound(found, tier.bound, tier.per_output, "bounds tier, optimized, float32")
    sh.record("bounds tier, optimized slopes: float32", tier.bound, found.worst)


# ----------------------------------------------------------------- the slopes' ranges
def _wide_pair(seed: int) -> tuple[nn.Module, nn.Module, cc.InputDomain]:
    net, shape = random_vector_net(["dense", "dense"], 6, 3, 2, seed)
    comp = compress(net, "round", seed + 1, 0.2)
    return net, comp, random_box(shape, seed + 2, 5.0, degenerate=0.0)


def _state(net: nn.Module, comp: nn.Module, dom: cc.InputDomain):  # type: ignore[no-untyped-def]
    pair = lower_pair(cc.trace(net, dom.shape), cc.trace(comp, dom.shape))
    return propagate(pair, dom.lower_tensor().unsqueeze(0), dom.upper_tensor().unsqueeze(0))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_used_slopes_stay_in_range_under_huge_steps(seed: int) -> None:
    net, comp, dom = _wide_pair(seed)
    state = _state(net, comp, dom)
    eye = torch.eye(2, dtype=torch.float64)
    res = optimized_output_upper_bounds(state, {"d": torch.cat([eye, -eye])}, 6, lr=50.0)
    assert res.slopes, "the pair has unstable ReLUs: slopes were optimized"
    for i, p in res.slopes.items():
        r = state.relax[i]
        assert isinstance(r, ReluRelaxation)
        for name, t in p.items():
            assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0, (i, name)
        stable = ~(r.unstable_z | r.unstable_c).expand_as(p["theta"])
        assert bool((p["theta"][stable] == 0).all())
    assert bool((res.bound <= res.default).all())
    # the bound those slopes give is sound (float64 harness, output by output)
    found = sh.attack_models(net, comp, dom, dom.shape, seed, per_output=True)
    per = torch.maximum(res.bound[:2], res.bound[2:]).clamp(min=0.0)
    sh.assert_sound(found, float(per.sum()), per.tolist(), "optimized rows, huge steps")


def _skip_pair() -> tuple[nn.Module, nn.Module, cc.InputDomain]:
    """``f(x) = 3x - ReLU(x)`` over ``[-1, 2]`` (maximum 4 at ``x = 2``) through a
    second, always active ReLU; the compressed network is 0."""
    net = nn.Sequential(nn.Linear(1, 2), nn.ReLU(), nn.Linear(2, 1)).double()
    comp = nn.Sequential(nn.Linear(1, 2), nn.ReLU(), nn.Linear(2, 1)).double()
    with torch.no_grad():
        for m in (net, comp):
            m[0].weight.copy_(torch.tensor([[1.0], [1.0]]))
            m[0].bias.copy_(torch.tensor([0.0, 10.0]))
        net[2].weight.copy_(torch.tensor([[-1.0, 3.0]]))
        net[2].bias.fill_(-30.0)
        comp[2].weight.zero_()
        comp[2].bias.zero_()
    return net.eval(), comp.eval(), cc.InputDomain.box(-1.0, 2.0, shape=(1, 1))


def test_out_of_range_slopes_are_caught_and_projection_fixes_them() -> None:
    net, comp, dom = _skip_pair()
    state = _state(net, comp, dom)
    (i,) = [j for j, r in state.relax.items()
            if isinstance(r, ReluRelaxation) and bool(r.unstable_z.any())]
    r = state.relax[i]
    assert isinstance(r, ReluRelaxation)
    raw = {i: {"alpha_z": torch.full_like(r.alz, 1.5), "alpha_c": r.alc.clone(),
               "theta": torch.zeros_like(r.alz)}}
    row = {"d": torch.ones((1, 1), dtype=torch.float64)}
    found = sh.attack_models(net, comp, dom, dom.shape, 0)
    assert found.worst >= 4.0 - 1e-9
    bad = float(output_upper_bounds(state, row, params=raw)[0])
    with pytest.raises(AssertionError, match="exceeds the bound"):
        sh.assert_sound(found, bad, None, "alpha_z = 1.5 (out of range)")
    good = float(output_upper_bounds(state, row, params=project_slopes(state, raw, None))[0])
    sh.assert_sound(found, good, None, "alpha_z projected to 1")
    res = optimized_output_upper_bounds(state, row, 5, lr=2.0)
    sh.assert_sound(found, float(res.bound[0]), None, "optimized")


def test_largest_row_is_the_maximum_of_sound_row_bounds() -> None:
    net, comp, dom = _wide_pair(4)
    state = _state(net, comp, dom)
    signs = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]],
                         dtype=torch.float64)
    default = output_upper_bounds(state, {"d": signs})
    every = optimized_output_upper_bounds(state, {"d": signs}, 6).bound
    top, rows = optimized_largest_row(state, {"d": signs}, 6)
    assert 1 <= rows <= 4
    assert float(every.max()) <= top <= float(default.max())
    found = sh.attack_models(net, comp, dom, dom.shape, 4)
    sh.assert_sound(found, top, None, "largest sign row")


def test_options_are_checked() -> None:
    for bad in ({"slope_steps": -1}, {"slope_steps": 1.5}, {"slope_steps": True},
                {"slope_lr": 0.0}, {"slope_lr": float("nan")}):
        with pytest.raises(ConfigurationError, match="slope_"):
            PropagationOptions(**bad)  # type: ignore[arg-type]


# ------------------------------------------------------------------ the certificate
def test_certificate_records_the_steps_and_recertifies(tmp_path: Path) -> None:
    net, comp, dom = _wide_pair(5)
    net, comp = net.float(), comp.float()
    opts = PropagationOptions(slope_steps=7, slope_lr=0.2)
    cert = cc.certify(net, comp, domain=dom, search_steps=0, methods=("bounds",),
                      propagation=opts)
    tier = cert.by_method["bounds"]
    assert (tier.details["slope_steps"], tier.details["slope_lr"]) == (7, 0.2)
    assert tier.details["slope_rows"] >= 1
    again = cc.Certificate.from_json(cert.to_json())
    assert tier_registry().get("bounds").stated_options(again.by_method["bounds"]) == \
        replace(opts, device="cpu")  # re-checked on the CPU
    path = tmp_path / "c.onnx"
    cc.export_onnx(comp, path, certificate=cert, original=net, search_steps=2)
    report = cc.verify_onnx(path, original=net, search_steps=2, recertify=True)
    status = {c.name: c.status for c in report.checks}
    assert status["recertify"] == "passed", report
    assert status["bound"] == "passed"


def test_cli_slope_steps() -> None:
    p = argparse.ArgumentParser()
    add_method_group(p)
    args = p.parse_args(["--slope-steps", "9", "--slope-lr", "0.3"])
    kw = certify_kwargs(args, (1, 2))
    assert kw["propagation"] == PropagationOptions(slope_steps=9, slope_lr=0.3)
    assert certify_kwargs(p.parse_args([]), (1, 2))["propagation"] == PropagationOptions()
    bab = certify_kwargs(p.parse_args(["--method", "bab", "--bab-time", "2", "--slope-steps",
                                       "4"]), (1, 2))["propagation"]
    assert isinstance(bab, BabOptions) and (bab.slope_steps, bab.time_budget) == (4, 2.0)
    with pytest.raises(ConfigurationError, match="slope_steps"):
        certify_kwargs(p.parse_args(["--slope-steps", "-2"]), (1, 2))
