"""The per-element rounding bound of an activation quantizer (``PPerturb`` with
``near_zero``; docs/quantization.md, "Per-element rounding bound"): the quantizer's
actual error never exceeds ``min(delta, max(|l|, |u|) + near_zero)`` over an input
interval ``[l, u]`` (float64 and float32, 2 to 4 bits, unsigned and signed grids), the
bounds tier stays above every deviation a dense grid, vertices and PGD find on small
nets with quantizers at 2 to 4 bits and many dead ReLUs, and the rule is what makes the
bound smaller there (the same pair without it is looser)."""

from __future__ import annotations

import _soundness as sh
import pytest
import torch
from torch import nn

import certcompress as cc
from certcompress.bounds.propagation import lowering
from certcompress.bounds.propagation.engine import propagate
from certcompress.bounds.propagation.lowering import lower_pair
from certcompress.bounds.propagation.primitives import PPerturb
from certcompress.bounds.propagation.relax import PerturbRelaxation, perturb_deltas
from certcompress.bounds.tiers import bounds_tier
from certcompress.capture.fakequant import ActivationQuantizer, default_slack
from certcompress.ir.ops import ActQuantOp

GRIDS = [(0.25, 0, 0, 3), (0.1, 0, 0, 7), (0.07, 8, 0, 15), (0.3, 2, 0, 3), (0.05, 1, 0, 15)]


@pytest.mark.parametrize(("scale", "zp", "qmin", "qmax"), GRIDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_quantizer_error_within_the_per_element_bound(scale: float, zp: int, qmin: int,
                                                      qmax: int, dtype: torch.dtype) -> None:
    op = ActQuantOp(scale, zp, qmin, qmax, True, default_slack(scale, zp, qmin, qmax))
    near = lowering._near_zero(op)
    assert near is not None
    g = torch.Generator().manual_seed(qmax + zp)
    span = 1.5 * max(abs(op.lower), abs(op.upper))
    # intervals [l, u], many of them narrow and around 0 (where the rule is below delta)
    centre = (torch.rand(300, generator=g, dtype=torch.float64) * 2 - 1) * span
    centre[:100] *= scale
    width = torch.rand(300, generator=g, dtype=torch.float64) * scale
    lo, hi = centre - width, centre + width
    bound = perturb_deltas(torch.tensor(op.delta, dtype=torch.float64), near, lo, hi)
    assert bool((bound <= op.delta).all()) and bool((bound < op.delta).any())
    t = torch.linspace(0, 1, 401, dtype=torch.float64)
    x = lo[:, None] + (hi - lo)[:, None] * t[None, :]  # points of each interval
    q = op.forward([x.to(dtype)], None).double()
    err = (q - x.clamp(op.lower, op.upper)).abs().amax(1)
    assert bool((err <= bound).all()), float((err - bound).max())


def _net(seed: int, width: int = 12) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(2, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                        nn.Linear(width, 3)).double().eval()
    with torch.no_grad():  # most ReLUs dead or barely active over the box
        net[0].bias.sub_(0.3)
        net[2].bias.sub_(0.05)
    return net


def _quantized(net: nn.Sequential, bits: int, enabled: bool) -> nn.Sequential:
    """``net`` with quantizers at the input (signed grid) and after each ReLU."""
    qmax = 2 ** bits - 1

    def q(scale: float, zp: int) -> ActivationQuantizer:
        return ActivationQuantizer(scale, zp, 0, qmax, enabled=enabled,
                                   slack=default_slack(scale, zp, 0, qmax))

    zp_in = 2 ** (bits - 1)
    return nn.Sequential(q(1.0 / zp_in, zp_in), net[0], net[1], q(0.6 / qmax, 0), net[2],
                         net[3], q(0.5 / qmax, 0), net[4]).double().eval()


DOM = cc.InputDomain.box(-1.0, 1.0, shape=(1, 2))


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("seed", [0, 1])
def test_bounds_tier_sound_with_per_element_rounding(bits: int, seed: int,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    net = _net(seed)
    orig, comp = _quantized(net, bits, False), _quantized(net, bits, True)
    g, g2 = cc.trace(orig, DOM.shape), cc.trace(comp, DOM.shape)
    tier = bounds_tier(g, g2, DOM)
    lo, hi = sh.box(DOM, DOM.shape)
    grid = sh.dense_grid(lo, hi, 301)
    for f32 in (False, True):
        run = sh.f32 if f32 else sh.f64
        found = sh.attack(run(orig), run(comp), lo, hi, seed, float32=f32, extra=grid,
                          per_output=True)
        sh.assert_sound(found, tier.bound, tier.per_output, f"{bits}-bit quantizers")
    sh.record(f"bounds tier, per-element rounding, {bits} bits", tier.bound, found.worst)
    # the rule is below delta where a quantizer's input stays near 0, and a ReLU that
    # is dead over the whole box is charged (almost) nothing ...
    pair = lower_pair(g, g2)
    state = propagate(pair, lo.unsqueeze(0), hi.unsqueeze(0))
    perturbs = [i for i, n in enumerate(pair.nodes) if isinstance(n, PPerturb)]
    assert len(perturbs) == 3
    below = False
    for i in perturbs:
        r, node = state.relax[i], pair.nodes[i]
        assert isinstance(r, PerturbRelaxation) and isinstance(node, PPerturb)
        assert bool((r.dc <= node.delta_c).all()) and bool((r.dz == 0).all())
        below = below or (i != perturbs[0] and bool((r.dc < node.delta_c).any()))
        dead = state.bounds[node.inputs[0]].cu <= 1e-9
        assert bool((r.dc[dead] <= node.delta_c.max() / 32).all())
    assert below
    # ... and without the rule the same pair's bound is larger
    monkeypatch.setattr(lowering, "_near_zero", lambda q: None)
    plain = bounds_tier(g, g2, DOM)
    assert tier.bound < plain.bound
