"""Shape propagation on meta tensors (the fast path of the tracer) gives exactly the
graph the fake-tensor path gives (models meta tensors cannot run fall back to the
fake-tensor path, which also names unsupported nodes: tests/test_models.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torchvision
from torch import nn

import certcompress as cc
from certcompress.capture import tracer
from certcompress.demo.digits import DigitsCNN


def _both(model: nn.Module, shape: tuple[int, ...], monkeypatch: pytest.MonkeyPatch
          ) -> tuple[cc.Graph, cc.Graph]:
    fast = cc.trace(model, shape)
    with monkeypatch.context() as mp:
        mp.setattr(tracer._Converter, "_meta_values", lambda self, example, needed: None)
        slow = cc.trace(model, shape)
    return fast, slow


@pytest.mark.parametrize("name, shape", [
    ("digits", (1, 1, 8, 8)), ("resnet18", (1, 3, 32, 32)),
    ("mobilenet_v2", (1, 3, 32, 32)), ("densenet121", (1, 3, 32, 32)),
])
def test_meta_and_fake_shape_propagation_give_the_same_graph(
        name: str, shape: tuple[int, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = (DigitsCNN() if name == "digits"
             else getattr(torchvision.models, name)(weights=None)).eval()
    fast, slow = _both(model, shape, monkeypatch)
    assert fast.structure() == slow.structure()
    assert [(n.name, n.shape) for n in fast.nodes] == [(n.name, n.shape) for n in slow.nodes]
    assert fast.params.keys() == slow.params.keys()
    for k, p in fast.params.items():
        assert torch.equal(p.weight, slow.params[k].weight)
    x = torch.rand((3,) + shape[1:], dtype=torch.float64)
    assert torch.equal(fast.run(x), slow.run(x))


def test_the_meta_path_is_taken_for_a_supported_model() -> None:
    """The fast path really runs (it is not silently falling back): every needed node
    gets a meta value."""
    model = DigitsCNN().eval()
    reg = cc.capture.plugins.default_registry()
    example = torch.zeros(1, 1, 8, 8)
    conv = tracer._Converter(tracer._capture(model, example, reg)[0], reg)
    needed = conv._needed()
    values = conv._meta_values(example, needed)
    assert values is not None
    assert all(n in values for n in needed if n.op != "output")
    assert all(v.device.type == "meta" for v in values.values() if isinstance(v, torch.Tensor))


class _Elementwise(nn.Module):
    """Element-wise nodes of every kind the meta shortcut answers without running them:
    broadcasting, Python scalars, dtype promotion, ReLU module and function, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.act = nn.ReLU()
        self.register_buffer("h16", torch.ones(3, dtype=torch.float16))
        self.register_buffer("wide", torch.ones(1, 3, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.lin(x)) - 1.5
        y = torch.relu(2 * y + self.h16)   # float32 + float16 -> float32
        y = torch.sub(y, self.wide)          # promoted to float64, broadcast
        return nn.functional.relu(torch.mul(y, 3) + torch.add(y, 1))


def test_the_elementwise_meta_shortcut_matches_running_the_node() -> None:
    """Each shortcut value has exactly the shape and dtype that running the node on meta
    tensors gives, and the traced graph computes what the module computes."""
    model = _Elementwise().eval()
    reg = cc.capture.plugins.default_registry()
    example = torch.zeros(2, 4)
    conv = tracer._Converter(tracer._capture(model, example, reg)[0], reg)
    values = conv._meta_values(example, conv._needed())
    assert values is not None
    interp = torch.fx.Interpreter(conv.gm)
    meta = {k: v.to("meta") for k, v in (*conv.gm.named_parameters(),
                                         *conv.gm.named_buffers())}
    hits = 0
    with torch.no_grad(), torch.nn.utils.stateless._reparametrize_module(conv.gm, meta):
        for node in conv.gm.graph.nodes:
            if node not in values:
                continue
            interp.env[node] = values[node]
            if node.op == "placeholder":
                continue
            short = tracer._meta_elementwise(node, interp, conv.ctx.modules)
            if short is None:
                continue
            hits += 1
            ran = interp.run_node(node)
            assert (tuple(short.shape), short.dtype) == (tuple(ran.shape), ran.dtype), node
    assert hits >= 9
    x = torch.rand(5, 4)
    g = cc.trace(model, (1, 4))
    assert torch.equal(g.run(x.double()).to(torch.float64),
                       model.double()(x.double()).to(torch.float64))


def test_tracing_an_mlp_imports_neither_dynamo_nor_sympy() -> None:
    """Tracing an ONNX-style MLP and building its input box stay on the meta fast path,
    without torch._dynamo or sympy (whose imports cost seconds of every command's
    start-up; benchmarks/bench_cli_startup.py)."""
    code = ("import sys, torch, certcompress as cc\n"
            "m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(5, 8), "
            "torch.nn.ReLU(), torch.nn.Linear(8, 5))\n"
            "g = cc.trace(m.eval(), (1, 1, 1, 5))\n"
            "d = cc.InputDomain.box(torch.zeros(5), torch.ones(5), shape=(1, 1, 1, 5))\n"
            "print('torch._dynamo' in sys.modules, 'sympy' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=300)
    assert out.stdout.strip().splitlines()[-1] == "False False", out.stdout + out.stderr
