"""An ONNX graph (read by :mod:`.reader`) as a ``torch.fx.GraphModule`` of standard
torch modules, which the tracer and its adapters then capture like any PyTorch model.

Each supported ONNX node becomes one standard module or function call (Conv ->
``nn.ConvNd``, Gemm/MatMul with a constant operand -> ``nn.Linear``, BatchNormalization
-> eval ``nn.BatchNormNd``, ...). Constant subgraphs (initializers, ``Constant``,
``DequantizeLinear``/``QuantizeLinear`` of constants, i.e. quantized weights) are
evaluated here with numpy as the ONNX specification defines them, never by running
the file. Every node outside the supported set is collected and one
:class:`UnsupportedModelError` names them all (op type, node name, count).

Activation quantization (``QuantizeLinear`` -> ``DequantizeLinear`` applied to an
input-dependent tensor, as ``onnxruntime.quantization.quantize_static`` and
``certcompress.export_w8a8`` write) becomes an
:class:`~certcompress.capture.fakequant.ActivationQuantizer` with the stored scale and
zero point (per tensor, integer types), whose rounding and clipping the bound tiers model
(docs/quantization.md, "Activation quantization"). An integer activation read by
anything but a ``DequantizeLinear`` of the same grid, or per-axis activation
quantization, is refused.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import fx, nn

from ...domain import DECLARED_SHAPE_ATTR
from ...errors import RefusalKind, UnsupportedModelError, UnsupportedNode
from ..fakequant import ActivationQuantizer, default_slack

__all__ = ["SUPPORTED_OPS", "scan_ops", "to_module"]

#: ONNX op types the importer converts (default domain only)
SUPPORTED_OPS = frozenset({
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div",
    "BatchNormalization", "Relu", "LeakyRelu", "Clip", "Concat", "MaxPool", "AveragePool",
    "GlobalAveragePool", "ReduceMean", "Flatten", "Reshape", "Transpose", "Resize",
    "Identity", "Dropout", "DequantizeLinear", "QuantizeLinear", "Constant",
    # shape arithmetic only (constants, or the shape of a tensor with a dynamic batch)
    "Shape", "Squeeze", "Unsqueeze", "Gather", "Cast"})


class _Batch:
    """The dynamic batch size inside a shape computed by Shape (a symbolic integer)."""

    def __repr__(self) -> str:
        return "batch"


BATCH = _Batch()

_ACT_QDQ = ("activation quantization (QuantizeLinear/DequantizeLinear on an "
            "input-dependent tensor) is not certified yet: its rounding is not modelled by "
            "the bound tiers; import the float model instead")


class _QTensor:
    """The integer output of an activation ``QuantizeLinear``: waits for its
    ``DequantizeLinear``."""

    def __init__(self, x: fx.Node, scale: float, zero_point: int, dtype: np.dtype[Any]) -> None:
        self.x, self.scale, self.zero_point, self.dtype = x, scale, zero_point, dtype


class _Skip(Exception):
    """This node's outputs are unknown (an earlier node was refused)."""


class _Refuse(Exception):
    def __init__(self, reason: str, kind: RefusalKind = RefusalKind.NO_ADAPTER, *,
                 scan_on: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind
        #: the node's output was bound to its input so that later nodes are still
        #: checked (and listed); the model is refused all the same
        self.scan_on = scan_on


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _ident(name: str, used: set[str]) -> str:
    base = re.sub(r"\W", "_", name).strip("_") or "node"
    if base[0].isdigit():
        base = "n_" + base
    base = base[:60]
    out, i = base, 1
    while out in used:
        i += 1
        out = f"{base}_{i}"
    used.add(out)
    return out


def _t(v: Any) -> Any:
    """A tuple of ints (typed Any: torch's stubs want fixed-length tuples)."""
    return tuple(int(i) for i in v)


def _f32(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32).copy())


def _dequantize(x: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, axis: int) -> np.ndarray:
    """``DequantizeLinear``: ``float32(x - zero_point) * scale`` (per tensor or per axis)."""
    xi = x.astype(np.int64)
    z = np.zeros((), np.int64) if zp is None else zp.astype(np.int64)
    s = scale.astype(np.float32)
    if s.ndim == 1 and s.size > 1 or (s.ndim == 1 and x.ndim > 0 and s.size == x.shape[axis]
                                      and s.size > 1):
        shape = [1] * x.ndim
        shape[axis] = -1
        s = s.reshape(shape)
        z = z.reshape(shape) if z.ndim == 1 else z
    return ((xi - z).astype(np.float32) * s).astype(np.float32)


def _quantize(x: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, axis: int,
              out_type: np.dtype[Any]) -> np.ndarray:
    """``QuantizeLinear``: ``saturate(round_half_even(x / scale) + zero_point)``."""
    s = scale.astype(np.float32)
    z = np.zeros((), np.int64) if zp is None else zp.astype(np.int64)
    if s.ndim == 1 and s.size > 1:
        shape = [1] * x.ndim
        shape[axis] = -1
        s = s.reshape(shape)
        z = z.reshape(shape) if z.ndim == 1 else z
    q = np.rint(x.astype(np.float32) / s).astype(np.int64) + z
    info = np.iinfo(out_type)
    return np.clip(q, info.min, info.max).astype(out_type)


class _Builder:
    def __init__(self, model: onnx.ModelProto, name: str) -> None:
        self.model = model
        self.g = model.graph
        self.name = name
        self.root = nn.Module()
        self.graph = fx.Graph()
        self.used: set[str] = set()
        self.values: dict[str, fx.Node | np.ndarray] = {}
        self.qtensors: dict[str, _QTensor] = {}  # integer activations awaiting their DQ
        self.shapes: dict[str, tuple[int | None, ...]] = {}
        self.unknown: set[str] = set()
        self.offenders: list[UnsupportedNode] = []
        self.consumers: dict[str, int] = {}
        self.bias_free: dict[fx.Node, nn.Linear] = {}
        self.input_node: fx.Node | None = None
        self.batch_size: fx.Node | None = None
        for n in self.g.node:
            for i in n.input:
                self.consumers[i] = self.consumers.get(i, 0) + 1
        for o in self.g.output:
            self.consumers[o.name] = self.consumers.get(o.name, 0) + 1
        for vi in list(self.g.value_info) + list(self.g.input) + list(self.g.output):
            t = vi.type.tensor_type
            if t.HasField("shape"):
                self.shapes[vi.name] = tuple(
                    int(d.dim_value) if d.HasField("dim_value") else None for d in t.shape.dim)

    # ------------------------------------------------------------------ helpers
    def const(self, name: str) -> np.ndarray | None:
        v = self.values.get(name)
        return v if isinstance(v, np.ndarray) else None

    def need_const(self, node: onnx.NodeProto, i: int, what: str) -> np.ndarray:
        if i >= len(node.input) or not node.input[i]:
            raise _Refuse(f"{what} is missing")
        c = self.const(node.input[i])
        if c is None:
            raise _Refuse(f"{what} ('{node.input[i]}') must be a constant (an initializer), "
                          "not an input-dependent tensor")
        return c

    def opt_const(self, node: onnx.NodeProto, i: int, what: str) -> np.ndarray | None:
        if i >= len(node.input) or not node.input[i]:
            return None
        return self.need_const(node, i, what)

    def dyn(self, node: onnx.NodeProto, i: int = 0) -> fx.Node:
        v = self.values.get(node.input[i])
        if not isinstance(v, fx.Node):
            raise _Refuse(f"input {i} ('{node.input[i]}') must depend on the model input; "
                          "constant-only computations of this op are not folded")
        return v

    def rank(self, name: str) -> int:
        s = self.shapes.get(name)
        if s is None:
            raise _Refuse(f"the shape of '{name}' is unknown after shape inference")
        return len(s)

    def add_module(self, node: onnx.NodeProto, m: nn.Module, *args: Any) -> fx.Node:
        attr = _ident(node.name or node.op_type, self.used)
        self.root.add_module(attr, m)
        return self.graph.call_module(attr, tuple(args))

    def buffer(self, base: str, a: np.ndarray) -> fx.Node:
        attr = _ident("const_" + base, self.used)
        self.root.register_buffer(attr, _f32(a))
        return self.graph.get_attr(attr)

    # ------------------------------------------------------------------ conversion
    def run(self) -> tuple[fx.GraphModule, str, tuple[int, ...]]:
        inits = {t.name for t in self.g.initializer}
        for t in self.g.initializer:
            self.values[t.name] = numpy_helper.to_array(t)
        inputs = [i for i in self.g.input if i.name not in inits]
        if len(inputs) != 1:
            raise UnsupportedModelError(
                f"ONNX model '{self.name}' has {len(inputs)} graph inputs "
                f"({', '.join(i.name for i in inputs)}); certcompress certifies models of "
                "one input tensor")
        inp = inputs[0]
        if inp.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type) \
                if inp.type.tensor_type.elem_type else "undefined"
            raise UnsupportedModelError(
                f"ONNX model '{self.name}': input '{inp.name}' is {dtype}, not float32. "
                "certcompress certifies float32 graphs (and float64 or float32 arithmetic "
                "on them); a model run in float16 or integer arithmetic end to end is not "
                "modelled. To certify float16 weights, keep the weights' float16 values in "
                "a float32 graph (store them as float32 initializers, or as float16 "
                "initializers behind Cast(to=FLOAT) nodes)")
        dims = self.shapes.get(inp.name)
        if not dims:
            raise UnsupportedModelError(f"ONNX model '{self.name}': input '{inp.name}' has no "
                                        "static rank")
        if any(d is None for d in dims[1:]):
            raise UnsupportedModelError(
                f"ONNX model '{self.name}': input '{inp.name}' has dynamic non-batch "
                f"dimensions {dims}; certification needs a fixed input shape")
        input_shape = tuple(1 if d is None else int(d) for d in dims)
        self.input_node = self.graph.placeholder(_ident(inp.name, self.used))
        self.values[inp.name] = self.input_node
        for node in self.g.node:
            try:
                if any(i in self.unknown for i in node.input if i):
                    raise _Skip
                self.convert(node)
            except _Skip:
                self.unknown.update(node.output)
            except _Refuse as r:
                if not r.scan_on:
                    self.unknown.update(node.output)
                self.offenders.append(UnsupportedNode(
                    node=node.name or f"<unnamed {node.op_type}>", op="onnx",
                    target=node.op_type, reason=r.reason, kind=r.kind, group=node.op_type))
        if self.offenders:
            raise UnsupportedModelError(
                f"ONNX model '{self.name}' has {len(self.offenders)} node(s) outside what "
                "certcompress imports:", self.offenders)
        if len(self.g.output) != 1:
            raise UnsupportedModelError(
                f"ONNX model '{self.name}' has {len(self.g.output)} outputs; certcompress "
                "certifies models of one output tensor")
        out = self.values.get(self.g.output[0].name)
        if not isinstance(out, fx.Node):
            raise UnsupportedModelError(f"ONNX model '{self.name}': the output does not "
                                        "depend on the input")
        self.graph.output(out)
        gm = fx.GraphModule(self.root, self.graph, class_name="OnnxModule")
        return gm, inp.name, input_shape

    def convert(self, node: onnx.NodeProto) -> None:
        op = node.op_type
        why = _op_refusal(node)
        if why is not None:
            raise _Refuse(why)
        a = _attrs(node)
        handler: Callable[[onnx.NodeProto, dict[str, Any]], Any] = getattr(self, "op_" + op)
        if op != "DequantizeLinear" and any(i in self.qtensors for i in node.input if i):
            raise _Refuse("reads an integer activation (QuantizeLinear output); only a "
                          "DequantizeLinear of the same grid may")
        result = handler(node, a)
        if isinstance(result, (fx.Node, np.ndarray)):
            self.values[node.output[0]] = result
        for extra in node.output[1:]:
            if extra and self.consumers.get(extra, 0):
                raise _Refuse(f"its output {extra!r} (a secondary output) is used")

    # ------------------------------------------------------------------ constants
    def op_Constant(self, node: onnx.NodeProto, a: dict[str, Any]) -> np.ndarray:
        if "value" in a:
            return numpy_helper.to_array(a["value"])
        for key, dt in (("value_float", np.float32), ("value_floats", np.float32),
                        ("value_int", np.int64), ("value_ints", np.int64)):
            if key in a:
                return np.asarray(a[key], dtype=dt)
        raise _Refuse(f"Constant with attribute(s) {sorted(a)} is not supported")

    def op_Identity(self, node: onnx.NodeProto, a: dict[str, Any]) -> Any:
        return self.values[node.input[0]]

    def op_Dropout(self, node: onnx.NodeProto, a: dict[str, Any]) -> Any:
        if len(node.input) > 2 and node.input[2]:
            t = self.const(node.input[2])
            if t is None or bool(t.reshape(-1)[0]):
                raise _Refuse("Dropout in training mode")
        return self.values[node.input[0]]

    def _activation_qdq(self, node: onnx.NodeProto, why: str = _ACT_QDQ) -> _Refuse:
        qt = self.qtensors.get(node.input[0])
        self.values[node.output[0]] = qt.x if qt is not None else self.values[node.input[0]]
        return _Refuse(why, scan_on=True)

    def _per_tensor(self, node: onnx.NodeProto, a: dict[str, Any]
                    ) -> tuple[float, int, np.dtype[Any]]:
        scale = self.need_const(node, 1, "the scale")
        zp = self.opt_const(node, 2, "the zero point")
        if scale.size != 1 or (zp is not None and zp.size != 1) or a.get("block_size", 0):
            raise self._activation_qdq(node, "per-axis or blocked activation quantization is "
                                             "not supported (per-tensor only)")
        dtype = np.dtype(np.uint8) if zp is None else zp.dtype
        if "output_dtype" in a and a["output_dtype"] and zp is None:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(a["output_dtype"]))
        s = float(scale.reshape(()))
        if dtype.kind not in "iu" or dtype.itemsize > 2 or not (np.isfinite(s) and s > 0):
            raise self._activation_qdq(node, f"activation quantization to {dtype} with scale "
                                             f"{s} is not supported (integer types of 8 or 16 "
                                             "bits, positive scale)")
        return s, 0 if zp is None else int(zp.reshape(())), dtype

    def op_DequantizeLinear(self, node: onnx.NodeProto, a: dict[str, Any]) -> Any:
        qt = self.qtensors.get(node.input[0])
        if qt is not None:
            s, z, dtype = self._per_tensor(node, a)
            if (s, z, dtype) != (qt.scale, qt.zero_point, qt.dtype):
                raise self._activation_qdq(node, "DequantizeLinear with another grid than its "
                                                 "QuantizeLinear's is not supported")
            info = np.iinfo(dtype)
            q = ActivationQuantizer(s, z, int(info.min), int(info.max),
                                    slack=default_slack(s, z, int(info.min), int(info.max)))
            return self.add_module(node, q, qt.x)
        if not isinstance(self.values.get(node.input[0]), np.ndarray):
            raise self._activation_qdq(node)
        if a.get("block_size", 0):
            raise _Refuse("blocked DequantizeLinear (block_size) is not supported")
        x = self.need_const(node, 0, "the quantized tensor")
        scale = self.need_const(node, 1, "the scale")
        zp = self.opt_const(node, 2, "the zero point")
        axis = int(a.get("axis", 1))
        if x.ndim:
            axis %= x.ndim
        return _dequantize(x, scale, zp, axis)

    def op_QuantizeLinear(self, node: onnx.NodeProto, a: dict[str, Any]) -> Any:
        v = self.values.get(node.input[0])
        if isinstance(v, fx.Node):
            if a.get("saturate", 1) != 1:
                raise self._activation_qdq(node, "non-saturating QuantizeLinear")
            self.qtensors[node.output[0]] = _QTensor(v, *self._per_tensor(node, a))
            return None
        if not isinstance(v, np.ndarray):
            raise self._activation_qdq(node)
        if a.get("block_size", 0) or a.get("saturate", 1) != 1:
            raise _Refuse("blocked or non-saturating QuantizeLinear is not supported")
        x = self.need_const(node, 0, "the float tensor")
        scale = self.need_const(node, 1, "the scale")
        zp = self.opt_const(node, 2, "the zero point")
        if zp is not None:
            out = zp.dtype
        elif "output_dtype" in a and a["output_dtype"]:
            out = np.dtype(helper.tensor_dtype_to_np_dtype(a["output_dtype"]))
        else:
            out = np.dtype(np.uint8)
        if out.kind not in "iu":
            raise _Refuse(f"QuantizeLinear to {out} is not supported (integer types only)")
        axis = int(a.get("axis", 1))
        if x.ndim:
            axis %= x.ndim
        return _quantize(x, scale, zp, axis, out)

    # ------------------------------------------------------------------ affine
    @staticmethod
    def _pads(node: onnx.NodeProto, a: dict[str, Any], n: int,
              spatial: Sequence[int | None], kernel: Sequence[int], strides: Sequence[int],
              dilations: Sequence[int]) -> tuple[list[int], list[int]]:
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else str(auto)
        if auto in ("NOTSET", ""):
            pads = list(a.get("pads", [0] * (2 * n)))
            return pads[:n], pads[n:]
        if auto == "VALID":
            return [0] * n, [0] * n
        begin, end = [], []
        for i in range(n):
            size = spatial[i]
            if size is None:
                raise _Refuse("auto_pad SAME with an unknown spatial size")
            out = -(-size // strides[i])
            total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size)
            small, big = total // 2, total - total // 2
            begin.append(big if auto == "SAME_LOWER" else small)
            end.append(small if auto == "SAME_LOWER" else big)
        return begin, end

    def op_Conv(self, node: onnx.NodeProto, a: dict[str, Any]) -> fx.Node:
        x = self.dyn(node)
        w = self.need_const(node, 1, "the weight")
        b = self.opt_const(node, 2, "the bias")
        n = w.ndim - 2
        if n not in (1, 2, 3):
            raise _Refuse(f"{n}-d convolution is not supported")
        kernel = list(a.get("kernel_shape", w.shape[2:]))
        strides = list(a.get("strides", [1] * n))
        dil = list(a.get("dilations", [1] * n))
        group = int(a.get("group", 1))
        spatial = self.shapes.get(node.input[0], (None,) * (n + 2))[2:]
        begin, end = self._pads(node, a, n, spatial, kernel, strides, dil)
        cls = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[n - 1]
        pad = begin
        if begin != end:
            pad_cls = (nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d)[n - 1]
            torch_pad: list[int] = []
            for i in reversed(range(n)):
                torch_pad += [begin[i], end[i]]
            x = self.add_module(node, pad_cls(_t(torch_pad)), x)
            pad = [0] * n
        conv = cls(int(w.shape[1]) * group, int(w.shape[0]), _t(kernel), _t(strides),
                   _t(pad), _t(dil), group, bias=b is not None)
        with torch.no_grad():
            conv.weight.copy_(_f32(w))
            if b is not None and conv.bias is not None:
                conv.bias.copy_(_f32(b.reshape(-1)))
        return self.add_module(node, conv, x)

    def op_ConvTranspose(self, node: onnx.NodeProto, a: dict[str, Any]) -> fx.Node:
        x = self.dyn(node)
        w = self.need_const(node, 1, "the weight")
        b = self.opt_const(node, 2, "the bias")
        n = w.ndim - 2
        if n not in (1, 2, 3):
            raise _Refuse(f"{n}-d transposed convolution is not supported")
        if "output_shape" in a or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise _Refuse("ConvTranspose with output_shape or auto_pad is not supported")
        pads = list(a.get("pads", [0] * (2 * n)))
        if pads[:n] != pads[n:]:
            raise _Refuse(f"asymmetric pads {pads} on a transposed convolution")
        group = int(a.get("group", 1))
        cls = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[n - 1]
        conv = cls(int(w.shape[0]), int(w.shape[1]) * group,
                   _t(a.get("kernel_shape", w.shape[2:])), _t(a.get("strides", [1] * n)),
                   _t(pads[:n]), _t(a.get("output_padding", [0] * n)), group,
                   bias=b is not None, dilation=_t(a.get("dilations", [1] * n)))
        with torch.no_grad():
            conv.weight.copy_(_f32(w))
            if b is not None and conv.bias is not None:
                conv.bias.copy_(_f32(b.reshape(-1)))
        return self.add_module(node, conv, x)

    def _linear(self, node: onnx.NodeProto, x: fx.Node, weight: np.ndarray,
                bias: np.ndarray | None) -> fx.Node:
        lin = nn.Linear(int(weight.shape[1]), int(weight.shape[0]), bias=bias is not None)
        with torch.no_grad():
            lin.weight.copy_(_f32(weight))
            if bias is not None and lin.bias is not None:
                lin.bias.copy_(_f32(bias))
        out = self.add_module(node, lin, x)
        if bias is None:
            self.bias_free[out] = lin
        return out

    def op_Gemm(self, node: onnx.NodeProto, a: dict[str, Any]) -> fx.Node:
        x = self.dyn(node)
        if a.get("transA", 0):
            raise _Refuse("Gemm with transA=1 is not supported")
        w = self.need_const(node, 1, "B")
        if w.ndim != 2:
            raise _Refuse(f"Gemm weight of rank {w.ndim}")
        weight = w if a.get("transB", 0) else w.T
        alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
        if alpha != 1.0:
            weight = (weight.astype(np.float32) * np.float32(alpha))
        c = self.opt_const(node, 2, "C")
        bias = None
        if c is not None:
            if c.size not in (1, weight.shape[0]) or (c.ndim == 2 and c.shape[0] != 1):
                raise _Refuse(f"Gemm C of shape {c.shape} is not one value per output")
            bias = np.broadcast_to(c.reshape(-1).astype(np.float32),
                                   (weight.shape[0],)) * np.float32(beta)
        return self._linear(node, x, weight, bias)

    def op_MatMul(self, node: onnx.NodeProto, a: dict[str, Any]) -> fx.Node:
        x = self.dyn(node)
        w = self.need_const(node, 1, "the second operand")
        if w.ndim != 2:
            raise _Refuse(f"MatMul by a constant of rank {w.ndim} (rank 2 only)")
        return self._linear(node, x, w.T, None)

    def _binary(self, node: onnx.NodeProto, fn: Callable[..., Any]) -> fx.Node:
        va, vb = (self.values[i] for i in node.input[:2])
        if isinstance(va, np.ndarray) and isinstance(vb, np.ndarray):
            raise _Refuse("both operands are constants (constant folding is not done)")
        if fn is operator.add and isinstance(va, np.ndarray):
            va, vb = vb, va
        if isinstance(va, fx.Node) and isinstance(vb, fx.Node):
            return self.graph.call_function(fn, (va, vb))
        if fn is operator.add and isinstance(va, fx.Node) and isinstance(vb, np.ndarray):
            lin = self.bias_free.get(va)
            if lin is not None and self.consumers.get(node.input[0], 0) + \
                    self.consumers.get(node.input[1], 0) >= 1 and \
                    vb.size == lin.out_features and vb.reshape(-1).shape[0] == \
                    lin.out_features and self._consumed_once(va):
                lin.bias = nn.Parameter(_f32(vb.reshape(-1)))
                del self.bias_free[va]
                return va
        const: Any
        const, node_arg = (vb, va) if isinstance(vb, np.ndarray) else (va, vb)
        c: Any = float(const.reshape(-1)[0]) if const.size == 1 else \
            self.buffer(node.name or node.op_type, const)
        args: Any = (node_arg, c) if const is vb else (c, node_arg)
        return self.graph.call_function(fn, args)

    def _consumed_once(self, n: fx.Node) -> bool:
        names = [k for k, v in self.values.items() if v is n]
        return sum(self.consumers.get(k, 0) for k in names) == 1

    def op_Add(self, node: onnx.NodeProto, a: dict[str, Any]) -> fx.Node:
        return self._binary(node, operator.add)

    def op_Sub(self, node: onnx.NodeProto, a: dict[str, Any]) -> fx.Node:
        return self._binary(node, operator.sub)

    def op_Mul(self, node: onnx.NodeProto, a: dict[str, Any]) -> fx.Node:
        if all(isinstance(self.values[i], fx.Node) for i in node.input[:2]):
            raise _Refuse("product of two input-dependent tensors is not piecewise-linear",
                          RefusalKind.OUTSIDE_CLASS)
        return self._binary(node, operator.mul)

    def op_Div(self, node: onnx.NodeProto, a: dict[str, Any]) -> fx.Node:
        if not isinstance(self.values[node.input[1]], np.ndarray):
            raise _Refuse("division by an input-dependent tensor", RefusalKind.OUTSIDE_CLASS)
        return self._binary(node, operator.truediv)

    def op_BatchNormalization(self, node: onnx.NodeProto, a: dict[str, Any]) -> fx.Node:
        x = self.dyn(node)
        if a.get("training_mode", 0):
            raise _Refuse("BatchNormalization in training mode")
        scale, bias, mean, var = (self.need_const(node, i, w) for i, w in
                                  ((1, "scale"), (2, "bias"), (3, "mean"), (4, "var")))
        r = self.rank(node.input[0])
        cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}.get(r)
        if cls is None:
            raise _Refuse(f"BatchNormalization of a rank-{r} tensor")
        bn = cls(int(scale.size), eps=float(a.get("epsilon", 1e-5)))
        with torch.no_grad():
            bn.weight.copy_(_f32(scale))
            bn.bias.copy_(_f32(bias))
            bn.running_mean = _f32(mean)
            bn.running_var = _f32(var)
        bn.eval()
        return self.add_module(node, bn, x)

    # ------------------------------------------------------------------ activations
    def op_Relu(self, node: onnx.NodeProto, a: dict[str, Any]) -> fx.Node:
        return self.add_module(node, nn.ReLU(), self.dyn(node))

    def op_LeakyRelu(self, node: onnx.NodeProto, a: dict[str, Any]) -> fx.Node:
        return self.add_module(node, nn.LeakyReLU(float(a.get("alpha", 0.01))), self.dyn(node))

    def op_Clip(self, node: onnx.NodeProto, a: dict[str, Any]) -> fx.Node:
        x = self.dyn(node)
        lo = self.opt_const(node, 1, "min")
        hi = self.opt_const(node, 2, "max")
        if "min" in a:
            lo = np.asarray(a["min"], np.float32)
        if "max" in a:
            hi = np.asarray(a["max"], np.float32)
        if lo is not None and lo.size != 1 or hi is not None and hi.size != 1:
            raise _Refuse("Clip bounds must be scalars")
        if lo is not None and hi is not None:
            lv, hv = float(lo.reshape(-1)[0]), float(hi.reshape(-1)[0])
            m = nn.ReLU6() if (lv, hv) == (0.0, 6.0) else nn.Hardtanh(lv, hv)
            return self.add_module(node, m, x)
        if lo is None and hi is None:
            return x
        kw: dict[str, Any] = {"min": float(lo.reshape(-1)[0])} if lo is not None else \
            {"max": float(hi.reshape(-1)[0])}  # type: ignore[union-attr]
        return self.graph.call_function(torch.clamp, (x,), dict(kw))

    # ------------------------------------------------------------------ pooling
    def op_MaxPool(self, node: onnx.NodeProto, a: dict[str, Any]) -> fx.Node:
        x = self.dyn(node)
        kernel = list(a["kernel_shape"])
        n = len(kernel)
        strides = list(a.get("strides", [1] * n))
        dil = list(a.get("dilations", [1] * n))
        spatial = self.shapes.get(node.input[0], (None,) * (n + 2))[2:]
        begin, end = self._pads(node, a, n, spatial, kernel, strides, dil)
        if begin != end:
            raise _Refuse(f"MaxPool with asymmetric pads {begin + end}")
        if n not in (1, 2, 3):
            raise _Refuse(f"{n}-d MaxPool")
        cls = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)[n - 1]
        return self.add_module(node, cls(_t(kernel), _t(strides), _t(begin),
                                         _t(dil), ceil_mode=bool(a.get("ceil_mode", 0))), x)

    def op_AveragePool(self, node: onnx.NodeProto, a: dict[str, Any]) -> fx.Node:
        x = self.dyn(node)
        kernel = list(a["kernel_shape"])
        n = len(kernel)
        strides = list(a.get("strides", [1] * n))
        dil = list(a.get("dilations", [1] * n))
        if any(d != 1 for d in dil):
            raise _Refuse("dilated AveragePool")
        spatial = self.shapes.get(node.input[0], (None,) * (n + 2))[2:]
        begin, end = self._pads(node, a, n, spatial, kernel, strides, dil)
        if begin != end:
            raise _Refuse(f"AveragePool with asymmetric pads {begin + end}")
        ceil = bool(a.get("ceil_mode", 0))
        if ceil:
            raise _Refuse("AveragePool with ceil_mode=1 (torch and ONNX differ at the edge)")
        cls = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)[n - 1]
        return self.add_module(node, cls(_t(kernel), _t(strides), _t(begin),
                                         count_include_pad=bool(a.get("count_include_pad", 0))),
                               x)

    def op_GlobalAveragePool(self, node: onnx.NodeProto, a: dict[str, Any]) -> fx.Node:
        r = self.rank(node.input[0])
        cls = {3: nn.AdaptiveAvgPool1d, 4: nn.AdaptiveAvgPool2d, 5: nn.AdaptiveAvgPool3d}.get(r)
        if cls is None:
            raise _Refuse(f"GlobalAveragePool of a rank-{r} tensor")
        return self.add_module(node, cls(1), self.dyn(node))

    def op_ReduceMean(self, node: onnx.NodeProto, a: dict[str, Any]) -> fx.Node:
        x = self.dyn(node)
        r = self.rank(node.input[0])
        axes_c = self.opt_const(node, 1, "axes") if len(node.input) > 1 else None
        axes = list(a["axes"]) if "axes" in a else (
            [] if axes_c is None else [int(v) for v in axes_c.reshape(-1)])
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(r))
        axes = sorted(int(v) % r for v in axes)
        if 0 in axes:
            raise _Refuse("ReduceMean over the batch dimension")
        return self.graph.call_function(torch.mean, (x,), {"dim": tuple(axes),
                                                           "keepdim": bool(a.get("keepdims", 1))})

    # ------------------------------------------------------------------ shape arithmetic
    def _const_in(self, node: onnx.NodeProto) -> np.ndarray:
        v = self.values.get(node.input[0])
        if not isinstance(v, np.ndarray):
            raise _Refuse(f"{node.op_type} of an input-dependent tensor (only shape "
                          "arithmetic on constants is supported)")
        return v

    def op_Shape(self, node: onnx.NodeProto, a: dict[str, Any]) -> np.ndarray:
        v = self.values[node.input[0]]
        if isinstance(v, np.ndarray):
            dims: list[Any] = list(v.shape)
        else:
            src = self.shapes.get(node.input[0])
            if src is None:
                raise _Refuse("Shape of a tensor of unknown shape")
            if any(d is None for d in src[1:]):
                raise _Refuse("Shape of a tensor with dynamic non-batch dimensions")
            dims = [BATCH if d is None else int(d) for d in src]
        start, end = int(a.get("start", 0)), a.get("end")
        dims = dims[start:] if end is None else dims[start:int(end)]
        if any(d is BATCH for d in dims):
            return np.asarray(dims, dtype=object)
        return np.asarray(dims, dtype=np.int64)

    def op_Squeeze(self, node: onnx.NodeProto, a: dict[str, Any]) -> np.ndarray:
        v = self._const_in(node)
        axes = self.opt_const(node, 1, "axes")
        if axes is None:
            return np.squeeze(v)
        return np.squeeze(v, axis=tuple(int(i) for i in axes.reshape(-1)))

    def op_Unsqueeze(self, node: onnx.NodeProto, a: dict[str, Any]) -> np.ndarray:
        v = self._const_in(node)
        axes = sorted(int(i) % (v.ndim + len(self.need_const(node, 1, "axes").reshape(-1)))
                      for i in self.need_const(node, 1, "axes").reshape(-1))
        for ax in axes:
            v = np.expand_dims(v, ax)
        return v

    def op_Gather(self, node: onnx.NodeProto, a: dict[str, Any]) -> np.ndarray:
        v = self._const_in(node)
        idx = self.need_const(node, 1, "the indices")
        return np.take(v, idx.astype(np.int64), axis=int(a.get("axis", 0)))

    def op_Cast(self, node: onnx.NodeProto, a: dict[str, Any]) -> np.ndarray:
        v = self._const_in(node)
        to = np.dtype(helper.tensor_dtype_to_np_dtype(int(a["to"])))
        if v.dtype == object:
            if to.kind not in "iu":
                raise _Refuse("Cast of a batch-dependent shape to a non-integer type")
            return v
        return v.astype(to)

    # ------------------------------------------------------------------ wiring
    def op_Flatten(self, node: onnx.NodeProto, a: dict[str, Any]) -> Any:
        v = self.values[node.input[0]]
        axis = int(a.get("axis", 1))
        if isinstance(v, np.ndarray):
            axis %= max(v.ndim, 1)
            return v.reshape(int(np.prod(v.shape[:axis])), -1)
        r = self.rank(node.input[0])
        axis = axis % r if r else 0
        if axis == 0:
            raise _Refuse("Flatten with axis=0 merges the batch dimension")
        out = self.graph.call_function(torch.flatten, (v, axis))
        if axis > 1:
            out = self.graph.call_function(torch.flatten, (out, 0, axis - 1))
        return out

    def op_Reshape(self, node: onnx.NodeProto, a: dict[str, Any]) -> Any:
        raw = list(self.need_const(node, 1, "the target shape").reshape(-1))
        v = self.values[node.input[0]]
        if any(s is BATCH for s in raw):
            if isinstance(v, np.ndarray):
                raise _Refuse("Reshape of a constant to a batch-dependent shape")
            if a.get("allowzero", 0) == 0 and any(s is not BATCH and int(s) == 0 for s in raw):
                raise _Refuse(f"Reshape to {raw} copying dimensions")
            if self.batch_size is None:
                self.batch_size = self.graph.call_method("size", (self.input_node, 0))
            final: Any = tuple(self.batch_size if s is BATCH else int(s) for s in raw)
            return self.graph.call_function(torch.reshape, (v, final))
        shape = [int(s) for s in raw]
        if isinstance(v, np.ndarray):
            if a.get("allowzero", 0) == 0:
                shape = [v.shape[i] if s == 0 else s for i, s in enumerate(shape)]
            return v.reshape(shape)
        src = self.shapes.get(node.input[0])
        if src is None:
            raise _Refuse("Reshape of a tensor of unknown shape")
        target: list[int | None] = []
        for i, s in enumerate(shape):
            if s == 0 and not a.get("allowzero", 0):
                if i >= len(src):
                    raise _Refuse(f"Reshape copies dimension {i} of a rank-{len(src)} tensor")
                target.append(src[i])
            else:
                target.append(s)
        unknown = [i for i, s in enumerate(target) if s is None]
        if len(unknown) > 1 or (unknown and -1 in target):
            raise _Refuse(f"Reshape to {shape} with more than one unknown dimension")
        final = [-1 if s is None else int(s) for s in target]
        if src and src[0] is None and -1 not in final and final and final[0] == 1:
            final[0] = -1  # the dynamic batch dimension (traced at 1)
        return self.graph.call_function(torch.reshape, (v, tuple(final)))

    def op_Transpose(self, node: onnx.NodeProto, a: dict[str, Any]) -> Any:
        v = self.values[node.input[0]]
        if isinstance(v, np.ndarray):
            return np.transpose(v, a.get("perm"))
        perm = list(a.get("perm", reversed(range(self.rank(node.input[0])))))
        if perm[0] != 0:
            raise _Refuse(f"Transpose {perm} moves the batch dimension")
        return self.graph.call_function(torch.permute, (v, tuple(perm)))

    def op_Concat(self, node: onnx.NodeProto, a: dict[str, Any]) -> Any:
        vals = [self.values[i] for i in node.input]
        axis = int(a["axis"])
        if all(isinstance(v, np.ndarray) for v in vals):
            return np.concatenate(vals, axis=axis)  # type: ignore[arg-type]
        if not all(isinstance(v, fx.Node) for v in vals):
            raise _Refuse("Concat of constant and input-dependent tensors")
        r = self.rank(node.input[0])
        axis %= r
        if axis == 0:
            raise _Refuse("Concat along the batch dimension")
        tensors: Any = list(vals)
        return self.graph.call_function(torch.cat, (tensors, axis))

    def op_Resize(self, node: onnx.NodeProto, a: dict[str, Any]) -> fx.Node:
        x = self.dyn(node)
        mode = a.get("mode", b"nearest")
        mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        ctm = a.get("coordinate_transformation_mode", b"half_pixel")
        ctm = ctm.decode() if isinstance(ctm, bytes) else str(ctm)
        nmode = a.get("nearest_mode", b"round_prefer_floor")
        nmode = nmode.decode() if isinstance(nmode, bytes) else str(nmode)
        if mode != "nearest":
            raise _Refuse(f"Resize mode '{mode}' (nearest only)")
        scales = self.opt_const(node, 2, "scales")
        sizes = self.opt_const(node, 3, "sizes")
        src = self.shapes.get(node.input[0])
        if src is None or any(s is None for s in src[1:]):
            raise _Refuse("Resize of a tensor of unknown shape")
        if scales is None or scales.size == 0:
            if sizes is None:
                raise _Refuse("Resize without scales or sizes")
            scales = np.asarray([sz / s if s else 1.0 for sz, s in
                                 zip(sizes.reshape(-1)[1:], src[1:], strict=True)])
            scales = np.concatenate([[1.0], scales])
        sc = [float(s) for s in scales.reshape(-1)]
        if sc[:2] != [1.0, 1.0] or any(s != int(s) or s < 1 for s in sc[2:]):
            raise _Refuse(f"Resize scales {sc} (integer upsampling of spatial dims only)")
        if ctm != "asymmetric" or nmode != "floor":
            raise _Refuse(f"Resize nearest with coordinate_transformation_mode '{ctm}' and "
                          f"nearest_mode '{nmode}' (only 'asymmetric' with 'floor', which is "
                          "torch's nearest)")
        return self.add_module(node, nn.Upsample(scale_factor=tuple(sc[2:]), mode="nearest"), x)


def _op_refusal(node: onnx.NodeProto) -> str | None:
    if node.domain not in ("", "ai.onnx"):
        return (f"custom-domain operator '{node.domain}.{node.op_type}': certcompress imports "
                "standard ONNX operators only and never runs custom code")
    if node.op_type not in SUPPORTED_OPS:
        return (f"ONNX op '{node.op_type}' is not supported by the importer (supported: "
                f"{', '.join(sorted(SUPPORTED_OPS))})")
    return None


def scan_ops(model: onnx.ModelProto, name: str) -> None:
    """Refuse, in one :class:`UnsupportedModelError`, every node of ``model`` whose op
    type or domain the importer does not convert (before the checker, which cannot
    infer shapes through unknown ops)."""
    offenders = []
    for node in model.graph.node:
        why = _op_refusal(node)
        if why is not None:
            offenders.append(UnsupportedNode(
                node=node.name or f"<unnamed {node.op_type}>", op="onnx",
                target=node.op_type, reason=why, kind=RefusalKind.NO_ADAPTER,
                group=node.op_type if not node.domain else f"{node.domain}.{node.op_type}"))
    if offenders:
        raise UnsupportedModelError(
            f"ONNX model '{name}' has {len(offenders)} node(s) whose operator the importer "
            "does not support:", offenders)


def to_module(model: onnx.ModelProto, name: str) -> fx.GraphModule:
    """``model`` (checked, shape-inferred) as an eval-mode ``GraphModule`` with
    ``input_shape`` (batch 1 for a dynamic batch dimension), ``input_name`` and
    ``source`` attributes; raises :class:`UnsupportedModelError` naming every node the
    importer does not convert."""
    gm, input_name, input_shape = _Builder(model, name).run()
    setattr(gm, DECLARED_SHAPE_ATTR, input_shape)  # read by domain.declared_input_shape
    setattr(gm, "input_name", input_name)  # noqa: B010
    setattr(gm, "source", name)  # noqa: B010
    return gm.eval()
