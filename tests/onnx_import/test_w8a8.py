"""W8A8 export: int8 weights + uint8 activations in QDQ form that onnxruntime runs with
int8 kernels; the weights in the file are the certified ones bit for bit, and the
certificate covers weight and activation rounding: onnxruntime's output on the file never
deviates from the float model by more than the bound."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import _soundness as S
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import certcompress as cc
from certcompress.compress.quantization.activations import quantizers_of
from certcompress.export.qdq import dequantized_weights
from certcompress.export.w8a8 import COVERS, fold_batchnorm


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                        nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(96, 5))
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.2, 0.2)
        net[1].running_var.uniform_(0.5, 1.5)
    return net.eval()


def test_fold_batchnorm_keeps_the_function() -> None:
    net = _net()
    folded = fold_batchnorm(net)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand(8, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(folded(x), net(x), atol=1e-5)


def test_w8a8_export_runs_int8_and_certificate_is_honest(tmp_path: Path) -> None:
    net = _net()
    x_cal = torch.rand(64, 1, 8, 8)
    out = tmp_path / "w8a8.onnx"
    res = cc.export_w8a8(net, out, calibration=x_cal, search_steps=2, search_restarts=1)
    proto = onnx.load(str(out))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["certcompress.w8a8.covers"] == COVERS
    assert "uint8 per-tensor activations" in COVERS
    cert = res.certificate
    assert cert is not None and any("W8A8 export: covers" in n for n in cert.notes)
    assert cc.Certificate.from_json(meta["certcompress.w8a8.certificate"]).bound == cert.bound
    # activations are quantized (QuantizeLinear on non-constant tensors, uint8)
    inits = {t.name for t in proto.graph.initializer}
    act_q = [n for n in proto.graph.node if n.op_type == "QuantizeLinear"
             and n.input[0] not in inits]
    assert act_q, "no activation QuantizeLinear in the file"
    zp = {t.name: t for t in proto.graph.initializer}
    assert all(zp[n.input[2]].data_type == onnx.TensorProto.UINT8 for n in act_q)
    # the dequantized weights are the certified weights, bit for bit
    deq = list(dequantized_weights(proto).values())
    state = res.quantized.state_dict()
    for name in ("0.weight", "3.weight", "7.weight"):
        w = state[name].numpy()
        assert any(v.shape == w.shape and np.array_equal(v, w) for v in deq), name
    # the fake-quant model's deviation is within the bound, on the domain
    x = torch.rand(256, 1, 8, 8) * (x_cal.amax(0) - x_cal.amin(0)) + x_cal.amin(0)
    with torch.no_grad():
        dev = (res.folded(x) - res.quantized(x)).abs().sum(1).max().item()
    assert dev <= cert.bound
    # onnxruntime runs the file with int8 kernels (QLinearConv after graph optimization)
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    sess = ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"])
    y = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    ops = {n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node}
    assert "QLinearConv" in ops, ops
    with torch.no_grad():
        ref = res.folded(x).double().numpy()
    # onnxruntime's int8 arithmetic: within the bound (float32 rounding of the float final
    # layer, not covered, is below 1e-5 of the outputs here)
    dev_ort = float(np.abs(y.astype(np.float64) - ref).sum(1).max())
    assert 0.0 < dev_ort <= cert.bound + 1e-5 * float(np.abs(ref).sum(1).max())
    # the file's own arithmetic, read back by the importer (activation QDQ pairs as
    # quantizers with the stored grids), certified again against the float model
    from certcompress.compress.quantization.activations import float_twin, quantizers_of

    imported = cc.load_onnx(out)
    assert len(quantizers_of(imported)) == len(act_q)
    twin, aligned = float_twin(imported, net, x[:8])
    again = cc.certify(twin, aligned, domain=cert.input_domain, search_steps=0)
    assert dev_ort <= again.bound + 1e-5 * float(np.abs(ref).sum(1).max())


def test_w8a8_refuses_bad_calibration(tmp_path: Path) -> None:
    with pytest.raises(cc.ConfigurationError, match="calibration"):
        cc.export_w8a8(_net(), tmp_path / "x.onnx", calibration=torch.rand(3))
    assert not (tmp_path / "x.onnx").exists()


def _ort_quantize_static(model: nn.Module, path: Path, x_cal: torch.Tensor) -> Path:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from certcompress.export.onnx_export import to_onnx

    float_path = path.with_name("float.onnx")
    onnx.save_model(to_onnx(fold_batchnorm(model), (1,) + tuple(x_cal.shape[1:])),
                    str(float_path))
    name = ort.InferenceSession(str(float_path)).get_inputs()[0].name

    class Reader:
        def __init__(self) -> None:
            self.it = iter([x_cal[i:i + 8].numpy() for i in range(0, len(x_cal), 8)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.it, None)
            return None if x is None else {name: x}

    quantize_static(str(float_path), str(path), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    return path


def test_onnxruntime_quantize_static_model_is_certified_against_its_float_model(
        tmp_path: Path) -> None:
    from certcompress.compress.quantization.activations import float_twin, quantizers_of

    net = _net()
    x_cal = torch.rand(32, 1, 8, 8)
    qpath = _ort_quantize_static(net, tmp_path / "ort_qdq.onnx", x_cal)
    imported = cc.load_onnx(qpath)  # activation QDQ pairs become quantizers
    qs = quantizers_of(imported)
    assert qs and all(q.enabled for q in qs.values())
    twin, aligned = float_twin(imported, net, x_cal[:4])
    dom = cc.InputDomain.box(0.0, 1.0, shape=(1, 1, 8, 8))
    cert = cc.certify(twin, aligned, domain=dom, search_steps=5, search_restarts=1)
    x = torch.rand(512, 1, 8, 8)
    sess = ort.InferenceSession(str(qpath), providers=["CPUExecutionProvider"])
    y = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0].astype(np.float64)
    with torch.no_grad():
        ref = net.double()(x.double()).numpy()
    dev = float(np.abs(ref - y).sum(1).max())
    assert 0.0 < dev <= cert.bound + 1e-5 * float(np.abs(ref).sum(1).max())
    # a float model of another architecture is refused, not certified
    other = nn.Sequential(nn.Flatten(), nn.Linear(64, 5)).eval()
    with pytest.raises(cc.ConfigurationError, match="cannot align"):
        float_twin(imported, other, x_cal[:4])


def test_verify_onnx_checks_a_w8a8_file_against_its_own_int8_arithmetic(
        tmp_path: Path) -> None:
    net = _net()
    x_cal = torch.rand(64, 1, 8, 8)
    dom = cc.InputDomain.box(0.0, 1.0, shape=(1, 1, 8, 8))
    out = tmp_path / "w8a8.onnx"
    res = cc.export_w8a8(net, out, calibration=x_cal, domain=dom, search_steps=2,
                         search_restarts=1)
    assert res.certificate is not None
    report = cc.verify_onnx(out, original=net, search_steps=5, search_restarts=2)
    assert report.passed
    bound = next(c for c in report.checks if c.name == "bound")
    assert bound.status == "passed" and bound.measured is not None
    assert 0.0 < bound.measured <= res.certificate.bound + report.numerical_tolerance
    assert report.inputs >= 2 * 256
    # a certificate whose bound was lowered below what the file's arithmetic does fails
    proto = onnx.load(str(out))
    forged = replace(res.certificate, bound=bound.measured / 4)
    for p in proto.metadata_props:
        if p.key == "certcompress.w8a8.certificate":
            p.value = forged.to_json(indent=None)
    bad = tmp_path / "forged.onnx"
    onnx.save_model(proto, str(bad))
    with pytest.raises(cc.VerificationError, match="check 'bound' failed"):
        cc.verify_onnx(bad, original=net, search_steps=0)
    # another original model is refused by the binding check
    other = _net()
    with torch.no_grad():
        other[0].weight.mul_(1.01)
    with pytest.raises(cc.VerificationError, match="check 'binding' failed"):
        cc.verify_onnx(out, original=other, search_steps=0)


def _digits_cnn() -> nn.Module:
    from certcompress.demo.digits import DigitsCNN, load_digits, train_classifier

    d = load_digits()
    return train_classifier(DigitsCNN(channels=4), d.x_train[:400], d.y_train[:400], epochs=3,
                            progress=False)


def test_digits_cnn_w8a8_with_bounds_tier_ranges_is_sound_in_torch_and_onnxruntime(
        tmp_path: Path) -> None:
    """Ranges from the bounds tier over [0, 1]^64 (no calibration): the certificate is
    attacked one-sidedly (tests/_soundness.py, float64 PGD on the fake-quant model) and
    measured on onnxruntime's int8 arithmetic on the exported file."""
    cnn = _digits_cnn()
    dom = cc.InputDomain.box(0.0, 1.0, shape=(1, 1, 8, 8))
    out = tmp_path / "digits_w8a8.onnx"
    res = cc.export_w8a8(cnn, out, domain=dom, search_steps=10, search_restarts=2)
    cert = res.certificate
    assert cert is not None and cert.input_domain is not None
    # the max-pooling quantizer shares its input's grid and is exact (no rounding term)
    qs = quantizers_of(res.quantized)
    assert any(q.op.delta == 0.0 for q in qs.values())
    found = S.attack_models(res.folded, res.quantized, dom, dom.shape, seed=0, steps=30)
    S.assert_sound(found, cert.bound, what="digits CNN W8A8 (torch, float64)")
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    lo, hi = S.box(dom, dom.shape)
    x = torch.cat([S.points(lo, hi, torch.Generator().manual_seed(1), 512, 256),
                   found.x.reshape(-1, 1, 8, 8).double()])
    y = sess.run(None, {sess.get_inputs()[0].name: x.float().numpy()})[0].astype(np.float64)
    with torch.no_grad():
        ref = res.folded.double()(x).numpy()
    dev_ort = float(np.abs(y - ref).sum(1).max())
    assert dev_ort <= cert.bound + 1e-5 * float(np.abs(ref).sum(1).max())
    S.record("digits CNN W8A8 (bounds-tier ranges) vs onnxruntime", cert.bound, dev_ort)
    report = cc.verify_onnx(out, original=cnn, search_steps=5, search_restarts=2)
    assert report.passed


def test_onnxruntime_qdq_of_a_residual_cnn_is_certified_against_its_float_model(
        tmp_path: Path) -> None:
    """onnxruntime drops the ReLU after a residual addition whose quantizer range starts at
    0; float_twin restores it (where the float model has one after the same addition)."""
    from certcompress.compress.quantization.activations import float_twin

    cnn = _digits_cnn()
    x_cal = torch.rand(32, 1, 8, 8)
    qpath = _ort_quantize_static(cnn, tmp_path / "ort_qdq.onnx", x_cal)
    twin, aligned = float_twin(cc.load_onnx(qpath), cnn, x_cal[:8])
    dom = cc.InputDomain.box(0.0, 1.0, shape=(1, 1, 8, 8))
    cert = cc.certify(twin, aligned, domain=dom, search_steps=5, search_restarts=1)
    sess = ort.InferenceSession(str(qpath), providers=["CPUExecutionProvider"])
    lo, hi = S.box(dom, dom.shape)
    x = S.points(lo, hi, torch.Generator().manual_seed(3), 512, 256)
    y = sess.run(None, {sess.get_inputs()[0].name: x.float().numpy()})[0].astype(np.float64)
    with torch.no_grad():
        ref = fold_batchnorm(cnn).double()(x).numpy()
    dev = float(np.abs(ref - y).sum(1).max())
    assert 0.0 < dev <= cert.bound + 1e-5 * float(np.abs(ref).sum(1).max())
