"""Compact graph parameters (docs/bounds.md, "Memory"): a traced float32 model's weights
are held in float32, a folded BatchNorm as a per-output-channel float64 scale, and the
float64 weight is computed where read. It must have the bits of the eager fold, and the
graph must evaluate and bound exactly as a graph holding those float64 weights does."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from propagation_helpers import check_tier_sound, random_box
from torch import nn

import certcompress as cc
from certcompress.bounds.propagation import lowering
from certcompress.bounds.propagation.engine import PropagationOptions
from certcompress.bounds.propagation.lowering import lower_pair
from certcompress.bounds.propagation.primitives import PAffine
from certcompress.bounds.tiers import bounds_tier
from certcompress.domain import InputDomain
from certcompress.ir import AffineParams, Graph


def _bn(m: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=gen) * 0.3)
                mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=gen) + 0.5)
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=gen))
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=gen) * 0.1)
    return m.eval()


def _net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return _bn(nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.ConvTranspose2d(4, 3, 3, stride=2), nn.BatchNorm2d(3), nn.ReLU(),
        nn.ConvTranspose2d(3, 4, 3, groups=1), nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, groups=2), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
        nn.Linear(4 * 7 * 7, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)), seed)


def _pruned(net: nn.Module, seed: int) -> nn.Module:
    comp = copy.deepcopy(net)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in comp.parameters():
            if p.dim() >= 2:
                p.mul_((torch.rand(p.shape, generator=gen) > 0.3).to(p.dtype))
    return comp


def _eager_fold(layer: nn.Module, bn: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The float64 folded weight and bias, as the fold computes them (ir/passes.py)."""
    w = layer.weight.detach().double()
    b = layer.bias.detach().double()
    if bn is None:
        return w, b
    a = bn.weight.detach().double() * (1.0 / torch.sqrt(bn.running_var.double() + bn.eps))
    c = bn.bias.detach().double() + (-bn.running_mean.double() * a)
    if isinstance(layer, nn.ConvTranspose2d):
        view = a.reshape(1, -1, 1, 1)
    else:
        view = a.reshape((-1,) + (1,) * (w.dim() - 1))
    return w * view, b * a + c


def _materialized(g: Graph) -> Graph:
    """The same graph holding its float64 weights (as a float64 model's graph does)."""
    return g.with_params({k: AffineParams(p.weight.clone(), p.bias) for k, p in g.params.items()})


def test_float32_graph_stores_float32_weights_with_the_folded_bits() -> None:
    net = _net(0)
    g = cc.trace(net, (1, 2, 6, 6))
    affine = [m for m in net if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    mods = list(net) + [nn.Identity()]
    after = {id(m): mods[i + 1] if isinstance(mods[i + 1], nn.modules.batchnorm._BatchNorm)
             else None for i, m in enumerate(net) if m in affine}
    params = [g.params[n.name] for n in g.affine_nodes]
    assert len(params) == len(affine)
    for layer, p in zip(affine, params):
        bn = after[id(layer)]
        assert p.stored.dtype == torch.float32 and p.dtype == torch.float64
        assert p.is_widened and (p.scale is not None) == (bn is not None)
        assert p.stored.data_ptr() != layer.weight.data_ptr()  # a copy, not the model's
        w, b = _eager_fold(layer, bn)
        assert torch.equal(p.weight, w) and torch.equal(p.bias, b)
        assert p.weight.dtype == torch.float64 and p.weight_shape == w.shape
        assert p.numel() == w.numel() + b.numel()
        for i, j in ((0, 1), (1, 3), (0, int(w.shape[0]))):
            assert torch.equal(p.weight_rows(i, j), w[i:j])
        read = p.weight
        read.add_(1.0)  # a reader's copy: the graph is unchanged
        assert torch.equal(p.weight, w)
        back = pickle.loads(pickle.dumps(p))
        assert back.stored.dtype == torch.float32 and torch.equal(back.weight, w)
    assert g.working_dtype == "float64"
    x = torch.rand((5, 2, 6, 6), dtype=torch.float64) * 2 - 1
    assert torch.equal(g.run(x), _materialized(g).run(x))
    # a float64 model's graph holds float64 weights, as before
    g64 = cc.trace(copy.deepcopy(net).double(), (1, 2, 6, 6))
    assert all(not p.is_widened for p in g64.params.values())
    for a, b in zip(params, (g64.params[n.name] for n in g64.affine_nodes)):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


def test_folds_that_cannot_stay_compact_are_computed_eagerly() -> None:
    """A grouped transposed convolution (its output channels are not one dimension of
    the weight) and a second BatchNorm folded onto an already scaled weight: the fold
    computes the float64 weight, as before."""
    torch.manual_seed(1)
    net = _bn(nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.ConvTranspose2d(4, 6, 3, groups=2),
                            nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 3, 3), nn.BatchNorm2d(3),
                            nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 2)), 2)
    g = cc.trace(net, (1, 2, 6, 6))
    convt, conv2 = (g.params[n.name] for n in g.affine_nodes[1:3])
    assert not convt.is_widened and convt.weight.dtype == torch.float64
    assert not conv2.is_widened
    x = torch.rand((4, 2, 6, 6), dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        ref = copy.deepcopy(net).double()(x)
    assert torch.allclose(g.run(x), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("resident", [0, lowering.RESIDENT_BYTES])
def test_compact_pair_bounds_are_bit_identical_to_float64_weights(
        resident: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Weights widened where used (``RESIDENT_BYTES = 0``) or, for these small layers,
    once at lowering: the same bits as graphs holding float64 weights."""
    monkeypatch.setattr(lowering, "RESIDENT_BYTES", resident)
    net = _net(3)
    comp = _pruned(net, 4)
    shape = (1, 2, 6, 6)
    g, g2 = cc.trace(net, shape), cc.trace(comp, shape)
    m, m2 = _materialized(g), _materialized(g2)
    dom = random_box(shape, 5, max_width=0.4)
    for opts in (PropagationOptions(intermediate="interval"), PropagationOptions()):
        a, b = bounds_tier(g, g2, dom, opts), bounds_tier(m, m2, dom, opts)
        assert a.bound == b.bound and a.per_output == b.per_output
    # the lowered affine nodes hold no float64 weight of the compact graphs
    pair = lower_pair(g, g2)
    for n in (n for n in pair.nodes if isinstance(n, PAffine)):
        held = [v for v in vars(n).values() if isinstance(v, torch.Tensor)
                and v.shape == n.weight_shape]
        assert (held == [] and n.params.is_widened) == (resident == 0)
    # the network paired with itself (one transposed map, a zero dw): the same bits too
    opts = PropagationOptions(intermediate="interval")
    a, b = bounds_tier(g, g, dom, opts), bounds_tier(m, m, dom, opts)
    assert a.bound == b.bound and a.per_output == b.per_output


def test_compact_pair_is_sound_on_batchnorm_nets() -> None:
    """The shared soundness harness (bound >= deviation found, per output and per
    node) on the BatchNorm pair, whose graphs hold compact weights."""
    for seed in (6, 7):
        net = _net(seed)
        comp = _pruned(net, seed + 10)
        dom = InputDomain.box(-0.5, 0.5, shape=(1, 2, 6, 6))
        check_tier_sound(net, comp, dom, seed)
        check_tier_sound(net, comp, random_box((1, 2, 6, 6), seed, max_width=0.3), seed)
