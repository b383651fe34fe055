"""The ONNX importer against onnxruntime, on models written with the onnx helper API and
on torch exports; refusals of unsupported, malformed and unsafe files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import certcompress as cc
from certcompress.capture.onnx import SUPPORTED_OPS, load_onnx
from certcompress.errors import ModelLoadError, UnsupportedModelError
from certcompress.loading import load_model

RNG = np.random.default_rng(0)


def _w(name: str, *shape: int, scale: float = 0.3) -> TensorProto:
    return numpy_helper.from_array((RNG.standard_normal(shape) * scale).astype(np.float32), name)


def _i64(name: str, values: list[int]) -> TensorProto:
    return numpy_helper.from_array(np.asarray(values, np.int64), name)


def _save(tmp: Path, nodes: list[onnx.NodeProto], inits: list[TensorProto],
          in_shape: list[int | str], out_rank: int = 2, opset: int = 18,
          name: str = "m.onnx") -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * out_rank)
    g = helper.make_graph(nodes, "g", [x], [y], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 9
    path = tmp / name
    onnx.save(m, str(path))
    return path


def _compare(path: Path, shape: tuple[int, ...], *, rel: float = 1e-5) -> torch.nn.Module:
    model = load_onnx(path)
    x = RNG.standard_normal(shape).astype(np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        got = model(torch.from_numpy(x)).numpy()
    assert got.shape == ref.shape
    err = float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-12))
    assert err <= rel, f"importer differs from onnxruntime by {err:.3g} (relative)"
    return model


def _conv_net(tmp: Path) -> Path:
    """Covers Conv (asymmetric pads), BatchNormalization, Relu, LeakyRelu, Clip,
    MaxPool, AveragePool, Add/Sub of branches, Concat, Mul/Div by constants,
    ConvTranspose, Resize (nearest), GlobalAveragePool, Flatten, Gemm, MatMul+Add,
    Reshape, Transpose, Identity, Dropout, DequantizeLinear/QuantizeLinear of weights,
    Constant and ReduceMean."""
    qw = np.clip(np.rint(RNG.standard_normal((4, 4, 3, 3)) * 40), -127, 127).astype(np.int8)
    inits = [
        _w("w1", 4, 3, 3, 3), _w("b1", 4),
        numpy_helper.from_array(np.abs(RNG.standard_normal(4)).astype(np.float32) + .5, "s"),
        _w("bb", 4), _w("mu", 4),
        numpy_helper.from_array(np.abs(RNG.standard_normal(4)).astype(np.float32) + .5, "var"),
        numpy_helper.from_array(qw, "qw"),
        numpy_helper.from_array(np.full(4, 0.01, np.float32), "qs"),
        numpy_helper.from_array(np.zeros(4, np.int8), "qz"),
        _w("wf", 4, 4, 3, 3), numpy_helper.from_array(np.float32(0.02), "fs"),
        numpy_helper.from_array(np.int8(0), "fz"),
        _w("wt", 8, 4, 2, 2), _w("bt", 4),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
        numpy_helper.from_array(np.float32(0.0), "lo"),
        numpy_helper.from_array(np.float32(6.0), "hi"),
        numpy_helper.from_array(np.float32(1.5), "two"),
        _w("chan", 1, 8, 1, 1),
        _w("wg", 10, 8), _w("bg", 10), _w("wm", 10, 6), _w("bm", 6),
        _i64("shape", [0, 2, 3]), _i64("axes", [2]),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 0, 2, 1],
                         strides=[1, 1]),
        helper.make_node("BatchNormalization", ["c1", "s", "bb", "mu", "var"], ["n1"],
                         name="bn1", epsilon=1e-3),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("DequantizeLinear", ["qw", "qs", "qz"], ["dqw"], name="dq_w", axis=0),
        helper.make_node("Conv", ["r1", "dqw"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("LeakyRelu", ["c2"], ["r2"], name="leaky", alpha=0.1),
        helper.make_node("QuantizeLinear", ["wf", "fs", "fz"], ["qf"], name="q_f"),
        helper.make_node("DequantizeLinear", ["qf", "fs", "fz"], ["dqf"], name="dq_f"),
        helper.make_node("Conv", ["r1", "dqf"], ["c3"], name="conv3", pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["c3", "lo", "hi"], ["r3"], name="relu6"),
        helper.make_node("Add", ["r2", "r3"], ["a1"], name="add"),
        helper.make_node("Sub", ["r2", "r3"], ["s1"], name="sub"),
        helper.make_node("Concat", ["a1", "s1"], ["cat"], name="cat", axis=1),
        helper.make_node("Mul", ["cat", "chan"], ["m1"], name="mul"),
        helper.make_node("Div", ["m1", "two"], ["d1"], name="div"),
        helper.make_node("MaxPool", ["d1"], ["p1"], name="maxpool", kernel_shape=[2, 2],
                         strides=[2, 2]),
        helper.make_node("ConvTranspose", ["p1", "wt", "bt"], ["u1"], name="deconv",
                         strides=[2, 2]),
        helper.make_node("Resize", ["u1", "", "scales"], ["u2"], name="resize",
                         mode="nearest", coordinate_transformation_mode="asymmetric",
                         nearest_mode="floor"),
        helper.make_node("AveragePool", ["u2"], ["p2"], name="avgpool", kernel_shape=[3, 3],
                         strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Identity", ["p2"], ["i1"], name="identity"),
        helper.make_node("Dropout", ["i1"], ["dr"], name="dropout"),
        helper.make_node("ReduceMean", ["dr", "axes"], ["rm"], name="reducemean", keepdims=1),
        helper.make_node("GlobalAveragePool", ["rm"], ["gp"], name="gap"),
        helper.make_node("Concat", ["gp", "gp"], ["gp2"], name="cat2", axis=1),
        helper.make_node("Flatten", ["gp2"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "wg", "bg"], ["g1"], name="gemm", transB=1,
                         alpha=0.5),
        helper.make_node("Relu", ["g1"], ["g2"], name="relu_g"),
        helper.make_node("MatMul", ["g2", "wm"], ["mm"], name="matmul"),
        helper.make_node("Add", ["mm", "bm"], ["lin"], name="matmul_bias"),
        helper.make_node("Reshape", ["lin", "shape"], ["rs"], name="reshape"),
        helper.make_node("Transpose", ["rs"], ["y"], name="transpose", perm=[0, 2, 1]),
    ]
    return _save(tmp, nodes, inits, ["N", 3, 12, 12], out_rank=3)


def test_hand_built_covers_every_op_and_matches_onnxruntime(tmp_path: Path) -> None:
    path = _conv_net(tmp_path)
    used = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert used >= SUPPORTED_OPS - {"Constant", "Shape", "Squeeze", "Unsqueeze", "Gather", "Cast"}
    model = _compare(path, (3, 3, 12, 12))
    # MatMul + Add on initializers became one Linear with a bias
    assert any(isinstance(m, torch.nn.Linear) and m.bias is not None and m.in_features == 10
               for m in model.modules())
    graph = cc.trace(model, (1, 3, 12, 12))
    assert graph.input_shape == (1, 3, 12, 12)


def test_constant_node_and_reshape_batch(tmp_path: Path) -> None:
    shape = helper.make_tensor("shp", TensorProto.INT64, [2], [1, -1])
    nodes = [helper.make_node("Constant", [], ["shape"], name="const", value=shape),
             helper.make_node("Reshape", ["x", "shape"], ["r"], name="reshape"),
             helper.make_node("Gemm", ["r", "w"], ["y"], name="gemm")]
    path = _save(tmp_path, nodes, [_w("w", 12, 5)], [1, 3, 2, 2])
    _compare(path, (1, 3, 2, 2))


def test_torch_export_roundtrip_and_model_spec(tmp_path: Path) -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                              torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                              torch.nn.Linear(64, 10)).eval()
    with torch.no_grad():
        net[1].running_var.uniform_(0.5, 2.0)
        net[1].running_mean.uniform_(-0.5, 0.5)
    path = tmp_path / "net.onnx"
    torch.onnx.export(net, (torch.randn(1, 1, 8, 8),), str(path), dynamo=False,
                      input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, opset_version=17)
    model = _compare(path, (4, 1, 8, 8))
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(model(x), net(x), rtol=1e-5, atol=1e-5)
    loaded = load_model(str(path))
    dom = cc.InputDomain.box(0.0, 1.0, shape=(1, 1, 8, 8))
    qmodel, cert = cc.quantize(loaded, cc.QuantConfig.uniform(loaded, 8), domain=dom,
                               search_steps=5, search_restarts=1)
    assert 0.0 < cert.bound < float("inf")
    assert cert.measurements.adversarial_max is not None
    assert cert.measurements.adversarial_max <= cert.bound
    with pytest.raises(ModelLoadError, match="carries its own weights"):
        load_model(str(path), weights="w.pt")


def test_every_unsupported_op_named_in_one_error(tmp_path: Path) -> None:
    nodes = [helper.make_node("Sigmoid", ["x"], ["a"], name="sig1"),
             helper.make_node("Sigmoid", ["a"], ["b"], name="sig2"),
             helper.make_node("Softmax", ["b"], ["c"], name="soft"),
             helper.make_node("Relu", ["c"], ["d"], name="ok"),
             helper.make_node("Tanh", ["d"], ["y"], name="tanh")]
    path = _save(tmp_path, nodes, [], [1, 4])
    with pytest.raises(UnsupportedModelError) as info:
        load_onnx(path)
    msg = str(info.value)
    assert {o.node for o in info.value.offenders} == {"sig1", "sig2", "soft", "tanh"}
    assert "Sigmoid x2" in msg and "Softmax" in msg and "Tanh" in msg and "soft" in msg


def test_custom_domain_op_and_function_refused_not_run(tmp_path: Path) -> None:
    nodes = [helper.make_node("Evil", ["x"], ["y"], name="evil", domain="com.attacker")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    g = helper.make_graph(nodes, "g", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18),
                                            helper.make_opsetid("com.attacker", 1)])
    path = tmp_path / "custom.onnx"
    onnx.save(m, str(path))
    with pytest.raises(UnsupportedModelError, match="com.attacker.Evil"):
        load_onnx(path)
    # a model-local function (code the file defines) is refused before anything else
    fn = helper.make_function("com.attacker", "Evil", ["a"], ["b"],
                              [helper.make_node("Relu", ["a"], ["b"])],
                              [helper.make_opsetid("", 18)])
    m2 = helper.make_model(g, opset_imports=m.opset_import, functions=[fn])
    path2 = tmp_path / "function.onnx"
    onnx.save(m2, str(path2))
    with pytest.raises(ModelLoadError, match="model-local functions"):
        load_onnx(path2)


def test_activation_qdq_imported_as_quantizer(tmp_path: Path) -> None:
    import onnxruntime as ort

    from certcompress.capture.fakequant import ActivationQuantizer

    inits = [numpy_helper.from_array(np.float32(0.05), "s"),
             numpy_helper.from_array(np.uint8(128), "z"), _w("w", 4, 3)]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q_act"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"], name="dq_act"),
             helper.make_node("Gemm", ["dq", "w"], ["y"], name="gemm")]
    path = _save(tmp_path, nodes, inits, ["N", 4])
    gm = load_onnx(path)
    qs = [m for m in gm.modules() if isinstance(m, ActivationQuantizer)]
    assert len(qs) == 1 and qs[0].enabled
    assert (qs[0].scale, qs[0].zero_point, qs[0].op.qmin, qs[0].op.qmax) == \
        (float(np.float32(0.05)), 128, 0, 255)
    x = np.random.default_rng(0).uniform(-8, 8, (64, 4)).astype(np.float32)
    y = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    with torch.no_grad():
        mine = gm(torch.from_numpy(x)).numpy()
    assert np.allclose(mine, y, rtol=1e-6, atol=1e-6)  # clipping at [-6.4, 6.35] included
    # another grid in the DequantizeLinear, or per-axis scales: refused, named
    inits2 = inits + [numpy_helper.from_array(np.float32(0.1), "s2")]
    nodes2 = [nodes[0], helper.make_node("DequantizeLinear", ["q", "s2", "z"], ["dq"],
                                         name="dq_other"), nodes[2]]
    with pytest.raises(UnsupportedModelError, match="another grid") as info:
        load_onnx(_save(tmp_path, nodes2, inits2, ["N", 4], name="other.onnx"))
    assert [o.node for o in info.value.offenders] == ["dq_other"]


def _external_model(tmp: Path, location: str) -> Path:
    w = _w("w", 4, 3)
    w.ClearField("raw_data")
    w.ClearField("float_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "48")):
        e = w.external_data.add()
        e.key, e.value = k, v
    return _save(tmp, [helper.make_node("Gemm", ["x", "w"], ["y"], name="gemm")], [w], [1, 4],
                 name="ext.onnx")


def test_external_data_outside_folder_refused(tmp_path: Path) -> None:
    inside = tmp_path / "model"
    inside.mkdir()
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.ones(12, np.float32).tobytes())
    for location in ("../secret.bin", str(secret)):
        path = _external_model(inside, location)
        with pytest.raises(ModelLoadError, match="leaves the model's folder|is absolute"):
            load_onnx(path)
    link = inside / "link.bin"
    link.symlink_to(secret)
    with pytest.raises(ModelLoadError, match="leaves the model's folder"):
        load_onnx(_external_model(inside, "link.bin"))
    (inside / "w.bin").write_bytes(np.arange(12, dtype=np.float32).tobytes())
    model = load_onnx(_external_model(inside, "w.bin"))
    lin = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert torch.equal(lin.weight.T.reshape(-1), torch.arange(12, dtype=torch.float32))
    (inside / "short.bin").write_bytes(b"\0" * 8)
    with pytest.raises(ModelLoadError, match="runs past the end"):
        load_onnx(_external_model(inside, "short.bin"))


def test_malformed_truncated_cyclic_and_huge_files(tmp_path: Path) -> None:
    good = _save(tmp_path, [helper.make_node("Relu", ["x"], ["y"], name="r")], [], [1, 4])
    data = good.read_bytes()
    (tmp_path / "trunc.onnx").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.onnx").write_bytes(b"\x07not an onnx file at all\xff" * 10)
    for name in ("trunc.onnx", "junk.onnx"):
        with pytest.raises(ModelLoadError, match=name):
            load_onnx(tmp_path / name)
    cyc = [helper.make_node("Relu", ["b"], ["a"], name="r1"),
           helper.make_node("Add", ["x", "a"], ["b"], name="add"),
           helper.make_node("Relu", ["b"], ["y"], name="r2")]
    with pytest.raises(ModelLoadError, match="checker"):
        load_onnx(_save(tmp_path, cyc, [], [1, 4], name="cycle.onnx"))
    huge = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1 << 20, 1 << 20],
                       raw_data=b"\0" * 16)
    with pytest.raises(ModelLoadError, match="more than"):
        load_onnx(_save(tmp_path, [helper.make_node("Gemm", ["x", "w"], ["y"], name="g")],
                        [huge], [1, 1 << 20], name="huge.onnx"))
    with pytest.raises(ModelLoadError, match="opset"):
        load_onnx(_save(tmp_path, [helper.make_node("Relu", ["x"], ["y"], name="r")], [],
                        [1, 4], opset=9, name="old.onnx"))


def test_dynamic_batch_shape_arithmetic(tmp_path: Path) -> None:
    """The dynamo exporter's flatten: Shape -> Squeeze/Unsqueeze/Gather/Cast -> Concat ->
    Reshape, with a symbolic batch dimension."""
    inits = [_i64("minus1", [-1]), _i64("zero", [0]), _i64("ax0", [0]), _w("w", 12, 4)]
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Shape", ["r"], ["s"], name="shape", start=0, end=1),
             helper.make_node("Squeeze", ["s"], ["b"], name="squeeze"),
             helper.make_node("Unsqueeze", ["b", "ax0"], ["b1"], name="unsqueeze"),
             helper.make_node("Shape", ["r"], ["s_all"], name="shape_all"),
             helper.make_node("Gather", ["s_all", "zero"], ["b2"], name="gather"),
             helper.make_node("Cast", ["b2"], ["b3"], name="cast", to=TensorProto.INT64),
             helper.make_node("Concat", ["b1", "minus1"], ["shp"], name="concat", axis=0),
             helper.make_node("Reshape", ["r", "shp"], ["f"], name="reshape"),
             helper.make_node("Gemm", ["f", "w"], ["y"], name="gemm")]
    path = _save(tmp_path, nodes, inits, ["N", 3, 2, 2])
    model = _compare(path, (5, 3, 2, 2))
    assert cc.trace(model, (1, 3, 2, 2)).input_shape == (1, 3, 2, 2)


@pytest.mark.slow
def test_resnet18_torch_onnx_export_matches_onnxruntime(tmp_path: Path) -> None:
    torchvision = pytest.importorskip("torchvision")
    net = torchvision.models.resnet18().eval()
    path = tmp_path / "r18.onnx"
    with torch.no_grad():
        torch.onnx.export(net, (torch.randn(1, 3, 224, 224),), str(path), dynamo=False,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, opset_version=18)
    model = _compare(path, (2, 3, 224, 224))
    graph = cc.trace(model, (1, 3, 224, 224))
    assert graph.input_shape == (1, 3, 224, 224)


def test_cli_certify_accepts_onnx_files(tmp_path: Path) -> None:
    from certcompress.cli import main

    w = RNG.standard_normal((16, 10)).astype(np.float32)
    paths = []
    for i, scale in enumerate((1.0, 1.01)):
        inits = [numpy_helper.from_array(w * np.float32(scale), "w")]
        nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
                 helper.make_node("Gemm", ["r", "w"], ["y"], name="gemm")]
        paths.append(str(_save(tmp_path, nodes, inits, [1, 16], name=f"m{i}.onnx")))
    out = tmp_path / "cert.json"
    rc = main(["certify", *paths, "--input-shape", "1", "16", "--domain", "0:1",
               "--search-steps", "2", "--out", str(out)])
    assert rc == 0
    cert = cc.Certificate.from_json(out.read_text())
    assert cert.bound > 0.0
    assert cert.measurements.adversarial_max is not None
    assert cert.measurements.adversarial_max <= cert.bound
    # the file declares its input shape: --input-shape may be left out, and a different
    # one is refused with both shapes named
    out2 = tmp_path / "cert2.json"
    assert main(["certify", *paths, "--domain", "0:1", "--search-steps", "2",
                 "--out", str(out2)]) == 0
    assert tuple(cc.Certificate.from_json(out2.read_text()).input_shape) == (1, 16)
    assert main(["certify", *paths, "--input-shape", "1", "8", "--domain", "0:1",
                 "--out", str(tmp_path / "cert3.json")]) != 0
    assert not (tmp_path / "cert3.json").exists()


def test_declared_input_shape_serves_the_python_api(tmp_path: Path) -> None:
    """``load_onnx`` records the file's input shape; ``certify`` without ``input_shape``
    resolves it from there (as the CLI does), and plain modules declare none."""
    from certcompress.domain import declared_input_shape

    w = RNG.standard_normal((16, 10)).astype(np.float32)
    paths = []
    for i, scale in enumerate((1.0, 1.01)):
        inits = [numpy_helper.from_array(w * np.float32(scale), "w")]
        nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
                 helper.make_node("Gemm", ["r", "w"], ["y"], name="gemm")]
        paths.append(_save(tmp_path, nodes, inits, [1, 16], name=f"d{i}.onnx"))
    a, b = load_onnx(paths[0]), load_onnx(paths[1])
    assert declared_input_shape(a) == (1, 16)
    assert declared_input_shape(torch.nn.Linear(16, 10)) is None
    assert declared_input_shape(torch.fx.symbolic_trace(torch.nn.Linear(16, 10))) is None
    cert = cc.certify(a, b, input_radius=1.0, search_steps=4)
    assert tuple(cert.input_shape) == (1, 16)
    assert cert.measurements.adversarial_max is not None
    assert cert.measurements.adversarial_max <= cert.bound


def test_float16_weights_behind_casts_load_and_a_float16_graph_is_refused(
        tmp_path: Path) -> None:
    """The usual float16 truncation of a float32 model (float16 initializers cast to float)
    loads with the float16 values exactly; a graph run in float16 end to end is refused
    with the way to express its weights in a float32 graph."""
    w = (RNG.standard_normal((4, 3)) * 0.3).astype(np.float16)
    b = (RNG.standard_normal(3) * 0.3).astype(np.float16)
    nodes = [helper.make_node("Cast", ["wh"], ["w"], to=TensorProto.FLOAT),
             helper.make_node("Cast", ["bh"], ["b"], to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["x", "w"], ["m"]),
             helper.make_node("Add", ["m", "b"], ["y"])]
    inits = [numpy_helper.from_array(w, "wh"), numpy_helper.from_array(b, "bh")]
    model = _compare(_save(tmp_path, nodes, inits, [1, 4]), (1, 4))
    x = torch.rand(2, 4, dtype=torch.float64)
    with torch.no_grad():
        want = x @ torch.from_numpy(w.astype(np.float64)) + torch.from_numpy(
            b.astype(np.float64))
        assert torch.equal(model.double()(x), want)
    x16 = helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 4])
    y16 = helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 3])
    g = helper.make_graph(nodes[2:], "g", [x16], [y16],
                          initializer=[numpy_helper.from_array(w, "w"),
                                       numpy_helper.from_array(b, "b")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    path = tmp_path / "half.onnx"
    onnx.save(m, str(path))
    with pytest.raises(UnsupportedModelError, match=r"float16, not float32.*Cast\(to=FLOAT\)"):
        load_onnx(path)
