"""``certcompress quantize ... --activations 8 --export FILE.onnx`` through the real
command table (``certcompress.cli.main``): the file holds int8 weights and uint8
activations in QDQ form that onnxruntime runs with int8 kernels, the certificate
embedded is the one written to ``--out``, and the file's own arithmetic stays within it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import certcompress as cc
from certcompress import cli
from certcompress.compress.quantization.activations import fold_batchnorm

MODEL_PY = '''
import torch
from torch import nn

def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(16, 3))
'''


def _model(tmp_path: Path) -> tuple[nn.Module, Path, Path]:
    spec = tmp_path / "model.py"
    spec.write_text(MODEL_PY)
    ns: dict = {}
    exec(MODEL_PY, ns)
    model = ns["make"]()
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.2, 0.2)
        model[1].running_var.uniform_(0.5, 1.5)
    model.eval()
    weights = tmp_path / "w.pt"
    torch.save(model.state_dict(), weights)
    return model, spec, weights


def test_quantize_command_exports_w8a8_onnx(tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    model, spec, weights = _model(tmp_path)
    out, onnx_path = tmp_path / "out", tmp_path / "model_int8.onnx"
    rc = cli.main(["quantize", f"{spec}:make", "--weights", str(weights), "--input-shape",
                   "1", "1", "4", "4", "--domain", "0:1", "--bits", "8", "--activations", "8",
                   "--search-steps", "3", "--export", str(onnx_path), "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert f"wrote {onnx_path}" in text and "activation quantizers (8 bits)" in text
    cert = cc.Certificate.load(out / "certificate.json")
    proto = onnx.load(str(onnx_path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["certcompress.certificate"])["bound"] == cert.bound
    inits = {t.name for t in proto.graph.initializer}
    act_q = [n for n in proto.graph.node if n.op_type == "QuantizeLinear"
             and n.input[0] not in inits]
    assert act_q, "no activation QuantizeLinear in the exported file"
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    assert "QLinearConv" in {n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node}
    # the file's int8 arithmetic against the BatchNorm-folded float model: within the bound
    folded = fold_batchnorm(model)
    x = torch.rand(512, 1, 4, 4)
    y = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0].astype(np.float64)
    with torch.no_grad():
        ref = folded.double()(x.double()).numpy()
    dev = float(np.abs(y - ref).sum(1).max())
    assert 0.0 < dev <= cert.bound + 1e-5 * float(np.abs(ref).sum(1).max())
    assert not cert.vacuous


def test_quantize_command_refuses_export_inside_out(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    _, spec, weights = _model(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    rc = cli.main(["quantize", f"{spec}:make", "--weights", str(weights), "--input-shape",
                   "1", "1", "4", "4", "--domain", "0:1", "--bits", "8",
                   "--export", str(out / "m.onnx"), "--out", str(out)])
    assert rc == 2
    assert "--export" in capsys.readouterr().err
    assert not any(out.iterdir())  # refused before any work


def test_quantize_command_budget_with_activations_exports(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    model, spec, weights = _model(tmp_path)
    dom = cc.InputDomain.box(0.0, 1.0, shape=(1, 1, 4, 4))
    _, c8 = cc.quantize(model, cc.QuantConfig.uniform(fold_batchnorm(model), 8), domain=dom,
                        activations=8, search_steps=0)
    budget = 3.0 * c8.bound
    out, onnx_path = tmp_path / "out", tmp_path / "model_int8.onnx"
    rc = cli.main(["quantize", f"{spec}:make", "--weights", str(weights), "--input-shape",
                   "1", "1", "4", "4", "--domain", "0:1", "--budget", repr(budget),
                   "--candidates", "6", "8", "--activations", "8", "--search-steps", "3",
                   "--export", str(onnx_path), "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "activation widths:" in text and f"wrote {onnx_path}" in text
    cert = cc.Certificate.load(out / "certificate.json")
    assert cert.bound <= budget
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = torch.rand(256, 1, 4, 4)
    y = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0].astype(np.float64)
    with torch.no_grad():
        ref = fold_batchnorm(model).double()(x.double()).numpy()
    dev = float(np.abs(y - ref).sum(1).max())
    assert dev <= cert.bound + 1e-5 * float(np.abs(ref).sum(1).max())
