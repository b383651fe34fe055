"""Helpers for the bound-propagation tests: the tier's soundness checked against
deviations found by sampling, box vertices and gradient ascent inside the box, output by
output, and every primitive node's sampled values against its propagated bounds."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

import certcompress as cc
from certcompress.bounds.propagation.engine import PropagationOptions, propagate
from certcompress.bounds.propagation.evaluate import evaluate_pair, pair_outputs
from certcompress.bounds.propagation.lowering import lower_pair
from certcompress.bounds.tiers import bounds_tier
from certcompress.certificate import MethodBound
from certcompress.domain import InputDomain
from certcompress.measure import adversarial_deviation, float64_function

MEASURE_REL = 1e-9
MEASURE_ABS = 1e-12


def within(measured: Tensor | float, bound: Tensor | float) -> bool:
    m = torch.as_tensor(measured, dtype=torch.float64)
    b = torch.as_tensor(bound, dtype=torch.float64)
    return bool((m <= b + MEASURE_REL * b.abs() + MEASURE_ABS).all())


def random_box(shape: tuple[int, ...], seed: int, max_width: float = 2.0,
               degenerate: float = 0.1) -> InputDomain:
    """A random per-feature box: centers in [-1, 1], widths in [0, max_width], a fraction
    ``degenerate`` of the features fixed (zero width)."""
    gen = torch.Generator().manual_seed(seed)
    center = 2 * torch.rand(shape, generator=gen, dtype=torch.float64) - 1
    width = max_width * torch.rand(shape, generator=gen, dtype=torch.float64)
    width = torch.where(torch.rand(shape, generator=gen) < degenerate, 0.0, width)
    return InputDomain.box(center - width / 2, center + width / 2, shape=shape)


def attack_points(f: Callable[[Tensor], Tensor], g: Callable[[Tensor], Tensor],
                  dom: InputDomain, seed: int, n_out: int, steps: int = 40) -> Tensor:
    """Inputs inside the box: uniform samples, vertices, and gradient-ascent maximizers
    of the l1 deviation and of each output's deviation."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = dom.lower_tensor()[0], dom.upper_tensor()[0]
    uni = dom.sample(48, gen)
    vert = torch.where(torch.rand((24,) + tuple(lo.shape), generator=gen) < 0.5, lo, hi)
    xs = [uni, vert]
    adv = adversarial_deviation(f, g, dom.shape, lo, hi, steps=steps, restarts=6,
                                starts=uni[:3], seed=seed)
    xs.append(adv.argmax)
    for o in range(n_out):
        fo: Callable[[Tensor], Tensor] = lambda x, o=o: f(x)[:, o:o + 1]  # noqa: E731
        go: Callable[[Tensor], Tensor] = lambda x, o=o: g(x)[:, o:o + 1]  # noqa: E731
        xs.append(adversarial_deviation(fo, go, dom.shape, lo, hi, steps=steps // 2,
                                        restarts=2, seed=seed + 1 + o).argmax)
    x = torch.cat(xs)
    assert bool(dom.contains(x).all()), "an attack point left the box"
    return x


def check_tier_sound(net: nn.Module, comp: nn.Module, dom: InputDomain, seed: int,
                     options: PropagationOptions | None = None) -> tuple[MethodBound, float]:
    """Asserts soundness of the bounds tier (total, per output, every node); returns the
    tier and the worst l1 deviation found."""
    shape = dom.shape
    g, g2 = cc.trace(net, shape), cc.trace(comp, shape)
    tier = bounds_tier(g, g2, dom, options)
    f, fc = float64_function(net), float64_function(comp)
    n_out = len(tier.per_output)
    x = attack_points(f, fc, dom, seed, n_out)
    with torch.no_grad():
        fx, gx = f(x), fc(x)
    dev = (fx - gx).abs()
    assert dev.shape[1] == n_out
    worst = float(dev.sum(1).max())
    assert within(dev.sum(1), tier.bound), (worst, tier.bound)
    assert within(dev, torch.tensor(tier.per_output, dtype=torch.float64)), \
        "a per-output deviation exceeds its per-output bound"
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
