"""The slope-optimized single pass (alpha/theta per row and neuron, gradient steps on the
bound) and strong branching, against dense grids on pairs with one to three inputs:
every optimized row bounds the grid's values from the right side (upper rows above the
largest value, lower rows below the smallest), is never looser than the default
relaxation, and the search with either option never verifies where the grid violates."""

from __future__ import annotations

from fractions import Fraction

import torch
from _pairs import build, compress, grid, mlp, outputs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import certcompress as cc
from certcompress.bounds.propagation.interval import PairBounds
from certcompress.bounds.propagation.lowering import lower_pair
from certcompress.bounds.propagation.relax import SPLIT_TIES
from certcompress.domain import InputDomain
from certcompress.equivalence.chain import ChainState, chain_from_pair, ramp_slopes

pairs = st.fixed_dictionaries({
    "n_in": st.integers(1, 3), "arch": st.sampled_from(["mlp", "mlp", "cnn"]),
    "kind": st.sampled_from(["prune", "round", "float16"]), "seed": st.integers(0, 10_000),
    "half": st.sampled_from([0.25, 1.0, 2.0]), "depth": st.integers(1, 3),
})


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(p=pairs, steps=st.sampled_from([1, 5, 15]))
def test_optimized_rows_bound_the_grid_one_sided(p: dict, steps: int) -> None:
    net, comp, dom = build(p)
    x = grid(dom, p["n_in"])
    f, g = outputs(net, comp, x)
    pair = lower_pair(cc.trace(net, dom.shape), cc.trace(comp, dom.shape))
    chain = chain_from_pair(pair)
    assert chain is not None
    lo, hi = dom.lower_tensor().reshape(1, -1), dom.upper_tensor().reshape(1, -1)
    m = f.shape[1]
    eye = torch.eye(m, dtype=torch.float64)
    zero = torch.zeros_like(eye)
    # rows: +-(f - f')_k (difference only) and +-f_k mixed with +-(f - f')_k
    cd = torch.cat([eye, -eye, eye, -eye])
    cz = torch.cat([zero, zero, eye, -eye])
    prob = torch.zeros(4 * m, dtype=torch.long)
    state = ChainState(chain, lo, hi, intermediate="crown", quantities=("z", "d"))
    base, _ = state.upper_bounds(cz, cd, prob)
    opt, lx = state.upper_bounds(cz, cd, prob, optimize=steps)
    assert lx.shape == (4 * m, p["n_in"])
    d = f - g
    upper = torch.cat([d.amax(0), (-d).amax(0), (f + d).amax(0), (-f - d).amax(0)])
    # one-sided: each row is an upper bound of its form (the negated rows are lower
    # bounds of the form itself), checked separately
    tol = 1e-9 * (1 + upper.abs())
    assert bool((opt[:m] >= upper[:m] - tol[:m]).all()), (opt[:m], upper[:m])
    assert bool((-opt[m:2 * m] <= d.amin(0) + tol[m:2 * m]).all())
    assert bool((opt[2 * m:] >= upper[2 * m:] - tol[2 * m:]).all())
    assert bool((opt <= base).all()), (opt, base)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(p=pairs, factor=st.sampled_from([0.5, 0.97, 1.05, 3.0]),
       option=st.sampled_from([{"split_candidates": 3}, {"optimize_steps": 4}]))
def test_options_never_verify_where_grid_violates(p: dict, factor: float, option: dict
                                                  ) -> None:
    net, comp, dom = build(p)
    f, g = outputs(net, comp, grid(dom, p["n_in"]))
    worst = float((f - g).abs().amax(1).max())
    if worst == 0.0:
        return
    eps = worst * factor
    res = cc.verify_equivalence(net, comp, dom, epsilon=eps, timeout=1, **option)
    if worst > eps:
        assert res.status != "verified", (worst, eps, res.summary())
    if res.status == "verified":
        assert res.bound is not None and worst * (1 - 1e-9) <= res.bound <= eps
    if res.status == "falsified":
        assert res.counterexample is not None
        xc = torch.tensor(res.counterexample, dtype=torch.float64).reshape(dom.shape)
        assert bool(dom.contains(xc).all())
        fx, gx = outputs(net, comp, xc)
        assert float((fx - gx).abs().max()) > eps


def test_strong_branching_decides_far_from_the_threshold() -> None:
    net, comp, dom = build({"n_in": 2, "arch": "mlp", "kind": "round", "seed": 3,
                            "half": 1.0, "depth": 2})
    f, g = outputs(net, comp, grid(dom, 2))
    worst = float((f - g).abs().amax(1).max())
    ok = cc.verify_equivalence(net, comp, dom, epsilon=2.5 * worst, timeout=20,
                               split_candidates=2)
    assert ok.status == "verified", ok.summary()
    assert ok.details["bounded"] >= ok.regions
    bad = cc.verify_equivalence(net, comp, dom, epsilon=worst / 2.5, timeout=20,
                                split_candidates=2)
    assert bad.status == "falsified", bad.summary()


def test_bad_option_values_are_refused() -> None:
    net, comp, dom = build({"n_in": 1, "arch": "mlp", "kind": "round", "seed": 0,
                            "half": 1.0, "depth": 1})
    for kw in ({"split_candidates": 0}, {"optimize_steps": -1}, {"optimize_steps": 1.5}):
        try:
            cc.verify_equivalence(net, comp, dom, epsilon=0.1, **kw)
        except cc.ConfigurationError as e:
            assert next(iter(kw)) in str(e)
        else:
            raise AssertionError(f"{kw} accepted")


@settings(max_examples=60, deadline=None)
@given(zl=st.floats(-5, 0, exclude_max=True), zu=st.floats(0, 5, exclude_min=True),
       a=st.floats(-1e-2, 1e-2), w=st.floats(0, 1e-2), sign=st.sampled_from([1.0, -1.0]))
def test_ramp_slopes_bound_the_relu_difference_on_a_dense_grid(
        zl: float, zu: float, a: float, w: float, sign: float) -> None:
    """``Delta = ReLU(z) - ReLU(z - d) >= kz z`` and ``<= -kc (z - d)`` on every point of
    a dense grid of the pre-activation box (``c = z - d`` within its own interval)."""
    dl, du = (abs(a), abs(a) + w) if sign > 0 else (-abs(a) - w, -abs(a))
    cl, cu = zl - du, zu - dl
    t = lambda v: torch.tensor([[v]], dtype=torch.float64)  # noqa: E731
    b = PairBounds(t(zl), t(zu), t(cl), t(cu), t(dl), t(du))
    kz, kc = ramp_slopes(b)
    assert 0.0 <= float(kz) <= 1.0 and 0.0 <= float(kc) <= 1.0
    z = torch.linspace(zl, zu, 801, dtype=torch.float64)
    z = torch.cat([z, torch.linspace(-2 * abs(du) - 1e-9, 2 * abs(du) + 1e-9, 201,
                                     dtype=torch.float64).clamp(zl, zu)])
    d = torch.linspace(dl, du, 41, dtype=torch.float64)
    zz, dd = torch.meshgrid(z, d, indexing="ij")
    delta = zz.clamp(min=0) - (zz - dd).clamp(min=0)
    slack = 1e-12 * (1 + zz.abs())
    # the ramps replace the chords' constant 0 only where the difference has one sign
    if dl >= 0:
        assert float(kc) == 0.0 or du <= 0
        assert bool((delta >= float(kz) * zz - slack).all())
    else:
        assert float(kz) == 0.0
    if du <= 0:
        assert bool((delta <= -float(kc) * (zz - dd) + slack).all())
    else:
        assert float(kc) == 0.0
    if sign > 0 and zu > -zl and dl > 1e-300:
        # the ramp is used where it applies (a slope that underflows to 0 is valid)
        assert float(kz) > 0


def test_ramp_is_tighter_than_the_value_picked_split_on_small_boxes() -> None:
    """The structured relaxation (difference chords only where a ReLU can switch, the
    ramps, the exact joint form elsewhere) against the per-neuron value-picked split, on
    a float16 pair over a small box: sound against samples and tighter than the split
    picked by plain comparisons (``SPLIT_TIES`` "strict", the rule the ramps were built
    against). The near-tie rule's split (the default since) settles exact ties on the
    joint form and is sound too; on this pair it is slightly tighter than the ramps, as
    any per-neuron choice may be."""
    net = mlp(3, 16, 4, 2, 5)
    comp = compress(net, "float16")
    c = torch.tensor([[0.1, -0.2, 0.3]], dtype=torch.float64)
    dom = InputDomain.box(c - 0.05, c + 0.05, shape=(1, 3))
    pair = lower_pair(cc.trace(net, dom.shape), cc.trace(comp, dom.shape))
    chain = chain_from_pair(pair)
    assert chain is not None
    lo, hi = dom.lower_tensor().reshape(1, -1), dom.upper_tensor().reshape(1, -1)
    eye = torch.eye(2, dtype=torch.float64)
    cd, prob = torch.cat([eye, -eye]), torch.zeros(4, dtype=torch.long)
    new = ChainState(chain, lo, hi, intermediate="crown", ramp=True).upper_bounds(
        None, cd, prob)[0]
    token = SPLIT_TIES.set("strict")
    try:
        old = ChainState(chain, lo, hi, intermediate="crown", ramp=False).upper_bounds(
            None, cd, prob)[0]
    finally:
        SPLIT_TIES.reset(token)
    tolerant = ChainState(chain, lo, hi, intermediate="crown", ramp=False).upper_bounds(
        None, cd, prob)[0]
    f, g = outputs(net, comp, grid(dom, 3))
    d = f - g
    truth = torch.cat([d.amax(0), (-d).amax(0)])
    for bound in (new, old, tolerant):
        assert bool((bound >= truth - 1e-12).all()), (bound, truth)
    assert float(new.max()) <= float(old.max())


def test_ramp_slopes_are_rounded_down_in_the_subnormal_range() -> None:
    """``kz = min(dl, zu) / zu`` rounded to nearest can lie above the exact quotient where it
    is subnormal (3 * 2^-1074 / 2 rounds up to 2^-1072); the slope must not exceed it."""
    tiny = 2.0 ** -1074
    for k in (1, 3, 5, 7, 9):
        dl = k * tiny
        t = lambda v: torch.tensor([[v]], dtype=torch.float64)  # noqa: E731
        b = PairBounds(t(-1.0), t(2.0), t(-1.0 - dl), t(2.0 - dl), t(dl), t(dl))
        kz, _ = ramp_slopes(b)
        assert Fraction(float(kz)) <= Fraction(dl) / 2
