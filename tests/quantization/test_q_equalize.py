"""Equalization: the rescaled model computes the same function (to float tolerance; in
fact bit for bit, the factors being powers of two), the certified bound never rises,
and on badly scaled networks it drops."""

from __future__ import annotations

import copy

import pytest
import torch
from _nets import random_conv_net, random_vector_net
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from certcompress.compress.quantization import QuantConfig, equalize, quantize
from certcompress.compress.quantization.equalize import find_pairs
from certcompress.demo.digits import DigitsCNN


def _skewed_mlp(seed: int) -> nn.Module:
    """An MLP whose hidden neurons have very different scales (a rescaled network)."""
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 10), nn.ReLU(),
                      nn.Linear(10, 3)).eval()
    with torch.no_grad():
        for i, j in ((0, 2), (2, 4)):
            lam = torch.exp(2.0 * torch.randn(m[i].out_features))
            m[i].weight.mul_(lam[:, None])
            m[i].bias.mul_(lam)
            m[j].weight.div_(lam[None, :])
    return m


def _conv_bn_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(2, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(),
                      nn.MaxPool2d(2), nn.Flatten(), nn.Linear(20, 6), nn.ReLU(),
                      nn.Linear(6, 2)).eval()
    with torch.no_grad():
        m[1].weight.copy_(torch.exp(2.0 * torch.randn(5)))
        m[1].running_var.uniform_(0.5, 2.0)
        m[1].running_mean.normal_()
        m[1].bias.normal_()
    return m


def test_pairs_follow_homogeneous_single_user_chains() -> None:
    mlp = _skewed_mlp(0)
    pairs = find_pairs(_unfolded(mlp, (1, 6)), mlp)
    assert [(p.producer, p.consumer) for p in pairs] == [("0", "2"), ("2", "4")]
    conv = _conv_bn_net(0)
    pairs = find_pairs(_unfolded(conv, (1, 2, 4, 4)), conv)
    assert [(p.producer, p.bn, p.consumer) for p in pairs] == [("0", "1", "5"), ("5", None, "7")]
    # through MaxPool and Flatten, channel c of the conv feeds Linear columns 4c..4c+3
    assert [p.tolist() for p in pairs[0].columns] == [[4 * c + k for k in range(4)]
                                                      for c in range(5)]
    # a ReLU output used twice (residual) is not rescalable
    assert find_pairs(_unfolded(DigitsCNN().eval(), (1, 1, 8, 8)), DigitsCNN().eval()) == []


def _unfolded(model: nn.Module, shape: tuple[int, ...]):  # noqa: ANN202
    from certcompress.capture import trace

    return trace(model, shape, fold_bn=False)


@pytest.mark.parametrize("make,shape,gran", [
    (_skewed_mlp, (1, 6), "per-tensor"), (_skewed_mlp, (1, 6), "per-channel"),
    (_conv_bn_net, (1, 2, 4, 4), "per-tensor"), (_conv_bn_net, (1, 2, 4, 4), "per-channel")])
def test_equalization_preserves_the_function_and_lowers_the_bound(make, shape, gran) -> None:  # noqa: ANN001
    model = make(1)
    before = copy.deepcopy(model.state_dict())
    qcfg = QuantConfig.uniform(model, 4, gran)
    res = equalize(model, qcfg, shape, 1.0, check_inputs=64)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # untouched
    assert res.applied and res.bound_after < res.bound_before
    x = (torch.rand((200,) + shape[1:]) * 2 - 1)
    with torch.no_grad():
        assert torch.allclose(res.model(x), model(x), rtol=1e-6, atol=1e-6)
    assert res.function_change <= 1e-9
    for lam in res.scales.values():  # powers of two
        assert torch.equal(torch.exp2(torch.round(torch.log2(lam))), lam)
    # the bounds are the certificates of the two quantized models
    _, cert = quantize(res.model, qcfg, shape, 1.0, search_steps=0)
    assert cert.bound == pytest.approx(res.bound_after, rel=1e-12)
    assert res.certificate_before.bound == res.bound_before
    if gran == "per-tensor" and make is _skewed_mlp:  # every grid adapts: a large gain
        assert res.bound_after < 0.5 * res.bound_before


@settings(max_examples=10)
@given(seed=st.integers(0, 10_000), bits=st.sampled_from([2, 4, 8]),
       gran=st.sampled_from(["per-channel", "per-tensor"]), kind=st.integers(0, 1))
def test_equalization_never_raises_the_bound(seed: int, bits: int, gran: str, kind: int) -> None:
    if kind == 0:
        model, shape = random_vector_net(["dense", "dense_bn", "leaky"], 6, 4, 2, seed)
    else:
        model, shape = random_conv_net(["conv_bn", "maxpool"], 3, 4, 2, seed)
    qcfg = QuantConfig.uniform(model, bits, gran)
    res = equalize(model, qcfg, shape, 1.0, check_inputs=32, sweeps=1)
    assert res.bound_after <= res.bound_before
    assert res.applied == (res.bound_after < res.bound_before)
    if not res.applied:
        assert res.model is model and not res.scales
    x = (torch.rand((50,) + tuple(shape[1:])) * 2 - 1)
    with torch.no_grad():
        assert torch.allclose(res.model(x), model(x), rtol=1e-6, atol=1e-6)
