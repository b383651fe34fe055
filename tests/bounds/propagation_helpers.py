"""Helpers for the bound-propagation tests: the tier's soundness checked against
deviations found by the shared harness (tests/_soundness.py: sampling, box vertices and
gradient ascent inside the box, output by output), and every primitive node's sampled
values against its propagated bounds."""

from __future__ import annotations

import _soundness as sh
import torch
from torch import nn

import certcompress as cc
from certcompress.bounds.propagation.engine import PropagationOptions, propagate
from certcompress.bounds.propagation.evaluate import evaluate_pair, pair_outputs
from certcompress.bounds.propagation.lowering import lower_pair
from certcompress.bounds.tiers import bounds_tier
from certcompress.certificate import MethodBound
from certcompress.domain import InputDomain
from certcompress.ir import AffineParams, Graph


def jitter(g: Graph, seed: int) -> Graph:
    """``g`` with every parameter moved by at most one ulp: each multiplied by
    ``1 + k 2^-52``, ``k`` drawn from ``{-1, 0, 1}`` by ``seed`` (the same ``k`` at the same
    position in two graphs of the same shapes, so equal weights stay equal): a stand-in
    for another machine's order of summation (docs/bounds.md, "On a GPU")."""
    gen = torch.Generator().manual_seed(seed)

    def j(t: torch.Tensor) -> torch.Tensor:
        k = torch.randint(-1, 2, t.shape, generator=gen).to(t.dtype)
        return t * (1 + k * 2.0 ** -52)

    return g.with_params({n: AffineParams(j(p.weight), None if p.bias is None
                                          else j(p.bias)) for n, p in g.params.items()})


def random_box(shape: tuple[int, ...], seed: int, max_width: float = 2.0,
               degenerate: float = 0.1) -> InputDomain:
    """A random per-feature box: centers in [-1, 1], widths in [0, max_width], a fraction
    ``degenerate`` of the features fixed (zero width)."""
    gen = torch.Generator().manual_seed(seed)
    center = 2 * torch.rand(shape, generator=gen, dtype=torch.float64) - 1
    width = max_width * torch.rand(shape, generator=gen, dtype=torch.float64)
    width = torch.where(torch.rand(shape, generator=gen) < degenerate, 0.0, width)
    return InputDomain.box(center - width / 2, center + width / 2, shape=shape)


def check_tier_sound(net: nn.Module, comp: nn.Module, dom: InputDomain, seed: int,
                     options: PropagationOptions | None = None) -> tuple[MethodBound, float]:
    """Asserts soundness of the bounds tier (total, per output, every node); returns the
    tier and the worst l1 deviation found."""
    shape = dom.shape
    g, g2 = cc.trace(net, shape), cc.trace(comp, shape)
    tier = bounds_tier(g, g2, dom, options)
    f, fc = sh.f64(net), sh.f64(comp)
    lo, hi = sh.box(dom, shape)
    found = sh.attack(f, fc, lo, hi, seed, steps=40, restarts=6, per_output=True)
    x = found.x
    assert bool(dom.contains(x).all()), "an attack point left the box"
    sh.assert_sound(found, tier.bound, tier.per_output, "bounds tier")
    worst = found.worst
    sh.record("bounds tier: random boxes", tier.bound, worst)
    with torch.no_grad():
        fx, gx = f(x), fc(x)
    # the lowering is exact and every primitive node stays inside its bounds
    pair = lower_pair(g, g2)
    state = propagate(pair, dom.lower_tensor().unsqueeze(0), dom.upper_tensor().unsqueeze(0),
                      options)
    xb = x.unsqueeze(1).reshape((x.shape[0],) + shape)  # one problem per point
    zo, co = pair_outputs(pair, xb)
    scale = 1.0 + float(fx.abs().max()) + float(gx.abs().max())
    assert float((zo - fx).abs().max()) <= 1e-9 * scale, "lowering differs from the model"
    assert float((co - gx).abs().max()) <= 1e-9 * scale, "lowering differs from the model"
    zs, cs = evaluate_pair(pair, xb)
    for i, b in enumerate(state.bounds):
        z, c = zs[i], cs[i]
        tol = 1e-9 * (1.0 + float(z.abs().max()) + float(c.abs().max()))
        src = pair.nodes[i].source
        assert bool((z >= b.zl - tol).all() and (z <= b.zu + tol).all()), f"z out at {i} {src}"
        assert bool((c >= b.cl - tol).all() and (c <= b.cu + tol).all()), f"c out at {i} {src}"
        d = z - c
        assert bool((d >= b.dl - tol).all() and (d <= b.du + tol).all()), f"d out at {i} {src}"
    return tier, worst
