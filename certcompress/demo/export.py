"""The last step of the README's main job: export, verify, measure."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
from torch import Tensor, nn

from .._io import atomic_path
from ..certificate import Certificate
from ..errors import ConfigurationError
from ..export.onnx_export import MIN_OPSET, export_onnx, to_onnx
from ..export.qdq import GridsLike
from ..export.report import ExportReport, build_report

__all__ = ["demo_section"]


def demo_section(model: nn.Module, compressed: nn.Module, cert: Certificate,
                 data: Tensor | object, out_dir: str | os.PathLike[str], *,
                 grids: GridsLike = None,
                 certified: nn.Module | None = None, opset: int = MIN_OPSET,
                 rounds: int = 5, label: str = "compressed", progress: bool = True
                 ) -> ExportReport:
    """Export ``compressed`` with ``cert`` to ``out_dir/model.onnx`` (verified against
    ``model`` on the reference inputs ``data``: a tensor, or an object with ``x_test``
    such as :class:`certcompress.demo.digits.DigitsData`), export ``model`` to
    ``out_dir/original.onnx`` for comparison, print the verification and the report
    (sizes, onnxruntime latency at batch 1 and 64, certificate) and write it to
    ``out_dir/onnx_report.json``. Returns the report."""
    x = data if isinstance(data, Tensor) else getattr(data, "x_test", None)
    if not isinstance(x, Tensor):
        raise ConfigurationError("data must be a tensor of reference inputs or have a tensor "
                                 "attribute x_test")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "model.onnx"
    verification = export_onnx(compressed, onnx_path, certificate=cert, reference_inputs=x,
                               original=model, opset=opset, grids=grids, certified=certified)
    if progress:
        print(verification.summary())
    with atomic_path(out / "original.onnx") as tmp:
        onnx.save_model(to_onnx(model, cert.input_shape, opset), str(tmp))
    report = build_report({"original": out / "original.onnx", label: onnx_path},
                          certificate=cert, rounds=rounds,
                          verification=verification.to_dict())
    path = report.save(out / "onnx_report.json")
    if progress:
        print(report.summary())
        print(f"ONNX model written to {onnx_path} (certificate embedded; check it with "
              f"`certcompress verify {onnx_path}`); report written to {path}")
    return report
