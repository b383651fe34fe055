"""Read an ONNX file as data: no operator, function or external program ever runs.

:func:`read_onnx` parses the protobuf (``onnx.load(..., load_external_data=False)``),
refuses model-local functions, sizes every declared tensor before any is materialized,
reads external tensor data itself (only from plain files inside the model's own folder,
never through a link that leaves it, never past the file's end), then runs
``onnx.checker`` (which also rejects graphs that are not topologically sorted, e.g. a
cycle) and strict shape inference. Every failure is a :class:`ModelLoadError` naming the
file and what is wrong.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from ...errors import ModelLoadError

__all__ = ["read_onnx", "check_onnx", "MAX_FILE_BYTES", "MAX_TENSOR_ELEMENTS", "MIN_OPSET", "MAX_OPSET"]

#: the largest ONNX file read (protobuf itself cannot exceed 2 GiB)
MAX_FILE_BYTES = 2**31 - 1
#: the largest tensor (elements) an initializer may declare
MAX_TENSOR_ELEMENTS = 2**28
#: the default-domain opsets the importer knows
MIN_OPSET, MAX_OPSET = 13, 21


def _fail(path: Path, what: str) -> ModelLoadError:
    return ModelLoadError(f"ONNX file '{path}': {what}")


def _numel(path: Path, t: TensorProto, where: str) -> int:
    n = 1
    for d in t.dims:
        if d < 0:
            raise _fail(path, f"{where} '{t.name}' declares a negative dimension {d}")
        n *= int(d)
        if n > MAX_TENSOR_ELEMENTS:
            raise _fail(path, f"{where} '{t.name}' declares {list(t.dims)} "
                              f"(more than {MAX_TENSOR_ELEMENTS} elements); refused before "
                              "reading it")
    return n


def _itemsize(path: Path, t: TensorProto) -> int:
    try:
        return int(np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize)
    except Exception:
        raise _fail(path, f"tensor '{t.name}' has unknown data type {t.data_type}") from None


def _all_tensors(graph: onnx.GraphProto) -> list[tuple[TensorProto, str]]:
    """Every tensor stored in ``graph``: initializers and Constant/attribute tensors,
    subgraphs included (so none escapes the size and location checks)."""
    out: list[tuple[TensorProto, str]] = [(t, "initializer") for t in graph.initializer]
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                out.append((a.t, f"tensor attribute of node '{node.name}'"))
            out.extend((t, f"tensor attribute of node '{node.name}'") for t in a.tensors)
            if a.type == onnx.AttributeProto.GRAPH:
                out.extend(_all_tensors(a.g))
            for g in a.graphs:
                out.extend(_all_tensors(g))
    return out


def _load_external(path: Path, t: TensorProto, where: str, numel: int, itemsize: int) -> None:
    """Read ``t``'s external data into ``raw_data``, only from inside the model's folder."""
    info = {e.key: e.value for e in t.external_data}
    location = info.get("location", "")
    if not location:
        raise _fail(path, f"{where} '{t.name}' is external but names no location")
    folder = path.resolve().parent
    rel = Path(location)
    if rel.is_absolute() or rel.drive:
        raise _fail(path, f"{where} '{t.name}': external data path '{location}' is absolute; "
                          "only files inside the model's folder are read")
    target = (folder / rel).resolve()
    if not target.is_relative_to(folder):
        raise _fail(path, f"{where} '{t.name}': external data path '{location}' leaves the "
                          f"model's folder ({folder}); refused, nothing outside it is read")
    if not target.is_file():
        raise _fail(path, f"{where} '{t.name}': external data file '{location}' does not "
                          "exist in the model's folder")
    try:
        offset = int(info.get("offset", "0"))
        length = int(info["length"]) if "length" in info else numel * itemsize
    except ValueError:
        raise _fail(path, f"{where} '{t.name}': malformed external data offset/length") from None
    size = target.stat().st_size
    if offset < 0 or length != numel * itemsize or offset + length > size:
        raise _fail(path, f"{where} '{t.name}': external data (offset {offset}, length "
                          f"{length}) does not match the declared {numel} elements of "
                          f"{itemsize} bytes or runs past the end of '{location}' "
                          f"({size} bytes)")
    with open(target, "rb") as f:
        f.seek(offset)
        raw = f.read(length)
    t.raw_data = raw
    del t.external_data[:]
    t.data_location = TensorProto.DEFAULT


def _check_tensor(path: Path, t: TensorProto, where: str) -> None:
    numel = _numel(path, t, where)
    itemsize = _itemsize(path, t)
    if t.data_location == TensorProto.EXTERNAL:
        _load_external(path, t, where, numel, itemsize)
    elif t.HasField("raw_data") and t.data_type not in (TensorProto.STRING,) and \
            len(t.raw_data) != numel * itemsize and \
            t.data_type not in (TensorProto.INT4, TensorProto.UINT4):
        raise _fail(path, f"{where} '{t.name}' holds {len(t.raw_data)} bytes for "
                          f"{numel} elements of {itemsize} bytes (truncated or malformed)")


def read_onnx(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """The :class:`onnx.ModelProto` in ``path``, every tensor sized and its external data
    read (see the module docstring); :func:`check_onnx` runs the checker afterwards.
    Raises :class:`ModelLoadError` naming what is wrong."""
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"ONNX file '{p}' does not exist or is not a file")
    if p.stat().st_size > MAX_FILE_BYTES:
        raise _fail(p, f"{p.stat().st_size} bytes is more than an ONNX protobuf can hold")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:
        raise _fail(p, f"not a readable ONNX protobuf (truncated or corrupt?): "
                       f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
                    ) from None
    if not model.HasField("graph") or not model.graph.node:
        raise _fail(p, "holds no graph (empty, truncated or not an ONNX model)")
    if model.functions:
        names = ", ".join(f"{f.domain}.{f.name}" for f in model.functions)
        raise _fail(p, f"defines model-local functions ({names}); certcompress imports plain "
                       "graphs of standard operators only and never runs custom code")
    version = None
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            version = int(imp.version)
    if version is None:
        raise _fail(p, "imports no default-domain opset")
    if not MIN_OPSET <= version <= MAX_OPSET:
        raise _fail(p, f"uses opset {version}; the importer supports opsets "
                       f"{MIN_OPSET}-{MAX_OPSET} (convert it with onnx.version_converter)")
    for t, where in _all_tensors(model.graph):
        _check_tensor(p, t, where)
    for sp in model.graph.sparse_initializer:
        raise _fail(p, f"sparse initializer '{sp.values.name}' is not supported")
    return model


def check_onnx(model: onnx.ModelProto, path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Run ``onnx.checker`` and strict shape inference on ``model`` read from ``path``;
    the shape-inferred model."""
    p = Path(path)
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise _fail(p, f"onnx.checker rejects it: {str(exc).strip().splitlines()[0]}") from None
    try:
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True,
                                                  data_prop=True)
    except Exception as exc:
        raise _fail(p, f"shape inference fails: {str(exc).strip().splitlines()[0]}") from None
    return model
