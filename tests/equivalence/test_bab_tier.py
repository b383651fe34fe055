"""The ``bab`` tier: a worst-case bound over the leaf regions of a branch-and-bound
search. Attacked one-sidedly with the shared harness (bound >= everything found), never
looser than the one-pass ``bounds`` tier, tighter where splitting helps, opt-in, and
its typed details survive a certificate's JSON round trip."""

from __future__ import annotations

import argparse

import _soundness as sh
import pytest
import torch
from _pairs import cnn, compress, mlp

import certcompress as cc
from certcompress.bounds.propagation.engine import PropagationOptions
from certcompress.bounds.tiers import GraphPair, tier_registry
from certcompress.certificate import details_type
from certcompress.cli.domain_options import add_method_group, certify_kwargs
from certcompress.domain import InputDomain
from certcompress.equivalence.tier import BabDetails, BabOptions, BabTier
from certcompress.errors import ConfigurationError

# a region budget, no time budget: the runs are deterministic and nothing depends on the
# machine's speed
OPTS = BabOptions(time_budget=None, max_regions=600, batch=32)


def _pair(net: torch.nn.Module, comp: torch.nn.Module, dom: InputDomain) -> GraphPair:
    return GraphPair(cc.trace(net, dom.shape), cc.trace(comp, dom.shape))


CASES = [
    ("mlp-float16", lambda: mlp(2, 12, 2, 3, 1), "float16", 1.0),
    ("mlp-round", lambda: mlp(3, 10, 2, 2, 2), "round", 1.0),
    ("mlp-prune", lambda: mlp(1, 16, 3, 2, 3), "prune", 2.0),
    ("cnn-round", lambda: cnn(3, 3, 2, 4), "round", 0.5),
]


@pytest.mark.parametrize("name,make,kind,r", CASES, ids=[c[0] for c in CASES])
def test_bab_bound_is_sound_and_never_looser_than_bounds(name: str, make: object, kind: str,
                                                         r: float) -> None:
    net = make()  # type: ignore[operator]
    comp = compress(net, kind)
    n_in = 3 if name.startswith("cnn") else int(net[0].in_features)
    dom = InputDomain.box(-r, r, shape=(1, n_in))
    pair = _pair(net, comp, dom)
    bab = tier_registry().get("bab").bound(pair, dom, OPTS)
    bounds = tier_registry().get("bounds").bound(pair, dom)
    lo, hi = sh.box(dom, dom.shape)
    found = sh.attack_models(net, comp, dom, dom.shape, seed=7, per_output=True)
    found = found.merged(sh.measure(sh.f64(net), sh.f64(comp), sh.dense_grid(lo, hi)))
    sh.assert_sound(found, bab.bound, bab.per_output, what=f"bab {name}")
    assert bab.bound <= bounds.bound
    assert all(a <= b for a, b in zip(bab.per_output, bounds.per_output))
    assert isinstance(bab.details, BabDetails)
    assert bab.details.regions >= 1 and 0.0 <= bab.details.proven_fraction <= 1.0
    assert bab.details.found is not None and bab.details.found <= bab.bound
    sh.record(f"bab tier {name}", bab.bound, found.worst, bounds_tier=bounds.bound)


def test_bab_tightens_a_wide_domain() -> None:
    """Where one pass is loose (a wide box, a deeper net), the leaves' maximum is well
    below it and above everything the attack finds."""
    net = mlp(2, 16, 3, 2, 11)
    comp = compress(net, "round")
    dom = InputDomain.box(-3.0, 3.0, shape=(1, 2))
    pair = _pair(net, comp, dom)
    bab = tier_registry().get("bab").bound(pair, dom, BabOptions(time_budget=None,
                                                                 max_regions=2000))
    one = tier_registry().get("bounds").bound(pair, dom)
    d = bab.details
    assert d.search_bound is not None and d.search_bound < 0.5 * d.one_pass_bound
    assert bab.bound < 0.5 * one.bound
    lo, hi = sh.box(dom, dom.shape)
    found = sh.attack_models(net, comp, dom, dom.shape, seed=3, per_output=True)
    found = found.merged(sh.measure(sh.f64(net), sh.f64(comp), sh.dense_grid(lo, hi)))
    sh.assert_sound(found, bab.bound, bab.per_output, what="bab wide box")
    sh.record("bab tier wide box", bab.bound, found.worst, bounds_tier=one.bound)


def test_region_budget_is_deterministic_and_respected() -> None:
    net = mlp(3, 12, 2, 2, 5)
    comp = compress(net, "float16")
    dom = InputDomain.box(-2.0, 2.0, shape=(1, 3))
    pair = _pair(net, comp, dom)
    opts = BabOptions(time_budget=None, max_regions=300, batch=16, tolerance=1e-6)
    a = BabTier().bound(pair, dom, opts)
    b = BabTier().bound(pair, dom, opts)
    assert a.bound == b.bound and a.per_output == b.per_output
    # at most one round (batch regions) past the budget, per attempt
    assert a.details.regions <= 300 + 16 * a.details.attempts


def test_certify_with_bab_is_opt_in_and_loads_back(tmp_path: object) -> None:
    net = mlp(2, 10, 2, 2, 8)
    comp = compress(net, "round")
    dom = InputDomain.box(-1.0, 1.0, shape=(1, 2))
    assert "bab" in tier_registry().names()
    assert "bab" not in tier_registry().defaults(with_domain=True)
    plain = cc.certify(net, comp, domain=dom)
    assert "bab" not in plain.by_method
    cert = cc.certify(net, comp, domain=dom, methods=("path-metric", "bounds", "bab"),
                      propagation=BabOptions(time_budget=None, max_regions=400))
    assert cert.by_method["bab"].bound <= cert.by_method["bounds"].bound
    assert cert.bound == min(t.bound for t in cert.by_method.values())
    assert "tier bab" in cert.summary()
    back = cc.Certificate.from_json(cert.to_json())
    assert details_type("bab") is BabDetails
    d = back.by_method["bab"].details
    assert isinstance(d, BabDetails)
    assert d == cert.by_method["bab"].details
    assert d.regions == cert.by_method["bab"].details["regions"]
    # a plain PropagationOptions reaches the tier with its own fields, search defaults
    c2 = cc.certify(net, comp, domain=dom, methods=("bab",),
                    propagation=PropagationOptions(intermediate="interval"))
    assert c2.by_method["bab"].details["intermediate"] == "interval"


def test_bab_details_reject_bad_fields() -> None:
    net = mlp(2, 6, 1, 2, 9)
    dom = InputDomain.box(-1.0, 1.0, shape=(1, 2))
    cert = cc.certify(net, compress(net, "round"), domain=dom, methods=("bab",),
                      propagation=BabOptions(time_budget=None, max_regions=50))
    data = cert.to_dict()
    data["by_method"]["bab"]["details"]["regions"] = "many"
    with pytest.raises(cc.CertificateError, match="regions"):
        cc.Certificate.from_dict(data)


@pytest.mark.parametrize("kw,match", [
    ({"time_budget": 0}, "time_budget"), ({"time_budget": float("nan")}, "time_budget"),
    ({"max_regions": 0}, "max_regions"), ({"batch": 1}, "batch"),
    ({"split_candidates": 0}, "split_candidates"), ({"optimize_steps": -1}, "optimize"),
    ({"region_intermediate": "interval"}, "region_intermediate"),
    ({"tolerance": 0.0}, "tolerance"), ({"intermediate": "bogus"}, "intermediate"),
])
def test_bab_options_bad_input(kw: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        BabOptions(**kw)  # type: ignore[arg-type]


def test_certify_time_budget_reaches_the_bab_tier() -> None:
    net = mlp(2, 10, 2, 2, 8)
    comp = compress(net, "round")
    dom = InputDomain.box(-1.0, 1.0, shape=(1, 2))
    cert = cc.certify(net, comp, domain=dom, methods=("path-metric", "bab"), time_budget=3.0,
                      propagation=PropagationOptions(intermediate="interval"))
    d = cert.by_method["bab"].details
    assert d["time_budget"] == 3.0 and d["intermediate"] == "interval"
    assert d["seconds"] <= 3.0 + 2.0  # one round may finish after the budget
    found = sh.attack_models(net, comp, dom, dom.shape, seed=3)
    sh.assert_sound(found, cert.by_method["bab"].bound, what="bab with time_budget")
    with pytest.raises(ConfigurationError, match="do not include 'bab'"):
        cc.certify(net, comp, domain=dom, time_budget=3.0)
    # the CLI mirror: --bab-time with --method bab
    kw = certify_kwargs(_parsed(["--method", "bab", "--bab-time", "2"]), (1, 2))
    assert isinstance(kw["propagation"], BabOptions)
    assert kw["propagation"].time_budget == 2.0
    with pytest.raises(ConfigurationError, match="--method bab"):
        certify_kwargs(_parsed(["--bab-time", "2"]), (1, 2))


def _parsed(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_method_group(parser)
    return parser.parse_args(argv)
