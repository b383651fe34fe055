"""The select primitive (``PSelect``, the lowering of an activation quantizer that clips
in one network only) and its rule: the interval contains every value of both networks
and their difference at points of the box, the backward rule is the exact transpose of
the map (both networks, ``z`` and ``d`` coefficients), the dense maps are the map, and
the lowering emits it (not a parametric ``PAffine``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import certcompress as cc
from certcompress.bounds.propagation.form import Form, dot
from certcompress.bounds.propagation.interval import Magnitude, PairBounds
from certcompress.bounds.propagation.lowering import lower_pair
from certcompress.bounds.propagation.primitives import PAffine, PSelect
from certcompress.bounds.propagation.rules import Backward, SelectRule, rules_for
from certcompress.capture import trace
from certcompress.compress.quantization.activations import float_twin
from certcompress.ir.ops import AffineOp

SHAPE = (1, 4)
RULE = SelectRule()


def _node(w: list[float], wc: list[float]) -> PSelect:
    return PSelect(inputs=(0,), shape=SHAPE, source="sel", w=torch.tensor(w, dtype=torch.float64),
                   wc=torch.tensor(wc, dtype=torch.float64))


def _points(k: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` pairs ``(z, c)`` of stacked inputs ``(n, k, *SHAPE)``, ``c`` near ``z``."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn((n, k) + SHAPE, generator=g, dtype=torch.float64) * 2
    c = z + 0.3 * torch.randn((n, k) + SHAPE, generator=g, dtype=torch.float64)
    return z, c


@pytest.mark.parametrize(("w", "wc"), [([0.0], [-1.0]), ([-1.0, 0.0], [0.0, -1.0]),
                                       ([0.5, 2.0], [0.5, 2.0]), ([1.0, -3.0], [0.0, 2.5])])
def test_interval_contains_both_networks_and_their_difference(w: list[float],
                                                              wc: list[float]) -> None:
    node = _node(w, wc)
    assert node.changed == (w != wc) and node.in_shape == (len(w),) + SHAPE
    z, c = _points(len(w), 400, seed=len(w))
    d = z - c
    box = PairBounds(z.amin(0, keepdim=True), z.amax(0, keepdim=True), c.amin(0, keepdim=True),
                     c.amax(0, keepdim=True), d.amin(0, keepdim=True), d.amax(0, keepdim=True))
    out = RULE.interval(node, [box], [])
    yz, yc = RULE.evaluate(node, [z], [c])
    assert torch.equal(yz, (z * node.w.reshape(1, -1, 1, 1)).sum(1))
    tol = 1e-12
    for lo, y, hi in ((out.zl, yz, out.zu), (out.cl, yc, out.cu), (out.dl, yz - yc, out.du)):
        assert bool((lo - tol <= y).all()) and bool((y <= hi + tol).all())
    mag = RULE.magnitude(node, [Magnitude(z.abs().amax(0, keepdim=True),
                                          c.abs().amax(0, keepdim=True))])
    assert bool((yz.abs() <= mag.mz + tol).all()) and bool((yc.abs() <= mag.mc + tol).all())


@pytest.mark.parametrize(("w", "wc"), [([-1.0, 0.0], [0.0, -1.0]), ([0.5, 2.0], [0.5, 2.0])])
def test_backward_and_dense_are_the_map(w: list[float], wc: list[float]) -> None:
    node = _node(w, wc)
    z, c = _points(len(w), 3, seed=7)
    yz, yc = RULE.evaluate(node, [z], [c])
    g = torch.Generator().manual_seed(1)
    lz = torch.randn((3,) + SHAPE, generator=g, dtype=torch.float64)
    ld = torch.randn((3,) + SHAPE, generator=g, dtype=torch.float64)
    const = torch.arange(3, dtype=torch.float64)
    ctx = Backward(pending={}, relax={}, lower=z, upper=z, prob=None)
    RULE.backward(node, 1, Form({"z": lz, "d": ld}, const), ctx)
    back = ctx.pending[0]
    # <lz, y_z> + <ld, y_z - y_c> + const, rewritten at the stacked input (row r: point r)
    want = dot(lz, yz) + dot(ld, yz - yc) + const
    got = dot(back.coef["z"], z) + dot(back.coef.get("d", torch.zeros_like(z)), z - c) \
        + back.const
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)
    W, b, Wc, bc = RULE.dense(node, z[0].numel())
    assert not b.any() and not bc.any()
    assert torch.allclose(W @ z.reshape(3, -1).T, yz.reshape(3, -1).T, rtol=0, atol=1e-12)
    assert torch.allclose(Wc @ c.reshape(3, -1).T, yc.reshape(3, -1).T, rtol=0, atol=1e-12)


def test_select_nodes_are_lowered_from_one_sided_activation_quantizers() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)).eval()
    dom = cc.InputDomain.box(-1.0, 1.0, shape=(1, 3))
    qmodel, _ = cc.quantize(model, cc.QuantConfig.uniform(model, 8), domain=dom, activations=8,
                            methods=("path-metric",), search_steps=0, search_restarts=1)
    twin, qmodel = float_twin(qmodel, model, torch.rand(4, 3) * 2 - 1)
    pair = lower_pair(trace(twin, (1, 3)), trace(qmodel, (1, 3)))
    selects = [n for n in pair.nodes if isinstance(n, PSelect)]
    assert selects and all(n.changed for n in selects)
    # every parametric node is a real affine layer of the models
    assert all(isinstance(n.op, AffineOp) and type(n.op).__module__ == "certcompress.ir.ops"
               for n in pair.nodes if isinstance(n, PAffine))
    assert all(isinstance(r, SelectRule) for n, r in zip(pair.nodes, rules_for(pair))
               if isinstance(n, PSelect))
    both = lower_pair(trace(qmodel, (1, 3)), trace(qmodel, (1, 3)))
    assert not any(isinstance(n, PSelect) for n in both.nodes)  # same grid: no selection
