"""Lowerings as a registry that plugins extend: the tutorial plugin's op goes through the
bounds tier (certified over a domain, attacked one-sidedly: the bound is never below a
deviation found by PGD, a grid or the box's corners), a plugin without a lowering is
refused by the bounds tier with every node listed, and the registry's validation.
Also: the per-kind rule table of the propagation refuses unknown primitive kinds, every
offender listed."""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import certcompress as cc
import certcompress.ir.ops as ops
import certcompress_example as example  # installed by make install (the plugin tutorial)
from certcompress.bounds.propagation.evaluate import pair_outputs
from certcompress.bounds.propagation.lowering import (
    Builder,
    LoweringRegistry,
    default_lowerings,
    lower_pair,
    lowerings_for,
    register_builtin_lowerings,
)
from certcompress.bounds.propagation.primitives import PairNet, PNode
from certcompress.bounds.propagation.rules import rules_for
from certcompress.capture import PluginManager, trace
from certcompress.capture import plugins as plugins_mod
from certcompress.domain import InputDomain
from certcompress.errors import PluginError, RefusalKind, UnsupportedModelError
from certcompress.ir.graph import IRNode
from certcompress.ir.ops import IROp, ReLUOp
from certcompress.measure import adversarial_deviation, float64_function

REL, ABS = 1e-9, 1e-12  # the measurement tolerance of the bound tests


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 10), example.ScaledReLU(-1.5), nn.Linear(10, 6),
                         example.ScaledReLU(0.5), nn.Linear(6, 2)).double().eval()


def _rounded(model: nn.Module) -> nn.Module:
    out = copy.deepcopy(model)
    with torch.no_grad():
        for p in out.parameters():
            p.copy_(torch.round(p * 8) / 8)
    return out


def _found(model: nn.Module, compressed: nn.Module, lo: torch.Tensor, hi: torch.Tensor
           ) -> tuple[float, torch.Tensor]:
    """The largest l1 deviation (and per-output maxima) over a grid, the corners and PGD."""
    axes = [torch.linspace(float(a), float(b), 17, dtype=torch.float64)
            for a, b in zip(lo.reshape(-1), hi.reshape(-1))]
    x = torch.cartesian_prod(*axes)
    corners = torch.tensor(list(itertools.product(*zip(lo.reshape(-1).tolist(),
                                                       hi.reshape(-1).tolist()))),
                           dtype=torch.float64)
    f, g = float64_function(model), float64_function(compressed)
    adv = adversarial_deviation(f, g, (1, 3), lo, hi, steps=30, restarts=4, seed=0)
    x = torch.cat([x, corners, adv.argmax.reshape(-1, 3)])
    with torch.no_grad():
        dev = (f(x) - g(x)).abs()
    return float(dev.sum(1).max()), dev.amax(0)


def test_tutorial_op_is_certified_by_the_bounds_tier_over_a_domain() -> None:
    model = _net(3)
    compressed = _rounded(model)
    lo = torch.tensor([[-1.0, -0.5, 0.0]], dtype=torch.float64)
    hi = torch.tensor([[0.5, 1.0, 2.0]], dtype=torch.float64)
    dom = InputDomain.box(lo, hi, shape=(1, 3))
    cert = cc.certify(model, compressed, (1, 3), domain=dom, search_steps=5,
                      search_restarts=1)
    assert "bounds" in cert.by_method
    tier = cert.by_method["bounds"]
    found, per_output = _found(model, compressed, lo, hi)
    assert 0 < found <= tier.bound * (1 + REL) + ABS  # one-sided: never below an attack
    assert all(float(m) <= b * (1 + REL) + ABS for m, b in zip(per_output, tier.per_output))
    assert cert.bound <= tier.bound
    # and it is a real propagation, tighter than the path-metric over this box
    assert tier.bound < cert.by_method["path-metric"].bound


def test_tutorial_lowering_is_exact() -> None:
    model, compressed = _net(4), _rounded(_net(4))
    pair = lower_pair(trace(model, (1, 3)), trace(compressed, (1, 3)))
    x = torch.randn(64, 1, 3, dtype=torch.float64) * 3
    z, c = pair_outputs(pair, x)
    with torch.no_grad():
        torch.testing.assert_close(z, model(x.reshape(64, 3)), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(c, compressed(x.reshape(64, 3)), rtol=1e-12, atol=1e-12)


class _AdaptersOnly(example.ExamplePlugin):  # type: ignore[misc,name-defined]
    name = "example-without-lowering"

    def register_lowerings(self, registry: object) -> None:
        pass


class _LoweringsOnly(example.ExamplePlugin):  # type: ignore[misc,name-defined]
    name = "example-lowerings-only"

    def register_adapters(self, registry: object) -> None:
        pass


@pytest.fixture
def fresh_manager(monkeypatch: pytest.MonkeyPatch) -> PluginManager:
    pm = PluginManager(load_entry_points=False)
    monkeypatch.setattr(plugins_mod, "_manager", pm)
    return pm


def test_an_op_without_lowering_is_refused_with_every_node(fresh_manager: PluginManager
                                                           ) -> None:
    fresh_manager.add(_AdaptersOnly, "test")
    model = _net(5)
    g = trace(model, (1, 3), registry=fresh_manager.registry)
    with pytest.raises(UnsupportedModelError, match="no lowering for ScaledReLUOp") as info:
        lower_pair(g, g)
    assert [o.node for o in info.value.offenders] == [n.name for n in g.nodes
                                                      if isinstance(n.op, example.ScaledReLUOp)]
    assert info.value.kinds == {RefusalKind.NO_LOWERING}
    assert "register_lowerings(registry)" in str(info.value)
    # the same plugin loaded with its lowering: the default table follows the manager
    fresh_manager.add(_LoweringsOnly, "test")
    entry = default_lowerings().entry(example.ScaledReLUOp)
    assert entry is not None and entry.source == "example-lowerings-only"
    assert len(lower_pair(g, g).nodes) > len(g.nodes)


def test_registry_validates_and_attributes() -> None:
    reg = LoweringRegistry()

    def lower(node: IRNode, op: IROp, ins: list[int], b: Builder) -> int:
        return b.relu(ins[0], node.name)

    with pytest.raises(PluginError, match="not an IROp subclass"):
        reg.register(nn.ReLU, lower)  # type: ignore[arg-type]
    with pytest.raises(PluginError, match="not callable"):
        reg.register(ReLUOp, "relu")  # type: ignore[arg-type]
    reg.register(ReLUOp, lower)
    with reg.attributed_to("other-plugin"), \
            pytest.raises(PluginError, match="already has a lowering from certcompress"):
        reg.register(ReLUOp, lower)

    @dataclass(frozen=True)
    class SubReLU(ReLUOp):
        pass

    assert reg.lookup(SubReLU()) is lower  # along the MRO
    assert SubReLU() in reg and example.ScaledReLUOp(1.0) not in reg


def test_a_failing_hook_names_the_plugin(fresh_manager: PluginManager) -> None:
    class Broken(example.ExamplePlugin):  # type: ignore[misc,name-defined]
        name = "broken-lowerings"

        def register_lowerings(self, registry: object) -> None:
            raise ValueError("boom")

    fresh_manager.add(Broken, "test")
    with pytest.raises(PluginError, match="'broken-lowerings' .* failed in register_lowerings: "
                                          "ValueError: boom"):
        lowerings_for(fresh_manager)


def test_unknown_primitive_kinds_are_refused_with_every_offender() -> None:
    @dataclass(frozen=True, eq=False, kw_only=True)
    class PSquare(PNode):
        pass

    g = trace(nn.Sequential(nn.Linear(2, 2), nn.ReLU()).eval(), (1, 2))
    pair = lower_pair(g, g)
    bad = PairNet(nodes=pair.nodes + (PSquare(inputs=(2,), shape=(1, 2), source="sq1"),
                                      PSquare(inputs=(3,), shape=(1, 2), source="sq2")),
                  outputs=(4,), input_shape=pair.input_shape)
    with pytest.raises(UnsupportedModelError, match="no rule for 2 primitive node") as info:
        rules_for(bad)
    assert [o.node for o in info.value.offenders] == ["sq1", "sq2"]


def test_a_lowering_returning_a_wrong_node_is_named() -> None:
    g = trace(nn.Sequential(nn.Linear(2, 3), nn.ReLU()).eval(), (1, 2))
    reg = LoweringRegistry()
    register_builtin_lowerings(reg)
    with reg.attributed_to("bad-plugin"):
        reg.register(ReLUOp, lambda node, op, ins, b: 99, replace=True)
    with pytest.raises(RuntimeError, match=r"from bad-plugin\) returned 99"):
        lower_pair(g, g, lowerings=reg)
    with reg.attributed_to("bad-plugin"):
        reg.register(ReLUOp, lambda node, op, ins, b: b.linear(
            ins, lambda x: x[..., :1], lambda x: x[..., :1], node.name), replace=True)
    with pytest.raises(RuntimeError, match=r"from bad-plugin\) gave shape \(1, 1\), the "
                                           r"graph says \(1, 3\)"):
        lower_pair(g, g, lowerings=reg)


def test_every_core_op_kind_has_a_lowering() -> None:
    """A new core op kind fails here until it has a lowering (one function, one line in
    ``register_builtin_lowerings``)."""
    def subclasses(cls: type) -> list[type]:
        return [s for c in cls.__subclasses__() for s in [c, *subclasses(c)]]

    # private bases (``_SelfMagnitudeOp``) share code between op kinds and never occur
    core = [c for c in subclasses(IROp) if c.__module__.startswith("certcompress.")
            and not c.__name__.startswith("_")]
    assert ops.ReLUOp in core and ops.ConvOp in core
    reg = LoweringRegistry()
    register_builtin_lowerings(reg)
    assert [c.__name__ for c in core if c not in reg] == []
