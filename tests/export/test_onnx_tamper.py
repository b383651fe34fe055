"""Tampering is evident: a changed weight, node or certificate fails verification with a
message that names the check and says by how much."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from _onnx_helpers import MLP_SHAPE, certify, inputs, mlp, pruned
from onnx import numpy_helper

import certcompress as cc
from certcompress.export import VerificationFailed, export_onnx, verify_onnx
from certcompress.export.metadata import (
    KEY_CERTIFICATE,
    graph_digest,
    merge_props,
    props_of,
    seal,
)


@dataclass(frozen=True)
class Exported:
    path: Path
    original: torch.nn.Module
    compressed: torch.nn.Module
    x: torch.Tensor
    cert: cc.Certificate


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    model = mlp(seed=3)
    comp = pruned(model, 0.5)
    x = inputs(MLP_SHAPE, n=32)
    cert = certify(model, comp, MLP_SHAPE, x)
    path = tmp_path_factory.mktemp("tamper") / "mlp.onnx"
    export_onnx(comp, path, certificate=cert, reference_inputs=x, original=model,
                search_steps=2)
    return Exported(path, model, comp, x, cert)


def _copy(e: Exported, tmp_path: Path) -> tuple[Path, onnx.ModelProto]:
    dst = tmp_path / "copy.onnx"
    shutil.copyfile(e.path, dst)
    return dst, onnx.load(str(dst))


def _set_weight(model: onnx.ModelProto, name: str, index: int, delta: float) -> None:
    (t,) = [t for t in model.graph.initializer if t.name == name]
    arr = numpy_helper.to_array(t).copy()
    arr.reshape(-1)[index] += np.float32(delta)
    t.CopyFrom(numpy_helper.from_array(arr, name))


def _refresh_graph_digest(model: onnx.ModelProto) -> None:
    seal(model)  # every digest recomputed, as anyone editing the file can


def test_untouched_copy_passes(exported: Exported, tmp_path: Path) -> None:
    path, _ = _copy(exported, tmp_path)
    assert verify_onnx(path, original=exported.original, compressed=exported.compressed,
                       inputs=exported.x, search_steps=0).passed


def test_one_changed_weight_fails_the_digest(exported: Exported, tmp_path: Path) -> None:
    path, model = _copy(exported, tmp_path)
    _set_weight(model, "2.weight", 5, 1e-3)
    onnx.save_model(model, str(path))
    with pytest.raises(cc.VerificationError, match="check 'digest' failed: the graph or its "
                                                   "initializers changed since export"):
        verify_onnx(path, search_steps=0)


def test_changed_weight_with_a_recomputed_digest_fails_equivalence(
        exported: Exported, tmp_path: Path) -> None:
    # someone who also rewrites the digest is caught by running the model
    path, model = _copy(exported, tmp_path)
    _set_weight(model, "4.weight", 0, 0.5)
    _refresh_graph_digest(model)
    onnx.save_model(model, str(path))
    with pytest.raises(VerificationFailed) as info:
        verify_onnx(path, compressed=exported.compressed, inputs=exported.x, search_steps=0)
    msg = str(info.value)
    assert "check 'digest'" not in msg
    assert "check 'equivalence' failed: max ||ort(x) - f'(x)||_1 = " in msg
    eq = {c.name: c for c in info.value.report.checks}["equivalence"]
    assert eq.measured is not None and eq.limit is not None and eq.measured > eq.limit


def test_changed_node_fails_the_digest(exported: Exported, tmp_path: Path) -> None:
    path, model = _copy(exported, tmp_path)
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    gemm.attribute.append(onnx.helper.make_attribute("alpha", 2.0))
    onnx.save_model(model, str(path))
    with pytest.raises(cc.VerificationError, match="check 'digest' failed: the graph"):
        verify_onnx(path, search_steps=0)


def _edit_certificate(model: onnx.ModelProto, **changes: float) -> None:
    data = json.loads(props_of(model)[KEY_CERTIFICATE])
    data.update(changes)
    merge_props(model, {KEY_CERTIFICATE: json.dumps(data, sort_keys=True)})


def test_edited_bound_fails_the_digest(exported: Exported, tmp_path: Path) -> None:
    path, model = _copy(exported, tmp_path)
    _edit_certificate(model, bound=exported.cert.bound * 10)
    onnx.save_model(model, str(path))
    with pytest.raises(cc.VerificationError, match="check 'digest' failed: the embedded "
                                                   "certificate changed since export"):
        verify_onnx(path, search_steps=0)


def test_lowered_bound_with_a_recomputed_digest_fails_the_bound(
        exported: Exported, tmp_path: Path) -> None:
    path, model = _copy(exported, tmp_path)
    measured = exported.cert.measurements.deviation_max
    assert measured is not None and measured > 0
    _edit_certificate(model, bound=measured / 10)
    seal(model)
    onnx.save_model(model, str(path))
    with pytest.raises(VerificationFailed, match=r"check 'bound' failed: inputs: max "
                                                 r"\|\|f\(x\) - ort\(x\)\|\|_1 = .* EXCEEDS "
                                                 r"by [0-9.e+-]+ the certified bound") as info:
        verify_onnx(path, original=exported.original, inputs=exported.x, search_steps=2)
    bound = {c.name: c for c in info.value.report.checks}["bound"]
    assert bound.measured is not None and bound.limit is not None
    assert bound.measured > bound.limit
    assert [c.name for c in info.value.report.failed] == ["bound"]


def test_digest_ignores_the_storage_form(exported: Exported) -> None:
    model = onnx.load(str(exported.path))
    before = graph_digest(model)
    t = next(t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)
    values = numpy_helper.to_array(t).reshape(-1).tolist()
    t.ClearField("raw_data")
    t.float_data.extend(values)
    assert graph_digest(model) == before
    merge_props(model, {"unrelated": "metadata"})
    assert graph_digest(model) == before
