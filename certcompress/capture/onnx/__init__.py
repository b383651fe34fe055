"""ONNX import: an ONNX file, read as data, as a PyTorch module the tracer captures.

``load_onnx(path)`` reads the file (:mod:`.reader`: no operator, function or program in
it ever runs; external data only from the model's folder; checker and shape inference),
and converts its graph (:mod:`.convert`) into a ``torch.fx.GraphModule`` of standard
modules (``nn.Conv2d``, ``nn.Linear``, ...), so that every tier, pruning, quantization
and export work on it as on any model. See docs/onnx-import.md.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import fx

from .convert import SUPPORTED_OPS, scan_ops, to_module
from .reader import MAX_OPSET, MIN_OPSET, check_onnx, read_onnx

__all__ = ["load_onnx", "SUPPORTED_OPS", "MIN_OPSET", "MAX_OPSET", "is_onnx_spec"]


def is_onnx_spec(spec: object) -> bool:
    """Whether ``spec`` names an ONNX file (``FILE.onnx``)."""
    return isinstance(spec, str) and Path(spec.strip()).suffix.lower() == ".onnx"


def load_onnx(path: str | os.PathLike[str]) -> fx.GraphModule:
    """The ONNX model in ``path`` as an eval-mode ``torch.fx.GraphModule`` of standard
    torch modules, with ``input_shape`` (batch 1 where the batch is dynamic),
    ``input_name`` and ``source`` attributes.

    Raises :class:`~certcompress.errors.ModelLoadError` for an unreadable, malformed or
    unsafe file (external data outside its folder, model-local functions, a huge
    declared tensor, a cycle) and :class:`~certcompress.errors.UnsupportedModelError`
    naming every node outside the supported op set (custom-domain ops included; nothing
    is executed).
    """
    model = read_onnx(path)
    scan_ops(model, str(path))
    model = check_onnx(model, path)
    return to_module(model, str(path))
