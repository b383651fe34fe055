"""ONNX export of certified compressed models, verified with onnxruntime.

``export_onnx`` writes one self-contained ONNX file (dynamo exporter, opset >= 18,
dynamic batch, quantized weights in QDQ form from the certified grid) with the
certificate and SHA-256 digests in its metadata (and an Ed25519 signature with
``signing_key=``; keys from ``generate_signing_key``), and leaves it only if every check of
``verify_onnx`` passes; ``verify_onnx`` re-runs those checks on any such file (with
``public_key=`` it authenticates the signature, with ``recertify=True`` it recomputes the
certificate from the original and the file's weights);
``build_report`` measures file sizes and onnxruntime latencies (the README job's export
step is :mod:`certcompress.demo.export`).
"""

from __future__ import annotations

from .metadata import graph_digest, read_embedded
from .onnx_export import ExportError, export_onnx, to_onnx
from .qdq import QuantizedInitializer, WeightGrid
from .report import ExportReport, build_report
from .results import Check, Tolerance, VerificationFailed, VerificationReport
from .signing import generate_signing_key
from .verify import verify_onnx

__all__ = ["Check", "ExportError", "ExportReport", "QuantizedInitializer", "Tolerance",
           "VerificationFailed", "VerificationReport", "WeightGrid", "build_report",
           "export_onnx", "generate_signing_key", "graph_digest",
           "read_embedded", "to_onnx", "verify_onnx"]
