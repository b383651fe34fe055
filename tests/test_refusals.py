"""Refusals that point a way forward, and eval-mode ops that are affine.

A refusal groups the offending nodes by kind (outside the certified class / no adapter
yet / input too small) and by what they are, with a count and one example path each.
Ops that are the identity or affine in eval mode (stochastic depth, a layer-scale
multiplication by a per-channel parameter, a per-channel constant bias) are certified,
and soundly: the bound is checked one-sidedly against sampled deviations."""

from __future__ import annotations

import copy
import logging

import _soundness as sh
import pytest
import torch
from torch import nn

import certcompress as cc
from certcompress.errors import RefusalKind, UnsupportedModelError


def _refusal(model: nn.Module, shape: tuple[int, ...]) -> UnsupportedModelError:
    with pytest.raises(UnsupportedModelError) as info:
        cc.trace(model, shape)
    return info.value


def test_outside_class_and_no_adapter_are_grouped_apart():
    class Gate(nn.Module):
        def forward(self, x):
            return x * torch.sigmoid(x)

    class Odd(nn.Module):
        def forward(self, x):
            return torch.cumsum(x, dim=1)

    m = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 8), nn.GELU(), nn.LayerNorm(8),
                      Gate(), Odd(), nn.Linear(8, 2)).eval()
    err = _refusal(m, (1, 4))
    text = str(err)
    assert err.kinds == {RefusalKind.OUTSIDE_CLASS, RefusalKind.NO_ADAPTER}
    assert "GELU x2 (e.g. 1): GELU is smooth" in text
    assert "certify_statistical" in text
    # the gate (a product of two input-dependent values) is outside the class, not
    # something an adapter could fix
    outside, _, adapters = text.partition("no adapter yet")
    assert "product or quotient of two input-dependent tensors" in outside
    assert "cumsum" in adapters and "GELU" not in adapters
    assert len(text.splitlines()) <= 10


def test_many_offenders_stay_short():
    m = nn.Sequential(*[nn.Sequential(nn.Linear(4, 4), nn.SiLU()) for _ in range(40)]).eval()
    err = _refusal(m, (1, 4))
    assert len(err.offenders) == 40
    assert "SiLU x40 (e.g. 0.1)" in str(err)
    assert len(str(err).splitlines()) == 3


def test_input_too_small_is_named():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(4), nn.Flatten(),
                      nn.LazyLinear(2) if False else nn.Identity()).eval()
    err = _refusal(m, (1, 3, 4, 4))
    assert err.kinds == {RefusalKind.INPUT_SHAPE}
    assert "too small" in str(err) and "(1, 3, 4, 4)" in str(err)


def test_torch_logging_stays_quiet(caplog):
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(4)).eval()
    with caplog.at_level(logging.DEBUG):
        _refusal(m, (1, 3, 4, 4))
    assert not [r for r in caplog.records if r.name.startswith("torch") and
                r.levelno >= logging.ERROR]


class _LayerScaleBlock(nn.Module):
    """A ConvNeXt-like residual block with ReLU: layer scale, stochastic depth, bias."""

    def __init__(self, c: int) -> None:
        super().__init__()
        from torchvision.ops import StochasticDepth

        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.gamma = nn.Parameter(torch.rand(c, 1, 1) + 0.5)
        self.shift = nn.Parameter(torch.randn(1, c, 1, 1))
        self.drop = StochasticDepth(0.3, "row")

    def forward(self, x):
        return x + self.drop(self.gamma * torch.relu(self.conv(x))) + self.shift


def _layer_scale_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), _LayerScaleBlock(4), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 5 * 5, 3)).double().eval()


def test_eval_mode_affine_ops_are_certified_soundly():
    m = _layer_scale_net()
    c = copy.deepcopy(m)
    with torch.no_grad():
        c[1].gamma.mul_(1.05)
        c[1].conv.weight[c[1].conv.weight.abs() < 0.1] = 0
    graph = cc.trace(m, (1, 2, 5, 5))
    kinds = [type(n.op).__name__ for n in graph.nodes[1:]]
    assert "ChannelAffineOp" in kinds
    cert = cc.certify(m, c, input_shape=(1, 2, 5, 5), input_radius=1.0, search_steps=10)
    found = sh.attack_models(m, c, 1.0, (1, 2, 5, 5), seed=0, steps=0, n_uniform=4032,
                             n_vertices=64)
    sh.assert_sound(found, cert.bound, what="eval-mode affine ops")
    assert cert.measurements.adversarial_max is not None
    assert sh.within(cert.measurements.adversarial_max, cert.bound, float(found.size.max()))


def test_layer_scale_change_is_seen():
    m = _layer_scale_net()
    c = copy.deepcopy(m)
    with torch.no_grad():
        c[1].gamma.mul_(2.0)
    cert = cc.certify(m, c, input_shape=(1, 2, 5, 5), input_radius=1.0, search_steps=0)
    assert cert.changed_parameters == 4
    assert cert.bound > 0


def test_stochastic_depth_in_training_mode_is_refused():
    from torchvision.ops import stochastic_depth

    m = _layer_scale_net()
    m[1].drop.train()
    with pytest.raises(cc.TrainModeError):
        cc.trace(m, (1, 2, 5, 5))

    class Always(nn.Module):  # training=True passed explicitly: fx traces into it
        def forward(self, x):
            return x + stochastic_depth(x, 0.3, "row", True)

    err = _refusal(nn.Sequential(nn.Linear(3, 3), Always()).eval(), (1, 3))
    assert "bernoulli" in str(err)  # the random mask is refused


def test_non_channel_constant_is_refused_with_its_shape():
    class Mul(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("w", torch.rand(1, 1, 5, 5))

        def forward(self, x):
            return x * self.w

    err = _refusal(nn.Sequential(nn.Conv2d(2, 2, 1), Mul()).eval(), (1, 2, 5, 5))
    assert "(1, 1, 5, 5)" in str(err)
