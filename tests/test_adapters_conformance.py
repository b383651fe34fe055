"""Registry-driven conformance: every module type registered in the default adapter
registry (built-ins and installed plugins) is traced inside a tiny model and checked:

* the traced graph's real forward equals the eager model in float64;
* the IR's magnitude map (every op's ``magnitude`` with ``|theta|``) is non-negative and
  equals the brute-force absolute-weight map of the model's neuron DAG (tests/_nets.py:
  Jacobians, max-pool windows, the ReLU6/LeakyReLU rewrites) on a random non-negative
  input, and on all-ones (the path-norm).

A registered module type without an entry in FACTORIES fails: a new adapter is covered
by adding one line here. Function and method adapters, aten overloads included, are
covered the same way in tests/test_adapters_functions.py.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from _nets import NetBuilder, float64_copy, neuron_dag
from torch import Tensor, nn

import certcompress as cc
from certcompress.capture import default_registry
from certcompress.capture.fakequant import ActivationQuantizer


@dataclass(frozen=True)
class Case:
    """A tiny instance of a module type and its input shape. ``twin`` builds, for a
    module the oracle cannot read directly (a plugin's piecewise-linear module), a chain
    of modules it can, with the same neuron DAG; the test checks that the twin computes
    the module's function."""

    make: Callable[[], nn.Module]
    shape: tuple[int, ...]
    twin: Callable[[], list[nn.Module]] | None = None


def _qualname(t: type) -> str:
    return f"{t.__module__}.{t.__qualname__}"


def _load(path: str) -> Any:
    module, _, attr = path.rpartition(".")
    return getattr(importlib.import_module(module), attr)


class _Scale(nn.Module):
    """``x * s``: identity neurons with the fixed incoming weight ``s``."""

    def __init__(self, s: float) -> None:
        super().__init__()
        self.s = s

    def forward(self, x: Tensor) -> Tensor:
        return x * self.s


_SCALED_RELU = "certcompress_example.module.ScaledReLU"

# registered module type (qualified name) -> cases
FACTORIES: dict[str, list[Case]] = {
    _qualname(nn.Linear): [
        Case(lambda: nn.Linear(5, 3), (1, 5)),
        Case(lambda: nn.Linear(4, 3, bias=False), (1, 2, 4))],
    _qualname(nn.Conv1d): [
        Case(lambda: nn.Conv1d(2, 3, 3, stride=2, padding=1), (1, 2, 7)),
        Case(lambda: nn.Conv1d(2, 2, 3, padding=2, padding_mode="circular"), (1, 2, 4))],
    _qualname(nn.Conv2d): [
        Case(lambda: nn.Conv2d(2, 3, 3, stride=2, padding=1), (1, 2, 5, 5)),
        Case(lambda: nn.Conv2d(2, 4, (2, 3), dilation=(2, 1), groups=2), (1, 2, 5, 4)),
        Case(lambda: nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"), (1, 1, 4, 4)),
        Case(lambda: nn.Conv2d(1, 2, 3, padding="same", bias=False), (1, 1, 4, 4))],
    _qualname(nn.Conv3d): [
        Case(lambda: nn.Conv3d(1, 2, 2, padding=1), (1, 1, 2, 3, 2)),
        Case(lambda: nn.Conv3d(1, 1, 2, padding=1, padding_mode="replicate"), (1, 1, 2, 2, 2))],
    _qualname(nn.ConvTranspose1d): [
        Case(lambda: nn.ConvTranspose1d(2, 2, 3, stride=2, padding=1, output_padding=1),
             (1, 2, 4))],
    _qualname(nn.ConvTranspose2d): [
        Case(lambda: nn.ConvTranspose2d(2, 2, 3, stride=2, padding=1, output_padding=1),
             (1, 2, 3, 3)),
        Case(lambda: nn.ConvTranspose2d(2, 4, 2, groups=2, dilation=2), (1, 2, 2, 3))],
    _qualname(nn.ConvTranspose3d): [
        Case(lambda: nn.ConvTranspose3d(1, 2, 2, stride=2), (1, 1, 2, 2, 1))],
    _qualname(nn.BatchNorm1d): [
        Case(lambda: nn.BatchNorm1d(3), (1, 3)),
        Case(lambda: nn.BatchNorm1d(3), (1, 3, 4))],
    _qualname(nn.BatchNorm2d): [
        Case(lambda: nn.BatchNorm2d(2), (1, 2, 3, 3)),
        Case(lambda: nn.BatchNorm2d(2, affine=False), (1, 2, 2, 2))],
    _qualname(nn.BatchNorm3d): [Case(lambda: nn.BatchNorm3d(2), (1, 2, 2, 2, 2))],
    _qualname(nn.ReLU): [Case(lambda: nn.ReLU(), (1, 2, 3))],
    _qualname(nn.Hardtanh): [
        Case(lambda: nn.ReLU6(), (1, 6)),
        Case(lambda: nn.Hardtanh(-0.5, 2.0), (1, 2, 3))],
    _qualname(nn.LeakyReLU): [
        Case(lambda: nn.LeakyReLU(0.2), (1, 5)),
        Case(lambda: nn.LeakyReLU(-0.3), (1, 4))],
    _qualname(nn.MaxPool1d): [
        Case(lambda: nn.MaxPool1d(3, stride=2, padding=1, ceil_mode=True), (1, 2, 6))],
    _qualname(nn.MaxPool2d): [
        Case(lambda: nn.MaxPool2d(2), (1, 2, 4, 4)),
        Case(lambda: nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True), (1, 1, 6, 5)),
        Case(lambda: nn.MaxPool2d(2, stride=1, dilation=2, padding=1), (1, 1, 4, 4))],
    _qualname(nn.MaxPool3d): [Case(lambda: nn.MaxPool3d(2, ceil_mode=True), (1, 1, 3, 3, 3))],
    _qualname(nn.AvgPool1d): [
        Case(lambda: nn.AvgPool1d(3, stride=2, padding=1, ceil_mode=True,
                                  count_include_pad=False), (1, 2, 6))],
    _qualname(nn.AvgPool2d): [
        Case(lambda: nn.AvgPool2d(2), (1, 2, 4, 4)),
        Case(lambda: nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True), (1, 1, 5, 5)),
        Case(lambda: nn.AvgPool2d(2, divisor_override=3), (1, 1, 4, 4))],
    _qualname(nn.AvgPool3d): [Case(lambda: nn.AvgPool3d(2, stride=1), (1, 1, 3, 2, 3))],
    _qualname(nn.AdaptiveAvgPool1d): [Case(lambda: nn.AdaptiveAvgPool1d(3), (1, 2, 7))],
    _qualname(nn.AdaptiveAvgPool2d): [
        Case(lambda: nn.AdaptiveAvgPool2d((2, 3)), (1, 2, 5, 5)),
        Case(lambda: nn.AdaptiveAvgPool2d(1), (1, 2, 3, 3))],
    _qualname(nn.AdaptiveAvgPool3d): [
        Case(lambda: nn.AdaptiveAvgPool3d((2, 1, 2)), (1, 1, 3, 3, 3))],
    _qualname(nn.Upsample): [
        Case(lambda: nn.Upsample(scale_factor=2, mode="nearest"), (1, 2, 2, 3)),
        Case(lambda: nn.Upsample(size=(5, 4), mode="bilinear"), (1, 1, 3, 3)),
        Case(lambda: nn.UpsamplingBilinear2d(scale_factor=2), (1, 1, 2, 2)),
        Case(lambda: nn.Upsample(scale_factor=3, mode="linear"), (1, 2, 3))],
    _qualname(nn.Identity): [Case(lambda: nn.Identity(), (1, 4))],
    _qualname(nn.Dropout): [Case(lambda: nn.Dropout(0.5), (1, 4))],
    _qualname(nn.Dropout1d): [Case(lambda: nn.Dropout1d(0.5), (1, 2, 3))],
    _qualname(nn.Dropout2d): [Case(lambda: nn.Dropout2d(0.5), (1, 2, 2, 2))],
    _qualname(nn.Dropout3d): [Case(lambda: nn.Dropout3d(0.5), (1, 2, 2, 2, 2))],
    _qualname(nn.AlphaDropout): [Case(lambda: nn.AlphaDropout(0.5), (1, 4))],
    _qualname(nn.FeatureAlphaDropout): [Case(lambda: nn.FeatureAlphaDropout(0.5), (1, 2, 3))],
    _qualname(nn.Flatten): [
        Case(lambda: nn.Flatten(), (1, 2, 3)),
        Case(lambda: nn.Flatten(0, -1), (1, 2, 2))],
    _qualname(nn.Unflatten): [Case(lambda: nn.Unflatten(1, (2, 3)), (1, 6))],
    _qualname(nn.ZeroPad1d): [Case(lambda: nn.ZeroPad1d((1, 2)), (1, 2, 3))],
    _qualname(nn.ZeroPad2d): [Case(lambda: nn.ZeroPad2d((1, 0, 2, 1)), (1, 1, 2, 3))],
    _qualname(nn.ZeroPad3d): [Case(lambda: nn.ZeroPad3d(1), (1, 1, 2, 1, 2))],
    _qualname(nn.ConstantPad1d): [Case(lambda: nn.ConstantPad1d(2, 0.0), (1, 2, 3))],
    _qualname(nn.ConstantPad2d): [Case(lambda: nn.ConstantPad2d((1, 1, 0, 2), 0.0), (1, 1, 2, 2))],
    _qualname(nn.ConstantPad3d): [Case(lambda: nn.ConstantPad3d(1, 0.0), (1, 1, 1, 2, 2))],
    _qualname(nn.ReflectionPad1d): [Case(lambda: nn.ReflectionPad1d(2), (1, 2, 4))],
    _qualname(nn.ReflectionPad2d): [Case(lambda: nn.ReflectionPad2d((1, 2, 1, 0)), (1, 1, 3, 3))],
    _qualname(nn.ReflectionPad3d): [Case(lambda: nn.ReflectionPad3d(1), (1, 1, 2, 2, 2))],
    _qualname(nn.ReplicationPad1d): [Case(lambda: nn.ReplicationPad1d(2), (1, 2, 3))],
    _qualname(nn.ReplicationPad2d): [
        Case(lambda: nn.ReplicationPad2d((2, 0, 1, 1)), (1, 1, 2, 2))],
    _qualname(nn.ReplicationPad3d): [Case(lambda: nn.ReplicationPad3d(1), (1, 1, 1, 2, 2))],
    _qualname(nn.CircularPad1d): [Case(lambda: nn.CircularPad1d(2), (1, 2, 3))],
    _qualname(nn.CircularPad2d): [Case(lambda: nn.CircularPad2d((1, 1, 1, 0)), (1, 1, 2, 3))],
    _qualname(nn.CircularPad3d): [Case(lambda: nn.CircularPad3d(1), (1, 1, 2, 2, 2))],
    # plugins (their types are registered only where the plugin is installed)
    "torchvision.ops.stochastic_depth.StochasticDepth": [
        Case(lambda: _load("torchvision.ops.StochasticDepth")(0.3, "row"), (2, 3)),
        Case(lambda: _load("torchvision.ops.StochasticDepth")(0.0, "batch"), (1, 2, 3, 3))],
    _SCALED_RELU: [
        Case(lambda: _load(_SCALED_RELU)(-1.5), (1, 2, 3), twin=lambda: [nn.ReLU(), _Scale(-1.5)]),
        Case(lambda: _load(_SCALED_RELU)(0.25), (1, 4), twin=lambda: [nn.ReLU(), _Scale(0.25)])],
    # switched off (the original of a quantized pair) it is the identity; switched on, its
    # rounding is no function of the input, so the magnitude map refuses it: the bounds of
    # enabled quantizers are attacked in tests/quantization/test_q_activations.py
    _qualname(ActivationQuantizer): [
        Case(lambda: ActivationQuantizer(0.1, 0, 0, 255, enabled=False), (1, 6),
             twin=lambda: [nn.Identity()]),
        Case(lambda: ActivationQuantizer(0.05, 3, -128, 127, enabled=False), (1, 2, 3),
             twin=lambda: [nn.Identity()])],
}

REGISTERED = sorted(key for kind, key, _, _ in default_registry().entries() if kind == "module")


def _randomize(m: nn.Module, gen: torch.Generator) -> nn.Module:
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
    return m.eval()


def _engine_magnitude(g: cc.Graph, x: Tensor) -> Tensor:
    """The IR's magnitude map: every op's ``magnitude`` with ``|theta|``, at input x."""
    env = {g.input.name: x}
    for n in g.nodes[1:]:
        assert n.op is not None
        p = g.params.get(n.name)
        out = n.op.magnitude([env[i] for i in n.inputs], None if p is None else p.map(torch.abs),
                             True)
        assert bool((out >= 0).all()), f"negative magnitude at node {n.name} ({n.source})"
        env[n.name] = out
    return g.flatten_outputs([env[o] for o in g.outputs])


def test_every_registered_module_type_has_a_factory() -> None:
    missing = [name for name in REGISTERED if name not in FACTORIES]
    assert not missing, (
        f"registered module types without a conformance factory: {missing}; add an entry "
        "to FACTORIES in tests/test_adapters_conformance.py"
    )


@pytest.mark.parametrize("type_name", REGISTERED)
def test_registered_module_conforms(type_name: str) -> None:
    if type_name not in FACTORIES:
        pytest.fail(f"no factory for registered module type {type_name}")
    gen = torch.Generator().manual_seed(len(type_name))
    for case in FACTORIES[type_name]:
        shape = case.shape
        module = _randomize(case.make(), gen)
        assert _qualname(type(module)) == type_name or type_name in {
            _qualname(t) for t in type(module).__mro__}
        b = NetBuilder(shape)
        net = b.build(b.module(module, "x"))
        g = cc.trace(net, shape)
        assert len(g.nodes) > 1 and all(n.source.startswith("mods.") for n in g.nodes[1:]), \
            g.summary()

        # traced forward == eager forward (float64)
        x = 2 * torch.randn(shape, generator=gen, dtype=torch.float64)
        with torch.no_grad():
            want = float64_copy(net)(x)
            got = g.run(x)
        want = want.reshape(want.shape[0], -1)
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-10,
                                   atol=1e-10 * max(1.0, float(want.abs().max())),
                                   err_msg=f"{module!r}: traced forward")

        # magnitude map == brute-force absolute-weight map of the neuron DAG
        oracle_net = net
        if case.twin is not None:
            tb = NetBuilder(shape)
            h = "x"
            for m in case.twin():
                h = tb.module(m, h)
            oracle_net = tb.build(h)
            with torch.no_grad():
                np.testing.assert_allclose(float64_copy(oracle_net)(x).reshape(1, -1).numpy(),
                                           want.numpy(), rtol=1e-12, atol=1e-12,
                                           err_msg="the oracle twin is not the module")
        dag = neuron_dag([oracle_net], shape)
        for xm in (torch.rand(shape, generator=gen, dtype=torch.float64),
                   torch.ones(shape, dtype=torch.float64)):
            with torch.no_grad():
                mag = _engine_magnitude(g, xm).reshape(-1).numpy()
            ref = dag.magnitude(xm.reshape(-1).numpy())
            np.testing.assert_allclose(mag, ref, rtol=1e-10, atol=1e-12,
                                       err_msg=f"{module!r}: magnitude map")
        pn = cc.path_norm(g)
        assert abs(pn - float(ref.sum())) <= 1e-10 * max(float(ref.sum()), 1e-300)


@pytest.mark.parametrize("module, shape, reason", [
    (nn.ConstantPad2d(1, 0.5), (1, 1, 2, 2), "constant padding"),
    (nn.Upsample(scale_factor=2, mode="bicubic"), (1, 1, 2, 2), "bicubic"),
    (nn.MaxPool2d(2, return_indices=True), (1, 1, 2, 2), "return_indices"),
])
def test_out_of_class_variants_are_refused(module: nn.Module, shape: tuple[int, ...],
                                           reason: str) -> None:
    """A registered type with arguments outside the class is refused, not mis-modeled."""
    class Wrap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = module

        def forward(self, x: Tensor) -> Tensor:
            y = self.m(x)
            return y[0] if isinstance(y, tuple) else y

    with pytest.raises(cc.UnsupportedModelError, match=reason):
        cc.trace(Wrap().eval(), shape)
