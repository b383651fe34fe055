"""The trace check: a graph that does not reproduce the module is refused with the named
reason (hooks, overridden forward matched by a parent's adapter, in-place writes the
graph would lose, state changed by forward, invalid pooling arguments); what is declared
safe (in-place ReLU, subclasses traced through) is certified soundly, checked one-sidedly
against the deviation measured by sampling, corners and PGD."""

from __future__ import annotations

import copy
import math

import _soundness as sh
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import certcompress as cc
from certcompress.capture.check import PROBE_MACS, graph_macs, numeric_check, probe_count
from certcompress.errors import RefusalKind

SHAPE_V = (1, 6)
SHAPE_I = (1, 2, 6, 6)


def _refused(model: nn.Module, shape: tuple[int, ...], *needles: str) -> cc.UnsupportedModelError:
    with pytest.raises(cc.UnsupportedModelError) as info:
        cc.trace(model.eval(), shape)
    text = str(info.value)
    for n in needles:
        assert n in text, f"{n!r} not in:\n{text}"
    assert RefusalKind.MODEL in info.value.kinds
    return info.value


def _certified_soundly(m: nn.Module, shape: tuple[int, ...], r: float = 1.0) -> None:
    m = m.double().eval()
    c = copy.deepcopy(m)
    with torch.no_grad():
        for p in c.parameters():
            p.mul_(1.03)
    dom = cc.InputDomain.box(-r, r, shape=shape)
    cert = cc.certify(m, c, domain=dom, search_steps=0)
    assert math.isfinite(cert.bound)
    found = sh.attack_models(m, c, dom, shape, seed=1, steps=30, restarts=3, n_uniform=192,
                             n_vertices=64)
    sh.assert_sound(found, cert.bound, what="declared-safe model")
    sh.record("certify: trace-check safe models", cert.bound, found.worst)


# ---------------------------------------------------------------------- models
class _MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.relu(self.fc1(x)))


class _CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(2, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 2, 3)
        self.fc = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(F.relu(self.conv2(F.relu(self.conv1(x)))).flatten(1))


# ----------------------------------------------------------------------- hooks
def test_forward_hooks_on_linear_and_conv_layers_are_refused_with_their_path():
    m = _MLP()
    h = m.fc1.register_forward_hook(lambda mod, i, o: o * 2)
    _refused(m, SHAPE_V, "forward hook on `fc1`")
    h.remove()
    cc.trace(m.eval(), SHAPE_V)  # accepted once the hook is gone
    c = _CNN()
    c.conv2.register_forward_hook(lambda mod, i, o: None)  # even one that returns None
    _refused(c, SHAPE_I, "forward hook on `conv2`")


def test_forward_pre_hooks_and_root_hooks_are_refused():
    m = _MLP()
    m.fc2.register_forward_pre_hook(lambda mod, i: (i[0] + 1,))
    _refused(m, SHAPE_V, "forward pre-hook on `fc2`")
    c = _CNN()
    c.register_forward_hook(lambda mod, i, o: o)
    _refused(c, SHAPE_I, "forward hook on `<root>`")


def test_global_module_hooks_are_refused():
    from torch.nn.modules.module import (
        register_module_forward_hook,
        register_module_forward_pre_hook,
    )

    for register in (register_module_forward_hook, register_module_forward_pre_hook):
        h = register(lambda *a: None)
        try:
            _refused(_MLP(), SHAPE_V, "global forward")
        finally:
            h.remove()
    cc.trace(_MLP().eval(), SHAPE_V)


def test_hook_active_only_in_a_small_ball_is_refused_and_check_trace_reports_it():
    # changes the output only within 1e-3 of the domain's centre: sampling would miss it
    m = _MLP().double().eval()
    m.fc2.register_forward_hook(
        lambda mod, i, o: o + 10.0 * (i[0].abs().amax() < 1e-3).double())
    _refused(m, SHAPE_V, "forward hook on `fc2`")
    rep = cc.check_trace(m, SHAPE_V)
    assert not rep.passed and any("forward hook on `fc2`" in r for r in rep.reasons)


def test_numeric_check_catches_a_change_inside_a_small_ball_at_the_centre():
    # the numeric part alone: a module that differs from the graph only near the centre
    m = _MLP().double().eval()
    g = cc.trace(m, SHAPE_V)

    class _Ball(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: Tensor) -> Tensor:
            near = (x.abs().amax(dim=1, keepdim=True) < 1e-3).double()
            return self.inner(x) + 9.5 * near

    lo, hi = -torch.ones(SHAPE_V, dtype=torch.float64), torch.ones(SHAPE_V, dtype=torch.float64)
    rep = numeric_check(_Ball(m).eval(), g, lo, hi)
    assert not rep.passed
    assert "traced graph differs from the module's output by 9.5" in rep.reasons[0]
    assert "at probe the centre" in rep.reasons[0]
    assert numeric_check(m, g, lo, hi).passed


def test_forward_replaced_on_an_instance_is_refused():
    m = _MLP()
    lin = m.fc1
    m.fc1.forward = lambda x: F.linear(x, lin.weight, lin.bias) * 3  # type: ignore[method-assign]
    _refused(m, SHAPE_V, "`forward` replaced on the instance `fc1`")


# ----------------------------------------------------------- overridden forward
class _ScaledLinear(nn.Linear):
    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) * 2.0 - 0.5


class _ShiftedReLU(nn.ReLU):
    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x - 0.25)


class _FlippedConv(nn.Conv2d):
    def forward(self, x: Tensor) -> Tensor:
        return -self._conv_forward(x, self.weight, self.bias)


class _SneakyConv(nn.Conv2d):  # overrides only the helper forward calls
    def _conv_forward(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        return F.conv2d(x, w * 0.5, b, self.stride, self.padding)


def test_subclasses_overriding_forward_are_traced_through_not_matched_by_the_parent():
    torch.manual_seed(0)
    lin = nn.Sequential(_ScaledLinear(6, 5), _ShiftedReLU(), nn.Linear(5, 2))
    g = cc.trace(lin.eval(), SHAPE_V)
    assert not any("_ScaledLinear" in n.source for n in g.nodes)  # its body, not a leaf
    _certified_soundly(lin, SHAPE_V)
    torch.manual_seed(0)
    net = nn.Sequential(_FlippedConv(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 2))
    _certified_soundly(net, SHAPE_I)
    # overriding only the helper forward calls: traced through too, where the computed
    # weight is refused (the Conv2d adapter used to certify the unscaled convolution)
    sneaky = nn.Sequential(_SneakyConv(2, 3, 3), nn.Flatten()).eval()
    with pytest.raises(cc.UnsupportedModelError, match="weight operand is computed"):
        cc.trace(sneaky, SHAPE_I)


def test_a_leaf_subclass_with_its_own_forward_is_refused_naming_it():
    # modules from torch.nn's namespace are fx leaves: one with its own forward must not
    # be matched by the parent's adapter
    class FakeQuantLinear(nn.Linear):
        def forward(self, x: Tensor) -> Tensor:
            return F.linear(x, torch.round(self.weight * 4) / 4, self.bias)

    FakeQuantLinear.__module__ = "torch.nn.modules.fake"
    torch.manual_seed(0)
    m = nn.Sequential(FakeQuantLinear(6, 3))
    _refused(m, SHAPE_V, "`FakeQuantLinear` overrides forward", "torch.nn.modules.linear.Linear")


def test_an_adapter_can_declare_a_subclass_it_handles():
    from certcompress.capture import default_registry
    from certcompress.capture.adapters.affine import LinearAdapter

    class Renamed(nn.Linear):
        def forward(self, x: Tensor) -> Tensor:  # computes exactly nn.Linear
            return F.linear(x, self.weight, self.bias)

    class Declaring(LinearAdapter):
        subclasses = (Renamed,)

    reg = default_registry().copy()
    assert reg.for_module(Renamed(2, 2)) is None
    reg.register_module(nn.Linear, Declaring(), replace=True, source="test")
    assert reg.for_module(Renamed(2, 2)) is not None


# ---------------------------------------------------------------- in-place ops
class _InPlace(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 3)
        self.kind = kind

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x)
        if self.kind == "sub_":
            h.sub_(0.5)
        elif self.kind == "div_":
            h.div_(3.0)
        elif self.kind == "mul_relu_":
            h.mul_(2.0).relu_()
        elif self.kind == "add_tensor":
            h.add_(x.sum(1, keepdim=True))
        elif self.kind == "clamp_":
            h.clamp_(min=0.0)
        elif self.kind == "stale_relu_":
            y = h.relu_()
            return self.fc2(y) + self.fc2(h.view(1, 8))
        elif self.kind == "relu_used":
            h = h.relu_()
        elif self.kind == "mul_used":
            h = F.relu(h.mul_(2.0))
        elif self.kind == "functional_inplace":
            h = F.relu(h, inplace=True)
        elif self.kind == "iadd":
            h += 1.0
            h = F.relu(h)
        return self.fc2(h)


@pytest.mark.parametrize("kind,op", [("sub_", "sub_"), ("div_", "div_"),
                                     ("mul_relu_", "mul_"), ("add_tensor", "add_"),
                                     ("clamp_", "clamp_"), ("stale_relu_", "relu_")])
def test_inplace_writes_the_graph_would_lose_are_refused(kind: str, op: str):
    err = _refused(_InPlace(kind), SHAPE_V, f"in-place `{op}` at node", "reads afterwards")
    assert any(o.kind is RefusalKind.MODEL for o in err.offenders)


@pytest.mark.parametrize("kind", ["relu_used", "mul_used", "functional_inplace", "iadd"])
def test_inplace_ops_whose_result_the_graph_uses_are_certified_soundly(kind: str):
    _certified_soundly(_InPlace(kind), SHAPE_V)


def test_inplace_relu_modules_as_in_resnets_are_certified_soundly():
    torch.manual_seed(0)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1)
            self.bn = nn.BatchNorm2d(2)
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x: Tensor) -> Tensor:
            identity = x
            out = self.relu(self.bn(self.conv1(x)))
            out = self.conv2(out)
            out += identity
            return self.relu(out)

    net = nn.Sequential(nn.Conv2d(2, 2, 1), nn.ReLU(inplace=True), Block(), nn.Flatten(),
                        nn.Linear(2 * 6 * 6, 3))
    with torch.no_grad():
        net[2].bn.running_mean.uniform_(-0.2, 0.2)
        net[2].bn.running_var.uniform_(0.5, 1.5)
    _certified_soundly(net, SHAPE_I)


def test_inplace_relu_on_the_input_of_a_residual_is_refused():
    class Bad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.fc = nn.Linear(6, 6)
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x: Tensor) -> Tensor:
            h = self.fc(x)
            return self.relu(h) + h  # h is read after the in-place ReLU wrote into it

    _refused(Bad(), SHAPE_V, "in-place ReLU(inplace=True) `relu`", "reads afterwards")


def test_inplace_write_to_a_buffer_is_refused():
    class Acc(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 2)
            self.register_buffer("total", torch.zeros(2))

        def forward(self, x: Tensor) -> Tensor:
            self.total.add_(1.0)
            return self.fc(x) + self.total

    # fx runs the write on the real buffer while tracing (it is no proxy); the check sees
    # the buffer change and the output drift
    _refused(Acc(), SHAPE_V, "state changed by forward: buffer `total`",
             "traced graph differs from the module's output")


# ------------------------------------------------------------------------ state
class _Counter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 2)
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return self.fc(x)


class _BufferSwap(nn.Module):
    """Reassigns a buffer in forward (no in-place op for the static check to see)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 2)
        self.register_buffer("running", torch.zeros(2))

    def forward(self, x: Tensor) -> Tensor:
        self.running = self.running * 0.5 + 1.0
        return self.fc(x)


_HIDDEN = [0]


class _GlobalState(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        _HIDDEN[0] += 1
        return self.fc(x) * float(_HIDDEN[0])


def test_state_changed_by_forward_is_refused_naming_it():
    _refused(_Counter(), SHAPE_V, "state changed by forward: attribute `calls`")
    _refused(_BufferSwap(), SHAPE_V, "state changed by forward: buffer `running`")
    _refused(_GlobalState(), SHAPE_V, "called twice on the same input",
             "traced graph differs from the module's output")


def test_batchnorm_running_stats_in_forward_are_refused():
    class BNUpdate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 4)
            self.bn = nn.BatchNorm1d(4).eval()

        def forward(self, x: Tensor) -> Tensor:
            self.bn.running_mean = self.bn.running_mean * 0.9 + 0.1
            return self.bn(self.fc(x))

    _refused(BNUpdate(), SHAPE_V, "buffer `bn.running_mean`")


# --------------------------------------------------------------------- pooling
@pytest.mark.parametrize("div", [-1, -3, 0])
def test_avg_pool_divisor_override_below_one_is_refused(div: int):
    class Fn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)

        def forward(self, x: Tensor) -> Tensor:
            return F.avg_pool2d(self.conv(x), 2, divisor_override=div).flatten(1)

    _refused(Fn(), SHAPE_I, "divisor_override")
    mod = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.AvgPool2d(2, divisor_override=div),
                        nn.Flatten())
    _refused(mod, SHAPE_I, "divisor_override")


def test_avg_pool_with_a_valid_divisor_override_is_certified_soundly():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.ReLU(),
                        nn.AvgPool2d(2, divisor_override=3), nn.Flatten(), nn.Linear(18, 2))
    _certified_soundly(net, SHAPE_I)


# ------------------------------------------------------------------ check_trace
def test_check_trace_report_on_a_clean_model():
    rep = cc.check_trace(_CNN().eval(), SHAPE_I)
    assert isinstance(rep, cc.TraceCheckReport)
    assert rep.passed and rep.reasons == ()
    assert rep.probes == 1 + 32 + 4  # a small model gets every probe
    assert rep.max_rel_error <= rep.tolerance and rep.seconds > 0
    assert "passed" in rep.summary() and "37 probe(s)" in rep.summary()
    with pytest.raises(AttributeError):
        rep.passed = False  # type: ignore[misc]
    dom = cc.InputDomain.box(0.0, 2.0, shape=SHAPE_I)
    assert cc.check_trace(_CNN().eval(), domain=dom, probes=3).probes == 3


def test_check_trace_reports_instead_of_raising():
    rep = cc.check_trace(_Counter().eval(), SHAPE_V)
    assert not rep.passed
    assert any("attribute `calls`" in r for r in rep.reasons)
    assert "FAILED" in rep.summary()
    with pytest.raises(cc.UnsupportedModelError):  # outside the class: no graph to check
        cc.check_trace(nn.Sequential(nn.Linear(6, 2), nn.Tanh()).eval(), SHAPE_V)


def test_probe_budget_scales_with_the_model_cost():
    assert probe_count(10) == 37
    assert probe_count(PROBE_MACS) == 1 and probe_count(10 * PROBE_MACS) == 1
    g = cc.trace(_MLP().eval(), SHAPE_V)
    assert graph_macs(g) == 6 * 8 + 8 * 3


def test_model_is_not_modified_by_the_check():
    m = _MLP().eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    dtype = next(m.parameters()).dtype
    cc.trace(m, SHAPE_V)
    assert next(m.parameters()).dtype == dtype
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
