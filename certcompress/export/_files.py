"""Reading an ONNX file with one clear error per way it can be wrong."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from ..errors import VerificationError

__all__ = ["load_onnx_file"]


def load_onnx_file(path: str | os.PathLike[str], name: str | None = None) -> onnx.ModelProto:
    """Parse ``path`` as an ONNX model (weights included, no external data).

    Raises :class:`VerificationError` (check ``file``) for a missing path, a directory,
    an empty, truncated or non-ONNX file, and a file whose weights live elsewhere.
    """
    p = Path(path)
    shown = name or str(p)
    if not p.exists():
        raise VerificationError(f"check 'file' failed: '{shown}' does not exist")
    if not p.is_file():
        raise VerificationError(f"check 'file' failed: '{shown}' is not a file")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise VerificationError(f"check 'file' failed: cannot read '{shown}': "
                                f"{exc.strerror or exc}") from None
    if not data:
        raise VerificationError(f"check 'file' failed: '{shown}' is empty")
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise VerificationError(
            f"check 'file' failed: '{shown}' is not an ONNX model (protobuf cannot parse "
            f"it: {type(exc).__name__}; truncated or another format?)") from None
    if model.ir_version <= 0 or not model.HasField("graph") or not model.graph.node:
        raise VerificationError(
            f"check 'file' failed: '{shown}' is not an ONNX model (no IR version or no "
            "graph; truncated or another format?)")
    external = [t.name for t in model.graph.initializer
                if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise VerificationError(
            f"check 'file' failed: '{shown}' keeps {len(external)} initializer(s) in external "
            f"data files (e.g. '{external[0]}'); certcompress files are self-contained")
    return model
