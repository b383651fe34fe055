"""W8A8 static quantization export: int8 weights (per channel) and uint8 activations
in the QDQ layout onnxruntime fuses into int8 kernels (QLinearConv, QGemm, QLinearAdd).

:func:`export_w8a8`:

1. folds eval BatchNorm into the convolution before it (``torch.fx`` fusion), so the
   exported graph is the optimized one;
2. quantizes the folded model's weights to the symmetric per-channel 8-bit grid
   (:func:`certcompress.compress.quantization.quantization_grid`) and, unless
   ``certify=False``, certifies them against the folded float model
   (:func:`certcompress.quantize`);
3. exports the weight-quantized model to ONNX and runs onnxruntime's
   ``quantize_static`` on it (QDQ, per-channel int8 weights, uint8 activations with
   MinMax ranges from ``calibration``);
4. replaces every weight's codes and scale by the certified grid, and checks in
   onnxruntime that each dequantized weight equals the certified weight bit for bit.

What the certificate covers. It bounds ``||f(x) - f_w(x)||_1`` over its domain, where
``f`` is the BatchNorm-folded float model and ``f_w`` the same model with the 8-bit
weights of the file, in exact arithmetic. It does **not** cover the rounding of
activations to uint8, the clipping of activations outside the calibrated ranges, nor the
int32 rounding of biases (scale ``s_x * s_w``) that the int8 kernels add: the
certificate's notes say so, and so does the metadata of the written file
(``certcompress.w8a8.covers``). BatchNorm folding itself changes the float function by
float rounding only; the certificate is about the folded model, which the result
returns.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import Tensor, nn

from .._io import atomic_path
from .._version import __version__
from ..certificate import Certificate
from ..compress.quantization import QuantConfig, quantization_grid, quantize
from ..domain import InputDomain
from ..errors import ConfigurationError, VerificationError
from .onnx_export import MIN_OPSET, to_onnx
from .qdq import as_grids, dequantized_weights

__all__ = ["W8A8Export", "export_w8a8", "fold_batchnorm", "COVERS"]

#: what a W8A8 certificate covers (also written to the file's metadata)
COVERS = ("weight rounding to the file's int8 per-channel grid, relative to the "
          "BatchNorm-folded float model, in exact arithmetic; NOT covered: rounding of "
          "activations to 8 bits, clipping of activations outside the calibrated ranges, "
          "int32 rounding of biases by the int8 kernels")


@dataclass(frozen=True)
class W8A8Export:
    """The result of :func:`export_w8a8`: the written file, the BatchNorm-folded float
    model ``folded`` and its weight-quantized version ``quantized`` (the certificate's
    original and compressed models), the ``certificate`` (None with
    ``certify=False``), the file's size in bytes and what the certificate covers."""

    path: Path
    folded: nn.Module
    quantized: nn.Module
    certificate: Certificate | None
    size_bytes: int
    covers: str = COVERS
    activation_type: str = "uint8"
    quantized_weights: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of the eval-mode ``model`` with every BatchNorm that follows a convolution
    folded into it (``torch.fx`` symbolic trace); ``model`` is not modified."""
    from torch.fx.experimental.optimization import fuse

    if model.training:
        raise ConfigurationError("the model is in training mode; call model.eval() first")
    try:
        folded: nn.Module = fuse(model, inplace=False)
    except Exception as exc:
        raise ConfigurationError(
            f"cannot fold BatchNorm in {type(model).__name__}: torch.fx cannot trace it "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    return folded.eval()


class _Reader:
    """onnxruntime's CalibrationDataReader over a float32 array, one sample at a time."""

    def __init__(self, name: str, data: np.ndarray, batch: int = 8) -> None:
        self.name = name
        self.items: Iterator[np.ndarray] = iter(
            [data[i:i + batch] for i in range(0, len(data), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self.items, None)
        return None if x is None else {self.name: x}


def _input_name(proto: onnx.ModelProto) -> str:
    inits = {t.name for t in proto.graph.initializer}
    names = [i.name for i in proto.graph.input if i.name not in inits]
    if len(names) != 1:
        raise ConfigurationError(f"W8A8 export needs a model of one input, got {names}")
    return names[0]


def _patch_weights(proto: onnx.ModelProto, certified: dict[str, Tensor],
                   grids: list[Any]) -> int:
    """Replace the codes and scale of every quantized weight by the certified grid."""
    by_param = {g.parameter_name: g for g in grids}
    inits = {t.name: t for t in proto.graph.initializer}
    producers = {o: n for n in proto.graph.node for o in n.output}
    patched = 0
    for node in proto.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        dq = producers.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        codes_t, scale_t = inits.get(dq.input[0]), inits.get(dq.input[1])
        if codes_t is None or scale_t is None:
            continue
        codes = numpy_helper.to_array(codes_t)
        scale = numpy_helper.to_array(scale_t)
        name = dq.input[0].removesuffix("_quantized")
        if name not in by_param:
            name = next((p for p, g in by_param.items() if tuple(g.codes.shape) == codes.shape
                         and _same_weight(codes, scale, certified[p], node.op_type)), None)
        if name is None:
            continue
        g = by_param.pop(name)
        new_codes = g.codes.numpy().astype(np.int8)
        new_scale = g.scale.to(torch.float32).numpy().reshape(scale.shape)
        codes_t.CopyFrom(numpy_helper.from_array(new_codes, codes_t.name))
        scale_t.CopyFrom(numpy_helper.from_array(new_scale, scale_t.name))
        patched += 1
    if by_param:
        raise VerificationError(f"check 'w8a8-weights' failed: no int8 weight in the "
                                f"quantized graph matches {sorted(by_param)}")
    return patched


def _same_weight(codes: np.ndarray, scale: np.ndarray, w: Tensor, op: str) -> bool:
    """Whether onnxruntime's codes*scale are (within a scale step) the weight ``w``."""
    if op != "Conv" or codes.shape != tuple(w.shape):
        return bool(codes.shape == tuple(w.shape))
    s = scale.reshape((-1,) + (1,) * (codes.ndim - 1)) if scale.ndim else scale
    approx = codes.astype(np.float32) * s
    step = float(np.max(np.abs(s)))
    return bool(np.max(np.abs(approx - w.numpy())) <= step)


def export_w8a8(model: nn.Module, path: str | os.PathLike[str], *, calibration: Tensor,
                domain: InputDomain | None = None, certify: bool = True,
                input_shape: tuple[int, ...] | None = None, search_steps: int = 10,
                search_restarts: int = 2, seed: int = 0,
                opset: int = MIN_OPSET) -> W8A8Export:
    """Write ``model`` as a W8A8 QDQ ONNX file at ``path`` (module docstring).

    ``calibration``: float32 inputs (batch first) from which onnxruntime's MinMax
    calibration takes the activation ranges. ``domain`` (default: the box spanned by
    ``calibration``) is the certificate's input domain. The returned certificate (None
    with ``certify=False``) covers weight rounding only, and says so in its notes.
    """
    if not isinstance(model, nn.Module):
        raise ConfigurationError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(calibration, Tensor) or calibration.dim() < 2 or len(calibration) < 1:
        raise ConfigurationError("calibration must be a float tensor of inputs, batch first")
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    x_cal = calibration.detach().to(torch.float32).cpu()
    shape = tuple(input_shape) if input_shape is not None else (1,) + tuple(x_cal.shape[1:])
    folded = fold_batchnorm(model)
    cfg = QuantConfig.uniform(folded, 8, "per-channel")
    grid = quantization_grid(folded, cfg)
    cert: Certificate | None = None
    if certify:
        dom = domain if domain is not None else InputDomain.box(
            x_cal.amin(0, keepdim=True), x_cal.amax(0, keepdim=True), shape=shape,
            description="the box spanned by the calibration inputs")
        qmodel, cert = quantize(folded, cfg, domain=dom, search_steps=search_steps,
                                search_restarts=search_restarts, seed=seed)
        note = f"W8A8 export: this certificate covers {COVERS}."
        cert = replace(cert, notes=tuple(cert.notes) + (note,))
    else:
        qmodel = grid.apply(folded)
    grids = as_grids(grid)
    certified = {k: v.detach().to(torch.float32) for k, v in qmodel.state_dict().items()}
    proto = to_onnx(qmodel, shape, opset)
    name = _input_name(proto)
    target = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        float_path = Path(tmp) / "float.onnx"
        q_path = Path(tmp) / "w8a8.onnx"
        onnx.save_model(proto, str(float_path))
        quantize_static(str(float_path), str(q_path), _Reader(name, x_cal.numpy()),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
        qproto = onnx.load(str(q_path))
    patched = _patch_weights(qproto, certified, grids)
    deq = dequantized_weights(qproto)
    for g in grids:
        want = certified[g.parameter_name].numpy()
        if not any(v.shape == want.shape and np.array_equal(v, want) for v in deq.values()):
            raise VerificationError(f"check 'w8a8-weights' failed: the file's dequantized "
                                    f"'{g.parameter_name}' is not the certified weight")
    meta = {"certcompress.w8a8.covers": COVERS,
            "certcompress.w8a8.activation_type": "uint8",
            "certcompress.w8a8.version": __version__}
    if cert is not None:
        meta["certcompress.w8a8.certificate"] = cert.to_json(indent=None)
    for k, v in meta.items():
        entry = qproto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(qproto)
    with atomic_path(target) as tmp_target:
        onnx.save_model(qproto, str(tmp_target))
    return W8A8Export(path=target, folded=folded, quantized=qmodel, certificate=cert,
                      size_bytes=target.stat().st_size, quantized_weights=patched,
                      notes=(f"certificate covers {COVERS}",))
