"""The bound-propagation tier against the exact maximum deviation on tiny networks with
one or two inputs, found on a dense grid (plus the box's vertices): the bound is never
below it, and on a box where every ReLU is stable (the pair is affine there) it is the
maximum itself, up to the rounding margin."""

from __future__ import annotations

import torch
from _nets import compress, random_vector_net
from hypothesis import given, settings
from hypothesis import strategies as st
from propagation_helpers import within

import certcompress as cc
from certcompress.bounds.propagation.engine import propagate
from certcompress.bounds.propagation.lowering import lower_pair
from certcompress.bounds.propagation.primitives import PReLU
from certcompress.bounds.tiers import bounds_tier, path_metric_tier
from certcompress.domain import InputDomain
from certcompress.measure import float64_function


def grid(dom: InputDomain, n: int) -> torch.Tensor:
    lo, hi = dom.lower_tensor()[0], dom.upper_tensor()[0]
    axes = [torch.linspace(float(a), float(b), n, dtype=torch.float64)
            for a, b in zip(lo.tolist(), hi.tolist())]
    return torch.cartesian_prod(*axes).reshape(-1, len(axes))


def grid_max(net: torch.nn.Module, comp: torch.nn.Module, dom: InputDomain, n: int
             ) -> tuple[float, torch.Tensor]:
    f, g = float64_function(net), float64_function(comp)
    x = grid(dom, n)
    with torch.no_grad():
        dev = (f(x) - g(x)).abs()
    return float(dev.sum(1).max()), dev.amax(0)


@settings(max_examples=20)
@given(n_in=st.integers(1, 2), depth=st.integers(0, 2), width=st.integers(2, 5),
       n_out=st.integers(1, 3), seed=st.integers(0, 2 ** 20),
       kind=st.sampled_from(["prune", "round", "perturb"]),
       half=st.sampled_from([0.1, 1.0, 3.0]))
def test_bound_at_least_dense_grid_maximum(n_in: int, depth: int, width: int, n_out: int,
                                           seed: int, kind: str, half: float) -> None:
    net, shape = random_vector_net(["dense"] * depth, width, n_in, n_out, seed, scale=1.0)
    comp = compress(net, kind, seed + 1, 0.3)
    dom = InputDomain.box(-half, half, shape=shape)
    tier = bounds_tier(cc.trace(net, shape), cc.trace(comp, shape), dom)
    worst, per = grid_max(net, comp, dom, 2001 if n_in == 1 else 121)
    assert within(worst, tier.bound), (worst, tier.bound)
    assert within(per, torch.tensor(tier.per_output, dtype=torch.float64))


def test_tight_where_every_relu_is_stable() -> None:
    """On a box small enough that no ReLU changes state the pair is affine: the
    per-output bounds and the l1 bound are the exact maxima (attained at vertices)."""
    checked = 0
    for seed in range(40):
        net, shape = random_vector_net(["dense"], 4, 2, 3, seed, scale=1.0)
        comp = compress(net, "perturb", seed + 1, 0.1)
        center = torch.rand(shape, generator=torch.Generator().manual_seed(seed),
                            dtype=torch.float64)
        dom = InputDomain.box(center - 1e-3, center + 1e-3, shape=shape)
        g, g2 = cc.trace(net, shape), cc.trace(comp, shape)
        pair = lower_pair(g, g2)
        state = propagate(pair, dom.lower_tensor()[None], dom.upper_tensor()[None])
        stable = all(
            bool(((b.zl >= 0) | (b.zu <= 0)).all() and ((b.cl >= 0) | (b.cu <= 0)).all())
            for b in (state.bounds[n.inputs[0]] for n in pair.nodes if isinstance(n, PReLU)))
        if not stable:
            continue
        tier = bounds_tier(g, g2, dom)
        worst, per = grid_max(net, comp, dom, 41)
        assert within(worst, tier.bound)
        scale = 1e-7 * (1 + worst)
        assert tier.bound <= worst + scale, (tier.bound, worst)
        assert bool((torch.tensor(tier.per_output) <= per + scale).all())
        checked += 1
    assert checked >= 5, "too few all-stable cases to test tightness"


def test_tighter_than_path_metric_on_a_small_box() -> None:
    """Deterministic case: on [0, 0.1]^2 a 2-layer net's bounds tier is far below the
    path-metric tier (which covers the whole ball of radius 1)."""
    net, shape = random_vector_net(["dense"], 6, 2, 2, 11, scale=1.0)
    comp = compress(net, "prune", 12, 0.3)
    dom = InputDomain.box(0.0, 0.1, shape=shape)
    g, g2 = cc.trace(net, shape), cc.trace(comp, shape)
    tier = bounds_tier(g, g2, dom)
    pm, _ = path_metric_tier(g, g2, dom.radius)
    worst, _ = grid_max(net, comp, dom, 201)
    assert worst <= tier.bound * (1 + 1e-9)
    assert tier.bound < pm.bound / 3, (tier.bound, pm.bound)
