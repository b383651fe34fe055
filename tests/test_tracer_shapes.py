"""Shape propagation on meta tensors (the fast path of the tracer) gives exactly the
graph the fake-tensor path gives (models meta tensors cannot run fall back to the
fake-tensor path, which also names unsupported nodes: tests/test_models.py)."""

from __future__ import annotations

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
