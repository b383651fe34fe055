"""trace_pair: the compressed model reuses the original's fx capture only when nothing
could make the two traces differ, every per-model check still runs on it, and the
digests it computes alongside are the parameter digests."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

import certcompress as cc
from certcompress.capture import check as check_module
from certcompress.capture.pair import structure_difference, trace_pair
from certcompress.digest import parameter_digest
from certcompress.errors import GraphMismatchError, UnsupportedModelError
from certcompress.ir.graph import ForwardInterpreter

SHAPE = (1, 2, 6, 6)


class Block(nn.Module):
    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)) * self.scale + x)


class Net(nn.Module):
    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1)
        self.block = Block(scale)
        self.head = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.flatten(self.block(torch.relu(self.stem(x))), 1))


def _pair(scale: float = 1.0) -> tuple[Net, Net]:
    torch.manual_seed(3)
    net = Net().eval()
    with torch.no_grad():
        net.block.bn.running_mean.uniform_(-0.5, 0.5)
        net.block.bn.running_var.uniform_(0.5, 2.0)
    comp = copy.deepcopy(net)
    comp.block.scale = scale
    with torch.no_grad():
        for p in comp.parameters():
            p.mul_((p.abs() > 0.1).to(p.dtype))
    return net, comp


def _same_graph(a: cc.Graph, b: cc.Graph) -> None:
    assert [(n.name, n.kind, n.inputs, n.shape) for n in a.nodes] == \
        [(n.name, n.kind, n.inputs, n.shape) for n in b.nodes]
    assert a.outputs == b.outputs and list(a.params) == list(b.params)
    for k in a.params:
        assert torch.equal(a.params[k].weight, b.params[k].weight), k
        pa, pb = a.params[k].bias, b.params[k].bias
        assert (pa is None and pb is None) or torch.equal(pa, pb), k


def test_a_pruned_copy_reuses_the_capture_and_gets_its_own_parameters() -> None:
    net, comp = _pair()
    pair = trace_pair(net, comp, SHAPE)
    assert pair.reused and pair.why == ""
    _same_graph(pair.other, cc.trace(comp, SHAPE))  # what a full trace gives
    _same_graph(pair.graph, cc.trace(net, SHAPE))
    x = torch.rand(5, *SHAPE[1:], dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        want = comp.double()(x)
    got = ForwardInterpreter(pair.other).run(x)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)
    assert pair.digests() == (parameter_digest(net), parameter_digest(comp.float()))


def test_the_compressed_models_trace_check_still_runs_its_probes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    net, comp = _pair()
    checked: list[nn.Module] = []
    real = check_module.numeric_check

    def counting(model: nn.Module, *args: object, **kw: object) -> object:
        checked.append(model)
        return real(model, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr("certcompress.capture.tracer.numeric_check", counting)
    pair = trace_pair(net, comp, SHAPE)
    assert pair.reused and checked == [net, comp]


@pytest.mark.parametrize(("change", "why"), [
    ("attribute", "attribute 'scale' differs"),
    ("type", "is a ReLU vs a LeakyReLU"),
    ("forward", "instance-level forward"),
    ("tensor", "attribute 'offset' differs or cannot be compared"),
    ("buffer", "buffers 'running_mean'"),
    ("tree", "module trees differ"),
])
def test_any_difference_falls_back_to_a_full_trace(change: str, why: str) -> None:
    net, comp = _pair()
    if change == "attribute":
        comp.block.scale = 0.5
    elif change == "type":
        comp.block.relu = nn.LeakyReLU(0.0).eval()  # type: ignore[assignment]
    elif change == "forward":
        comp.head.forward = comp.head.forward  # type: ignore[method-assign]
    elif change == "tensor":
        net.block.offset = torch.zeros(1)  # type: ignore[assignment]
        comp.block.offset = torch.zeros(1)  # type: ignore[assignment]
    elif change == "buffer":
        comp.block.bn.running_mean = torch.zeros(4, dtype=torch.float64)
    else:
        comp.extra = nn.Identity().eval()
    found = structure_difference(net, comp)
    assert found is not None and why in found, found
    if change in ("attribute", "type", "tree"):
        pair = trace_pair(net, comp, SHAPE)
        assert not pair.reused and why in pair.why
        _same_graph(pair.other, cc.trace(comp, SHAPE))


def test_a_changed_python_attribute_is_traced_as_the_compressed_model_computes() -> None:
    """A reused graph would be the original's function (scale 1): the bound would
    describe the wrong model. The attribute check sends the copy to a full trace, whose
    graph has its own constant (and the path-metric then refuses the pair: a constant is
    architecture, not a parameter)."""
    net, comp = _pair(scale=3.0)
    pair = trace_pair(net, comp, SHAPE)
    assert not pair.reused
    consts = [str(n.op) for n in pair.other.nodes if "LinearCombination" in str(n.op)]
    assert any("3.0" in c for c in consts), consts
    with pytest.raises(GraphMismatchError, match=r"LinearCombination\(\(3\.0"):
        cc.certify(net, comp, SHAPE, 1.0, search_steps=0)


def test_hooks_on_the_compressed_model_are_still_refused() -> None:
    net, comp = _pair()
    assert structure_difference(net, comp) is None
    comp.block.conv.register_forward_hook(lambda m, i, o: o * 2)
    with pytest.raises(UnsupportedModelError, match="hook"):
        trace_pair(net, comp, SHAPE)


def test_state_changed_by_the_compressed_models_forward_is_still_refused() -> None:
    class Counting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 2)
            self.register_buffer("calls", torch.zeros(1))
            self.count = False

        def forward(self, x: Tensor) -> Tensor:
            y = self.lin(x)
            if self.count:
                self.calls.add_(1)
            return y

    torch.manual_seed(0)
    net = Counting().eval()
    comp = copy.deepcopy(net)
    comp.count = True  # differs: a full trace of the copy, whose check refuses it
    with pytest.raises(UnsupportedModelError):
        trace_pair(net, comp, (1, 4))
