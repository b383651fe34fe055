"""Round trips on small models: export with the certificate, verify with onnxruntime,
the file's structure (opset, dynamic batch, one self-contained file, metadata)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from _onnx_helpers import MLP_SHAPE, certify, inputs, mlp, pruned, quantized

import certcompress as cc
from certcompress.demo.digits import DigitsCNN
from certcompress.export import Tolerance, VerificationFailed, export_onnx, verify_onnx
from certcompress.export.metadata import (
    KEY_CERTIFICATE,
    KEY_EXPORT,
    KEY_GRAPH_SHA256,
    graph_digest,
    merge_props,
    props_of,
)

CNN_SHAPE = (1, 1, 8, 8)


def _cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    m = DigitsCNN()
    with torch.no_grad():  # non-trivial BatchNorm statistics (eval mode uses them)
        for bn in (m.bn1, m.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
    return m.eval()


def test_mlp_round_trip(tmp_path: Path) -> None:
    model = mlp()
    comp = pruned(model)
    x = inputs(MLP_SHAPE)
    cert = certify(model, comp, MLP_SHAPE, x)
    path = tmp_path / "mlp.onnx"
    report = export_onnx(comp, path, certificate=cert, reference_inputs=x, original=model,
                         search_steps=3)
    assert report.passed and path.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp.onnx"]  # no side file
    status = {c.name: c.status for c in report.checks}
    assert status == {"checker": "passed", "metadata": "passed", "digest": "passed",
                      "signature": "skipped", "binding": "passed",
                      "quantized-weights": "skipped", "runtime": "passed",
                      "equivalence": "passed", "bound": "passed"}
    assert report.equivalence_max is not None and report.numerical_tolerance is not None
    assert report.equivalence_max <= report.numerical_tolerance
    assert report.deviation_max is not None and report.deviation_max <= cert.bound
    # the file: opset 18, no external data, the certificate byte-identical in metadata
    m = onnx.load(str(path))
    assert [(o.domain, o.version) for o in m.opset_import if o.domain == ""] == [("", 18)]
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in m.graph.initializer)
    props = props_of(m)
    assert cc.Certificate.from_json(props[KEY_CERTIFICATE]) == cert
    assert props[KEY_GRAPH_SHA256] == graph_digest(m)
    assert json.loads(props[KEY_EXPORT])["exported_digest"] == cc.parameter_digest(comp)
    # onnxruntime reads the certificate too, and the batch dimension is dynamic
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert KEY_CERTIFICATE in sess.get_modelmeta().custom_metadata_map
    assert isinstance(sess.get_inputs()[0].shape[0], str)
    for n in (1, 5):
        xb = x[:n].numpy()
        (y,) = sess.run(None, {sess.get_inputs()[0].name: xb})
        with torch.no_grad():
            ref = comp(x[:n]).numpy()
        assert y.shape == (n, 4)
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)
    # verify again from the file alone, and with each torch model
    again = verify_onnx(path, original=model, inputs=x, search_steps=2)
    assert again.passed and again.search.endswith("file's weights")
    assert verify_onnx(path).passed  # integrity checks only; the rest is skipped
    assert {c.name for c in verify_onnx(path).checks if c.status == "skipped"} == {
        "signature", "binding", "quantized-weights", "equivalence", "bound"}


def test_cnn_pruned_and_quantized_round_trip(tmp_path: Path) -> None:
    model = _cnn()
    comp, grid = quantized(pruned(model, 0.3), 8)
    x = inputs(CNN_SHAPE, n=24)
    cert = certify(model, comp, CNN_SHAPE, x)
    path = tmp_path / "cnn.onnx"
    report = export_onnx(comp, path, certificate=cert, reference_inputs=x, original=model,
                         grids=grid, search_steps=3)
    assert report.passed
    assert {c.name: c.status for c in report.checks}["quantized-weights"] == "passed"
    assert [q["storage"] for q in report.quantized] == ["int8", "int8", "int8"]
    # BatchNorm stays a node: the exporter's folding would rewrite the certified weights
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("BatchNormalization") == 2 and ops.count("DequantizeLinear") == 3
    again = verify_onnx(path, original=model, compressed=comp, inputs=x, search_steps=2)
    assert again.passed and again.search.startswith("2 steps")


def test_opset_is_checked_and_respected(tmp_path: Path) -> None:
    model = mlp()
    comp = pruned(model)
    x = inputs(MLP_SHAPE)
    cert = certify(model, comp, MLP_SHAPE, x, steps=0)
    with pytest.raises(cc.ConfigurationError, match="opset must be an integer in"):
        export_onnx(comp, tmp_path / "a.onnx", certificate=cert, opset=17)
    report = export_onnx(comp, tmp_path / "b.onnx", certificate=cert, opset=21,
                         search_steps=0)
    assert report.opset == 21
    assert [o.version for o in onnx.load(str(tmp_path / "b.onnx")).opset_import
            if o.domain == ""] == [21]
    assert not (tmp_path / "a.onnx").exists()


def test_failed_export_leaves_no_file(tmp_path: Path) -> None:
    model = mlp()
    comp = pruned(model)
    other = pruned(model, 0.6)
    x = inputs(MLP_SHAPE)
    cert = certify(model, comp, MLP_SHAPE, x, steps=0)
    # the certificate is about another model: refused before anything is written
    with pytest.raises(cc.VerificationError, match="check 'binding' failed"):
        export_onnx(other, tmp_path / "m.onnx", certificate=cert)
    # a check that fails after the file was written (no float32 error allowed at all)
    with pytest.raises(VerificationFailed, match=r"check 'equivalence' failed: .* exceeds "
                                                 r"tolerance 0 ") as info:
        export_onnx(comp, tmp_path / "m.onnx", certificate=cert, reference_inputs=x,
                    tolerance=Tolerance(rtol=0.0, atol=0.0), search_steps=0)
    assert info.value.report.equivalence_max is not None
    assert info.value.report.equivalence_max > 0
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary one


def test_metadata_merge_keeps_other_keys(tmp_path: Path) -> None:
    model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    onnx.helper.set_model_props(model, {"author": "me", "certcompress.format": "old"})
    model.metadata_props.add(key="author", value="duplicate")
    merge_props(model, {"certcompress.format": "new", "extra": "1"})
    keys = [p.key for p in model.metadata_props]
    assert sorted(keys) == ["author", "certcompress.format", "extra"]
    assert props_of(model) == {"author": "me", "certcompress.format": "new", "extra": "1"}
