"""Quantized weights in QDQ form: integer codes + ``DequantizeLinear``, from the grid
that was certified.

A :class:`WeightGrid` says ``weight == codes * scale`` (float32, zero point 0, per
channel along ``axis`` or per tensor). :func:`apply_grids` first checks that identity
bit for bit against the weights of the model the certificate is about, then replaces the
float initializer ``W`` of the ONNX graph by the codes (int4, int8 or int16 storage), a
float32 scale and a zero point, and a ``DequantizeLinear`` node whose output is named
``W`` again, so every consumer is unchanged. ``DequantizeLinear`` computes
``float(code - 0) * scale``, one correctly rounded float32 product, which is how the
certified weights were formed: the dequantized ONNX weights are the certified weights,
and :func:`dequantized_weights` checks it by running the ``DequantizeLinear`` nodes in
onnxruntime.

Only weights are quantized; activations stay float (a certificate covers changed
weights, not quantized activations), so the file is smaller and the arithmetic is
float32 as before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import ml_dtypes
import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import Tensor

from ..errors import ConfigurationError, VerificationError
from . import _runtime

__all__ = ["WeightGrid", "QuantizedInitializer", "GridsLike", "as_grids", "apply_grids",
           "dequantized_weights", "storage_for", "grid_values"]

MS_DOMAIN = "com.microsoft"


@dataclass(frozen=True)
class WeightGrid:
    """The quantization grid of the weight of one module.

    ``module``: qualified module name (the parameter is ``f"{module}.weight"``, or
    ``parameter`` when given); ``codes``: integer codes, the weight's shape, in
    ``[-2**(bits-1), 2**(bits-1) - 1]``; ``scale``: float32, shape ``()`` (per tensor) or
    ``(weight.shape[axis],)`` (per channel along ``axis``); zero point 0 (symmetric
    grids contain 0, so rounding never flips a sign). The weight is
    ``codes.float() * scale`` in float32.
    """

    module: str
    scale: Tensor
    codes: Tensor
    axis: int | None
    bits: int
    zero_point: int = 0
    parameter: str | None = None

    @property
    def parameter_name(self) -> str:
        return self.parameter or (f"{self.module}.weight" if self.module else "weight")


@dataclass(frozen=True)
class QuantizedInitializer:
    """One replaced initializer (JSON-able, recorded in the file's export info)."""

    name: str
    bits: int
    storage: str          # "int4", "int8", "int16" or "float32" (not stored as integers)
    domain: str           # DequantizeLinear's domain ("" is the standard one)
    axis: int | None
    elements: int
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


GridsLike = Any
"""What ``export_onnx(grids=...)`` accepts: a :class:`~certcompress.compress.quantization.
grid.QuantGrid` (the quantization package's record of a certified model), a mapping or a
sequence of its ``QuantizedWeights``, or of :class:`WeightGrid`."""


def as_grids(grids: GridsLike) -> list[WeightGrid]:
    """Normalize ``grids`` (see :data:`GridsLike`) to a list of :class:`WeightGrid`."""
    if grids is None:
        return []
    from ..compress.quantization.grid import QuantGrid
    from ..compress.quantization.quantizers import QuantizedWeights

    if isinstance(grids, QuantGrid):
        items: Any = list(grids.tensors.values())
    elif isinstance(grids, Mapping):
        items = list(grids.values())
    elif isinstance(grids, (list, tuple)):
        items = list(grids)
    else:
        raise ConfigurationError(f"grids must be a QuantGrid, a mapping or a list of "
                                 f"grids, got {type(grids).__name__}")
    out = []
    for g in items:
        if isinstance(g, WeightGrid):
            out.append(g)
        elif isinstance(g, QuantizedWeights):
            out.append(WeightGrid(module=g.layer, scale=g.scale, codes=g.codes, axis=g.axis,
                                  bits=g.bits, zero_point=g.zero_point, parameter=g.param))
        else:
            raise ConfigurationError(f"grids: expected WeightGrid or QuantizedWeights, got "
                                     f"{type(g).__name__}")
    return out


def storage_for(bits: int, opset: int) -> tuple[str, str, str]:
    """``(storage, DequantizeLinear domain, note)`` for a grid of ``bits`` bits: the
    narrowest integer type onnxruntime dequantizes exactly at ``opset`` (int4 and int16
    are standard from opset 21 and live in ``com.microsoft`` below; probed, not assumed),
    else a wider one, else float32 (the weights are then stored unquantized)."""
    wanted = "int4" if bits <= 4 else "int8" if bits <= 8 else "int16"
    candidates = {"int4": ["int4", "int8"], "int8": ["int8"], "int16": ["int16"]}[wanted]
    for storage in candidates:
        domains = [""] if storage == "int8" else (
            ["", MS_DOMAIN] if opset >= 21 else [MS_DOMAIN])
        for domain in domains:
            if _runtime.dq_supported(storage, domain, opset):
                note = "" if storage == wanted else (
                    f"{wanted} DequantizeLinear is not supported by onnxruntime "
                    f"{_runtime.ort_version()} at opset {opset}; stored as {storage}")
                return storage, domain, note
    return "float32", "", (f"onnxruntime {_runtime.ort_version()} has no {wanted} "
                           f"DequantizeLinear at opset {opset}; weights stored as float32")


_NUMPY = {"int4": ml_dtypes.int4, "int8": np.int8, "int16": np.int16}


def grid_values(grid: WeightGrid) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(codes as int64, scale as float32)``; raises ConfigurationError."""
    name = grid.parameter_name
    if isinstance(grid.bits, bool) or not isinstance(grid.bits, int) or \
            not 2 <= grid.bits <= 16:
        raise ConfigurationError(f"grid of '{name}': bits must be an integer in [2, 16], "
                                 f"got {grid.bits!r}")
    if grid.zero_point != 0:
        raise ConfigurationError(f"grid of '{name}': zero point {grid.zero_point} is not "
                                 "supported (symmetric grids only: zero point 0)")
    codes_t = torch.as_tensor(grid.codes).detach().cpu()
    if codes_t.is_floating_point():
        if not bool(torch.isfinite(codes_t).all()) or \
                not bool((codes_t == torch.round(codes_t)).all()):
            raise ConfigurationError(f"grid of '{name}': codes are not integers")
    codes = codes_t.to(torch.int64).numpy()
    lo, hi = -(2 ** (grid.bits - 1)), 2 ** (grid.bits - 1) - 1
    if codes.size and (codes.min() < lo or codes.max() > hi):
        raise ConfigurationError(f"grid of '{name}': codes span [{codes.min()}, {codes.max()}],"
                                 f" outside the {grid.bits}-bit range [{lo}, {hi}]")
    scale = torch.as_tensor(grid.scale).detach().cpu()
    if scale.dtype != torch.float32:
        raise ConfigurationError(f"grid of '{name}': scale must be float32 (the weights are "
                                 f"code * scale in float32), got {scale.dtype}")
    s = scale.numpy()
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ConfigurationError(f"grid of '{name}': scales must be finite and positive")
    if grid.axis is None:
        if s.size != 1:
            raise ConfigurationError(f"grid of '{name}': axis None (per tensor) needs one "
                                     f"scale, got shape {tuple(s.shape)}")
        s = s.reshape(())
    else:
        axis = grid.axis
        if not -codes.ndim <= axis < codes.ndim or s.shape != (codes.shape[axis],):
            raise ConfigurationError(f"grid of '{name}': per-channel scale of shape "
                                     f"{tuple(s.shape)} does not fit axis {axis} of the "
                                     f"codes' shape {tuple(codes.shape)}")
    return codes, s


def _dequantize(codes: np.ndarray, scale: np.ndarray, axis: int | None) -> np.ndarray:
    if axis is None:
        return codes.astype(np.float32) * scale
    shape = [1] * codes.ndim
    shape[axis] = -1
    return codes.astype(np.float32) * scale.reshape(shape)


def _check_grid(grid: WeightGrid, codes: np.ndarray, scale: np.ndarray,
                weight: Tensor) -> None:
    name = grid.parameter_name
    w = weight.detach().cpu()
    if w.dtype != torch.float32:
        raise ConfigurationError(f"'{name}' is {w.dtype}; QDQ export needs float32 weights")
    w_np = w.contiguous().numpy()
    if w_np.shape != codes.shape:
        raise VerificationError(f"check 'grid' failed: the codes of '{name}' have shape "
                                f"{codes.shape}, the certified weight {w_np.shape}")
    deq = _dequantize(codes, scale, grid.axis)
    same = deq.view(np.uint32) == w_np.view(np.uint32)
    if not same.all():
        bad = int((~same).sum())
        diff = float(np.max(np.abs(deq.astype(np.float64) - w_np.astype(np.float64))))
        raise VerificationError(
            f"check 'grid' failed: codes * scale differ from the certified weight '{name}' "
            f"in {bad} of {same.size} entries (max |difference| {diff:.3g}): the grid is not "
            "the one that was certified")


def apply_grids(model: onnx.ModelProto, grids: Sequence[WeightGrid],
                weights: Mapping[str, Tensor], opset: int) -> list[QuantizedInitializer]:
    """Replace each grid's float initializer in ``model`` (in place) by its QDQ form.

    ``weights`` are the certified float32 weights by parameter name; each grid must
    reproduce its weight bit for bit (else :class:`VerificationError`, check ``grid``).
    """
    graph = model.graph
    inits = {t.name: i for i, t in enumerate(graph.initializer)}
    graph_inputs = {i.name for i in graph.input}
    used = set(inits) | {o for n in graph.node for o in n.output} | graph_inputs
    seen: set[str] = set()
    records: list[QuantizedInitializer] = []
    new_inits: list[TensorProto] = []
    new_nodes: list[onnx.NodeProto] = []
    drop: set[str] = set()
    for grid in grids:
        name = grid.parameter_name
        if name in seen:
            raise ConfigurationError(f"two grids for the parameter '{name}'")
        seen.add(name)
        if name not in weights:
            raise ConfigurationError(f"grid for '{name}': the compressed model has no such "
                                     "parameter")
        codes, scale = grid_values(grid)
        _check_grid(grid, codes, scale, weights[name])
        if name not in inits or name in graph_inputs:
            raise VerificationError(f"check 'grid' failed: the exported graph has no "
                                    f"initializer '{name}' to quantize")
        storage, domain, note = storage_for(grid.bits, opset)
        axis = None if grid.axis is None else grid.axis % codes.ndim
        records.append(QuantizedInitializer(name, grid.bits, storage, domain, axis,
                                            int(codes.size), note))
        if storage == "float32":
            continue
        qn, sn, zn = (_fresh(f"{name}_{suffix}", used) for suffix in
                      ("quantized", "scale", "zero_point"))
        dtype = _NUMPY[storage]
        new_inits.append(numpy_helper.from_array(codes.astype(dtype), qn))
        new_inits.append(numpy_helper.from_array(np.ascontiguousarray(scale, np.float32), sn))
        new_inits.append(numpy_helper.from_array(np.zeros(scale.shape, dtype=dtype), zn))
        kw: dict[str, Any] = {} if axis is None else {"axis": axis}
        new_nodes.append(helper.make_node("DequantizeLinear", [qn, sn, zn], [name],
                                          name=_fresh(f"{name}_dequantize", used),
                                          domain=domain, **kw))
        drop.add(name)
    kept = [t for t in graph.initializer if t.name not in drop]
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(new_nodes + nodes)
    if any(r.domain == MS_DOMAIN for r in records) and \
            not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return records


def _fresh(base: str, used: set[str]) -> str:
    name, i = base, 1
    while name in used:
        name, i = f"{base}_{i}", i + 1
    used.add(name)
    return name


def dequantized_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Run every ``DequantizeLinear`` node whose inputs are initializers in onnxruntime
    and return its float32 output by name (the weights the runtime computes with)."""
    inits = {t.name: t for t in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type == "DequantizeLinear"
             and all(i in inits for i in n.input if i)]
    if not nodes:
        return {}
    needed = {i for n in nodes for i in n.input if i}
    graph = helper.make_graph(
        nodes, "dequantize", [],
        [helper.make_tensor_value_info(n.output[0], TensorProto.FLOAT, None) for n in nodes],
        initializer=[inits[i] for i in sorted(needed)])
    sub = helper.make_model(graph, opset_imports=list(model.opset_import),
                            ir_version=model.ir_version)
    outs = _runtime.session(sub).run(None, {})
    return {n.output[0]: np.asarray(o) for n, o in zip(nodes, outs)}
