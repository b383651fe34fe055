"""Quantized weights in QDQ form: the integer codes and scales in the file are the
certified grid, and what onnxruntime dequantizes equals the certified weights bit for bit
(int4 for widths <= 4, int8 up to 8, int16 for 16)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from _onnx_helpers import certify, inputs, quantized
from onnx import numpy_helper

import certcompress as cc
from certcompress.demo.digits import DigitsCNN
from certcompress.export import WeightGrid, export_onnx, verify_onnx
from certcompress.export.qdq import dequantized_weights

SHAPE = (1, 1, 8, 8)
BITS = {"conv1": 3, "conv2": 8, "fc": 16}
STORAGE = {3: (onnx.TensorProto.INT4, "int4"), 8: (onnx.TensorProto.INT8, "int8"),
           16: (onnx.TensorProto.INT16, "int16")}


def _bits(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy().view(np.uint32)


@pytest.mark.parametrize("opset", [18, 21])
def test_exported_weights_are_the_certified_grid(tmp_path: Path, opset: int) -> None:
    torch.manual_seed(0)
    model = DigitsCNN().eval()
    comp, grid = quantized(model, BITS)
    x = inputs(SHAPE, n=16)
    cert = certify(model, comp, SHAPE, x, steps=2)
    path = tmp_path / "q.onnx"
    report = export_onnx(comp, path, certificate=cert, reference_inputs=x, original=model,
                         grids=grid, opset=opset, search_steps=2)
    assert report.passed
    m = onnx.load(str(path))
    inits = {t.name: t for t in m.graph.initializer}
    dq = {n.output[0]: n for n in m.graph.node if n.op_type == "DequantizeLinear"}
    assert sorted(dq) == sorted(grid.tensors)
    runtime = dequantized_weights(m)  # onnxruntime runs the DequantizeLinear nodes
    params = dict(comp.named_parameters())
    for name, q in grid.tensors.items():
        assert name not in inits  # the float weight is gone from the file
        node = dq[name]
        codes, scale, zero = (inits[i] for i in node.input)
        dtype, storage = STORAGE[q.bits]
        assert codes.data_type == dtype and zero.data_type == dtype
        # int4 and int16 below opset 21 run in onnxruntime's com.microsoft domain
        assert node.domain == ("com.microsoft" if opset < 21 and q.bits != 8 else "")
        assert np.array_equal(numpy_helper.to_array(codes).astype(np.int64),
                              q.codes.numpy().astype(np.int64))
        assert np.array_equal(numpy_helper.to_array(scale).view(np.uint32),
                              _bits(q.scale).reshape(numpy_helper.to_array(scale).shape))
        assert not numpy_helper.to_array(zero).astype(np.int64).any()
        # bit for bit: onnxruntime's dequantized weight == grid values == certified weight
        assert np.array_equal(runtime[name].view(np.uint32), _bits(q.values()))
        assert np.array_equal(runtime[name].view(np.uint32), _bits(params[name]))
        assert storage in {r["storage"] for r in report.quantized if r["name"] == name}
    assert cc.parameter_digest(comp) == cert.compressed_digest
    # int4 packs two codes a byte: the 3-bit layer takes half the bytes of int8 codes
    conv1_codes = inits[dq["conv1.weight"].input[0]]
    assert len(conv1_codes.raw_data) == (grid.tensors["conv1.weight"].codes.numel() + 1) // 2
    assert verify_onnx(path, compressed=comp, inputs=x, search_steps=0).passed


def test_a_grid_that_was_not_certified_is_refused(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = DigitsCNN().eval()
    comp, grid = quantized(model, 8)
    x = inputs(SHAPE, n=8)
    cert = certify(model, comp, SHAPE, x, steps=0)
    q = grid.tensors["conv2.weight"]
    codes = q.codes.clone()
    codes.view(-1)[7] += 1 if int(codes.view(-1)[7]) < q.qmax else -1
    forged = [WeightGrid(q.layer, q.scale, codes, q.axis, q.bits, parameter=q.param)]
    with pytest.raises(cc.VerificationError, match=r"check 'grid' failed: codes \* scale "
                                                   r"differ from the certified weight "
                                                   r"'conv2.weight' in 1 of 2304 entries"):
        export_onnx(comp, tmp_path / "q.onnx", certificate=cert, grids=forged)
    with pytest.raises(cc.ConfigurationError, match="outside the 4-bit range"):
        export_onnx(comp, tmp_path / "q.onnx", certificate=cert,
                    grids=[WeightGrid(q.layer, q.scale, q.codes, q.axis, 4,
                                      parameter=q.param)])
    assert list(tmp_path.iterdir()) == []


def test_tampered_codes_fail_verification(tmp_path: Path) -> None:
    torch.manual_seed(2)
    model = DigitsCNN().eval()
    comp, grid = quantized(model, 8)
    x = inputs(SHAPE, n=8)
    cert = certify(model, comp, SHAPE, x, steps=0)
    path = tmp_path / "q.onnx"
    export_onnx(comp, path, certificate=cert, grids=grid, search_steps=0)
    m = onnx.load(str(path))
    t = next(t for t in m.graph.initializer if t.name.endswith("_quantized"))
    arr = numpy_helper.to_array(t).copy()
    arr.reshape(-1)[0] = -arr.reshape(-1)[0] if arr.reshape(-1)[0] else 1
    t.CopyFrom(numpy_helper.from_array(arr, t.name))
    onnx.save_model(m, str(path))
    with pytest.raises(cc.VerificationError) as info:
        verify_onnx(path, compressed=comp, inputs=x, search_steps=0)
    msg = str(info.value)
    assert "check 'digest' failed" in msg
    assert "check 'quantized-weights' failed: dequantized weights are not the certified " \
           "weights: 'conv1.weight' differs in 1 entries" in msg


def test_quantized_biases_and_per_tensor_grids(tmp_path: Path) -> None:
    from _onnx_helpers import MLP_SHAPE, mlp

    from certcompress.compress.quantization import QuantConfig, quantization_grid

    model = mlp(seed=4)
    grid = quantization_grid(model, QuantConfig.uniform(model, 6, "per-tensor", bias_bits=16))
    comp = grid.apply(model)
    x = inputs(MLP_SHAPE, n=8)
    cert = certify(model, comp, MLP_SHAPE, x, steps=0)
    report = export_onnx(comp, tmp_path / "b.onnx", certificate=cert, grids=grid,
                         reference_inputs=x, original=model, opset=21, search_steps=0)
    assert report.passed
    stored = {r["name"]: (r["storage"], r["axis"]) for r in report.quantized}
    assert stored["0.weight"] == ("int8", None) and stored["0.bias"] == ("int16", None)
    deq = dequantized_weights(onnx.load(str(tmp_path / "b.onnx")))
    assert len(deq) == 6
    for name, value in comp.state_dict().items():
        assert deq[name].tobytes() == value.numpy().tobytes()
