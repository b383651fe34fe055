"""Certified activation quantization (docs/quantization.md, "Activation quantization"):
the certificate covers weight and activation rounding and the clipping of calibrated
ranges; measured in torch (float64 and float32) and in onnxruntime on the exported QDQ
file, the deviation never exceeds it."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import certcompress as cc
from certcompress.bounds.pathmetric import graph_path_metric
from certcompress.capture.fakequant import ActivationQuantizer
from certcompress.compress.quantization.activations import quantizers_of
from certcompress.errors import ConfigurationError

DOM = cc.InputDomain.box(0.0, 1.0, shape=(1, 3))


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                         nn.Linear(8, 2)).eval()


def _points(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    corners = torch.cartesian_prod(*[torch.tensor([0.0, 1.0])] * 3)
    return torch.cat([corners, torch.rand(n, 3, generator=g)])


def _deviation(model: nn.Module, qmodel: nn.Module, x: torch.Tensor,
               dtype: torch.dtype) -> float:
    with torch.no_grad():
        a = model.to(dtype)(x.to(dtype)).double()
        b = qmodel.to(dtype)(x.to(dtype)).double()
    model.float()
    qmodel.float()
    return float((a - b).abs().sum(1).max())


def _quantize(seed: int, bits: int, calibrated: bool) -> tuple[nn.Module, nn.Module, object]:
    model = _mlp(seed)
    cal = torch.rand(16, 3, generator=torch.Generator().manual_seed(seed)) * 0.4 \
        if calibrated else None
    qmodel, cert = cc.quantize(model, cc.QuantConfig.uniform(model, 8), domain=DOM,
                               activations=bits, calibration=cal, search_steps=15,
                               search_restarts=2)
    return model, qmodel, cert


@settings(max_examples=4, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), bits=st.integers(4, 8), calibrated=st.booleans())
def test_bound_covers_torch_deviation(seed: int, bits: int, calibrated: bool) -> None:
    model, qmodel, cert = _quantize(seed, bits, calibrated)
    x = _points(1500, seed)
    for name, tier in cert.by_method.items():
        # float64: the quantizers' exact rounding; float32: torch's own fake-quant kernels
        assert _deviation(model, qmodel, x, torch.float64) <= tier.bound, name
        assert _deviation(model, qmodel, x, torch.float32) <= tier.bound * (1 + 1e-6) + 1e-6
    assert cert.measurements.adversarial_max <= cert.bound


def test_calibrated_ranges_clip_and_stay_certified() -> None:
    model, qmodel, cert = _quantize(3, 6, calibrated=True)
    clipped = []
    for m in quantizers_of(qmodel).values():
        m.register_forward_pre_hook(
            lambda mod, args: clipped.append(bool((args[0] > mod.op.upper).any())))
    x = _points(2000, 1)
    dev = _deviation(model, qmodel, x, torch.float64)
    assert any(clipped), "calibration on [0, 0.4]^3 must leave values past the range"
    assert dev <= cert.bound
    assert 0.0 < cert.bound < float("inf")


def test_onnxruntime_runs_the_certified_arithmetic() -> None:
    from certcompress.compress.quantization import quantization_grid
    from certcompress.compress.quantization.activations import quantized_pair
    from certcompress.export.onnx_export import to_onnx
    from certcompress.export.qdq import apply_grids, as_grids

    model = _mlp(7)
    cfg = cc.QuantConfig.uniform(model, 8)
    grid = quantization_grid(model, cfg)
    cal = torch.rand(16, 3, generator=torch.Generator().manual_seed(0)) * 0.5
    orig, comp, _ = quantized_pair(model, grid.apply(model), 8, cal, None)
    cert = cc.certify(orig, comp, domain=DOM, search_steps=0)
    proto = to_onnx(comp, (1, 3))
    apply_grids(proto, as_grids(grid), {k: v.detach() for k, v in comp.state_dict().items()},
                18)
    kinds = [n.op_type for n in proto.graph.node]
    assert kinds.count("QuantizeLinear") == len(quantizers_of(comp))
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = _points(4000, 2)
    y = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0].astype(np.float64)
    with torch.no_grad():
        ref = model.double()(x.double()).numpy()
    dev = float(np.abs(ref - y).sum(1).max())
    assert 0.0 < dev <= cert.bound


def test_passes_that_ignore_quantizers_refuse() -> None:
    q = ActivationQuantizer(0.1, 0, 0, 255)
    with pytest.raises(TypeError, match="activation quantizer"):
        q.op.magnitude([torch.ones(2)], None, False)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), q, nn.Linear(4, 2)).eval()
    off = nn.Sequential(net[0], net[1], ActivationQuantizer(0.1, 0, 0, 255, enabled=False),
                        net[3]).eval()
    g, g2 = cc.trace(off, (1, 3)), cc.trace(net, (1, 3))
    with pytest.raises(ConfigurationError, match="radius"):
        graph_path_metric(g, g2)
    pm = graph_path_metric(g, g2, 1.0)
    assert pm.value > 0 and not pm.exact


MODEL_PY = """
import torch.nn as nn

def make():
    return nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                         nn.Linear(8, 2))
"""


def test_quantize_command_activations(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    import argparse

    from certcompress.cli.quantize import register

    spec = tmp_path / "model.py"
    spec.write_text(MODEL_PY)
    torch.save(_mlp(5).state_dict(), tmp_path / "w.pt")
    np.save(tmp_path / "x.npy", (torch.rand(20, 3) * 0.5).numpy())
    parser = argparse.ArgumentParser(prog="certcompress")
    register(parser.add_subparsers())
    base = ["quantize", f"{spec}:make", "--weights", str(tmp_path / "w.pt"), "--input-shape",
            "1", "3", "--radius", "1", "--search-steps", "3"]
    args = parser.parse_args([*base, "--bits", "8", "--activations", "6", "--reference-data",
                              str(tmp_path / "x.npy"), "--out", str(tmp_path / "out")])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "activation quantizers (6 bits)" in text and "certified bound:" in text
    cert = cc.Certificate.load(tmp_path / "out" / "certificate.json")
    assert any(n.startswith("activation grids: act_quant_0: scale") for n in cert.notes)
    bad = parser.parse_args([*base, "--avg-bits", "4", "--activations", "6", "--out",
                             str(tmp_path / "o2")])
    with pytest.raises(ConfigurationError, match="--activations needs --bits"):
        bad.func(bad)
