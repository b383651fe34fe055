"""Neuron-wise rescaling invariance (shared doc, section 2).

Multiplying a hidden ReLU neuron's incoming weights and bias by ``lambda > 0`` (through
a BatchNorm: its gamma and beta) and its outgoing weights by ``1/lambda`` changes
neither the function nor the path-lifting, so the path-norm, the path-metric, the
certificate and the path-magnitude scores must not change. The layerwise operator-norm
baseline does change (that is why the path-metric is reported beside it).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pytest
import torch
from _nets import DagNet, NetBuilder, compress, log_uniform
from torch import Tensor, nn

import certcompress as cc

REL = 1e-9
Rescale = Callable[[DagNet, torch.Generator], None]


def _scale_out(m: nn.Module, lam: Tensor) -> None:
    """Scale output neuron/channel ``j`` of ``m`` (Linear, Conv, BatchNorm) by lam[j]."""
    shape = (-1,) + (1,) * (m.weight.dim() - 1)
    m.weight.mul_(lam.reshape(shape))
    if m.bias is not None:
        m.bias.mul_(lam)


def _scale_in(m: nn.Module, lam: Tensor, offset: int = 0, spatial: int = 1) -> None:
    """Divide the weights ``m`` applies to input channel ``offset + j`` by lam[j]; a
    Linear after a flatten sees each channel as ``spatial`` consecutive columns."""
    inv = (1.0 / lam).repeat_interleave(spatial)
    n = inv.numel()
    w = m.weight[:, offset * spatial:offset * spatial + n]
    w.mul_(inv.reshape((1, -1) + (1,) * (m.weight.dim() - 2)))


def _lams(gen: torch.Generator, n: int) -> Tensor:
    lam = log_uniform(gen, n, 1 / 64, 64)
    lam[0] = 64.0  # one large factor: the operator-norm baseline must move
    return lam


# --------------------------------------------------------------------------- networks


def mlp() -> tuple[DagNet, tuple[int, ...], Rescale, bool]:
    b = NetBuilder((1, 4))
    h = b.module(nn.ReLU(), b.module(nn.Linear(4, 6), "x"))
    h = b.module(nn.ReLU(), b.module(nn.Linear(6, 5), h))
    net = b.build(b.module(nn.Linear(5, 3), h), torch.Generator().manual_seed(1)).double()

    def rescale(n: DagNet, gen: torch.Generator) -> None:
        for a, c, width in (("m1", "m3", 6), ("m3", "m5", 5)):
            lam = _lams(gen, width)
            _scale_out(n.mods[a], lam)
            _scale_in(n.mods[c], lam)

    return net, b.input_shape, rescale, True


def conv_bn() -> tuple[DagNet, tuple[int, ...], Rescale, bool]:
    """Conv-BN-ReLU twice, flatten, Linear: rescaled through BatchNorm gamma and beta."""
    b = NetBuilder((1, 2, 5, 5))
    m1 = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3))
    h = b.module(nn.ReLU(), b.module(m1, "x"))
    m2 = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4))
    h = b.module(nn.ReLU(), b.module(m2, h))
    f = b.flatten(h)
    net = b.build(b.module(nn.Linear(b.shapes[f][1], 3), f),
                  torch.Generator().manual_seed(2)).double()
    with torch.no_grad():  # positive gammas: BN then ReLU is a rescalable ReLU neuron
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.abs_()

    def rescale(n: DagNet, gen: torch.Generator) -> None:
        lam = _lams(gen, 3)
        _scale_out(n.mods["m1"][1], lam)
        _scale_in(n.mods["m3"][0], lam)
        lam = _lams(gen, 4)
        _scale_out(n.mods["m3"][1], lam)
        _scale_in(n.mods["m6"], lam, spatial=9)

    return net, b.input_shape, rescale, True


def residual_maxpool() -> tuple[DagNet, tuple[int, ...], Rescale, bool]:
    """conv -> ReLU -> max-pool -> conv -> ReLU -> residual block -> flatten -> Linear;
    rescaled across the max-pool and inside the residual branch."""
    b = NetBuilder((1, 1, 6, 6))
    h = b.module(nn.ReLU(), b.module(nn.Conv2d(1, 3, 3, padding=1), "x"))  # m1 m2
    h = b.module(nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True), h)  # m3
    h = b.module(nn.ReLU(), b.module(nn.Conv2d(3, 2, 3, padding=1), h))  # m4 m5
    r = b.module(nn.ReLU(), b.module(nn.Conv2d(2, 3, 3, padding=1), h))  # m6 m7
    r = b.module(nn.Conv2d(3, 2, 3, padding=1), r)  # m8
    h = b.module(nn.ReLU(), b.add(h, r))
    f = b.flatten(h)
    net = b.build(b.module(nn.Linear(b.shapes[f][1], 2), f),
                  torch.Generator().manual_seed(3)).double()

    def rescale(n: DagNet, gen: torch.Generator) -> None:
        lam = _lams(gen, 3)
        _scale_out(n.mods["m1"], lam)
        _scale_in(n.mods["m4"], lam)
        lam = _lams(gen, 3)
        _scale_out(n.mods["m6"], lam)
        _scale_in(n.mods["m8"], lam)

    return net, b.input_shape, rescale, False


def concat_mlp() -> tuple[DagNet, tuple[int, ...], Rescale, bool]:
    """A hidden layer feeding two branches that are concatenated."""
    b = NetBuilder((1, 3))
    h = b.module(nn.ReLU(), b.module(nn.Linear(3, 4), "x"))  # m1 m2
    b1 = b.module(nn.ReLU(), b.module(nn.Linear(4, 3), h))  # m3 m4
    b2 = b.module(nn.ReLU(), b.module(nn.Linear(4, 2), h))  # m5 m6
    c = b.cat([b1, b2])
    net = b.build(b.module(nn.Linear(5, 2), c), torch.Generator().manual_seed(4)).double()

    def rescale(n: DagNet, gen: torch.Generator) -> None:
        lam = _lams(gen, 4)
        _scale_out(n.mods["m1"], lam)
        _scale_in(n.mods["m3"], lam)
        _scale_in(n.mods["m5"], lam)
        lam = _lams(gen, 3)
        _scale_out(n.mods["m3"], lam)
        _scale_in(n.mods["m8"], lam)
        lam = _lams(gen, 2)
        _scale_out(n.mods["m5"], lam)
        _scale_in(n.mods["m8"], lam, offset=3)

    return net, b.input_shape, rescale, False


CASES = {f.__name__: f for f in (mlp, conv_bn, residual_maxpool, concat_mlp)}


def _rel_close(a: float, b: float) -> bool:
    return abs(a - b) <= REL * max(abs(a), abs(b), 1e-300)


def _vec_close(a: object, b: object) -> None:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    np.testing.assert_allclose(x, y, rtol=REL, atol=REL * float(np.abs(y).max()))


@pytest.mark.parametrize("kind", ["prune", "round", "perturb"])
@pytest.mark.parametrize("case", list(CASES))
def test_rescaling_changes_nothing_certified(case: str, kind: str) -> None:
    net, shape, rescale, layered = CASES[case]()
    comp = compress(net, kind, seed=5, amount={"prune": 0.4, "round": 0.1, "perturb": 0.2}[kind])
    net_s, comp_s = copy.deepcopy(net), copy.deepcopy(comp)
    with torch.no_grad():
        rescale(net_s, torch.Generator().manual_seed(9))
        rescale(comp_s, torch.Generator().manual_seed(9))
    assert any(not torch.equal(p, q) for p, q in zip(net.parameters(), net_s.parameters()))

    # the function is unchanged
    x = 2 * torch.rand((16,) + shape[1:], generator=torch.Generator().manual_seed(0),
                       dtype=torch.float64) - 1
    with torch.no_grad():
        for a, b in ((net, net_s), (comp, comp_s)):
            ya, yb = a(x), b(x)
            np.testing.assert_allclose(yb.numpy(), ya.numpy(), rtol=REL,
                                       atol=REL * float(ya.abs().max()))

    assert _rel_close(cc.path_norm(net_s, shape), cc.path_norm(net, shape))
    pm, pm_s = cc.path_metric(net, comp, shape), cc.path_metric(net_s, comp_s, shape)
    assert pm.value > 0
    assert _rel_close(pm_s.value, pm.value), (pm_s.value, pm.value)
    _vec_close(pm_s.per_output, pm.per_output)
    assert pm_s.exact == pm.exact and pm_s.method == pm.method

    cert = cc.certify(net, comp, shape, 1.5, search_steps=0)
    cert_s = cc.certify(net_s, comp_s, shape, 1.5, search_steps=0)
    assert _rel_close(cert_s.bound, cert.bound)
    _vec_close(cert_s.per_output, cert.per_output)
    if layered:
        assert cert.baseline_linf is not None and cert_s.baseline_linf is not None
        change = abs(cert_s.baseline_linf / cert.baseline_linf - 1)
        assert change > 0.05, f"the operator-norm baseline barely moved ({change:.2e})"
    else:
        assert cert.baseline_linf is None and cert_s.baseline_linf is None


@pytest.mark.parametrize("case", list(CASES))
def test_path_magnitude_scores_are_rescaling_invariant(case: str) -> None:
    net, shape, rescale, _ = CASES[case]()
    net_s = copy.deepcopy(net)
    with torch.no_grad():
        rescale(net_s, torch.Generator().manual_seed(11))
    s, s2 = cc.path_magnitude_scores(net, shape), cc.path_magnitude_scores(net_s, shape)
    assert s.keys() == s2.keys()
    top = max(float(v.weight.max()) for v in s.values())
    for k in s:
        np.testing.assert_allclose(s2[k].weight.numpy(), s[k].weight.numpy(), rtol=REL,
                                   atol=REL * top)
        if s[k].bias is not None:
            np.testing.assert_allclose(s2[k].bias.numpy(), s[k].bias.numpy(), rtol=REL,
                                       atol=REL * top)
