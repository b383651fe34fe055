"""The bound-propagation tier against the exact maximum deviation on tiny networks with
one or two inputs, found on a dense grid (plus the box's vertices): the bound is never
below it, and on a box where every ReLU is stable (the pair is affine there) it is the
maximum itself, up to the rounding margin."""

from __future__ import annotations

import _soundness as sh
import torch
from _nets import compress, random_vector_net
from hypothesis import given, settings
from hypothesis import strategies as st

import certcompress as cc
from certcompress.bounds.propagation.engine import propagate
from certcompress.bounds.propagation.lowering import lower_pair
from certcompress.bounds.propagation.primitives import PReLU
from certcompress.bounds.tiers import bounds_tier, path_metric_tier
from certcompress.domain import InputDomain


def grid_max(net: torch.nn.Module, comp: torch.nn.Module, dom: InputDomain, n: int
             ) -> tuple[sh.Found, torch.Tensor]:
    """Deviations on the dense grid (box vertices included) and the per-output maxima."""
    lo, hi = sh.box(dom, dom.shape)
    found = sh.measure(sh.f64(net), sh.f64(comp), sh.dense_grid(lo, hi, n))
    return found, found.per_output


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
    found, _ = grid_max(net, comp, dom, 2001 if n_in == 1 else 121)
    sh.assert_sound(found, tier.bound, tier.per_output, "bounds tier vs grid")
    sh.record("bounds tier: dense grid", tier.bound, found.worst)


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
        found, per = grid_max(net, comp, dom, 41)
        sh.assert_sound(found, tier.bound, tier.per_output, "all-stable box")
        worst = found.worst
        # the claimed tightness: the maxima themselves, up to the rounding margin
        scale = 1e-7 * (1 + worst)
        sh.assert_tight(tier.bound, worst + scale, 0.0, "all-stable box, l1")
        assert bool((torch.tensor(tier.per_output, dtype=torch.float64) <= per + scale).all())
        sh.record("bounds tier: all-stable box (tight)", tier.bound, worst,
                  at_most=1 + scale / max(worst, 1e-300))
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
    found, _ = grid_max(net, comp, dom, 201)
    sh.assert_sound(found, tier.bound, tier.per_output, "small box")
    assert tier.bound < pm.bound / 3, (tier.bound, pm.bound)
