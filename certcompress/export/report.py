"""File sizes and onnxruntime latencies of several ONNX files, measured in one run.

Latencies are interleaved (round r times every model once, for each batch size) so that
machine noise hits every model alike, and summarized by the median over the rounds after
a warm-up run; the ratios divide by the first model (the baseline, normally the
original). The report is printed with :meth:`ExportReport.summary` and written as JSON
atomically with :meth:`ExportReport.save`.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .._io import JsonRecord
from .._version import versions
from ..certificate import Certificate
from ..errors import ConfigurationError
from . import _runtime
from ._files import load_onnx_file

__all__ = ["ModelTiming", "ExportReport", "build_report"]


@dataclass(frozen=True)
class ModelTiming:
    """One file: its size and its median onnxruntime latency (ms) per batch size."""

    label: str
    path: str
    file_bytes: int
    latency_ms: dict[int, float]
    samples: dict[int, list[float]] = field(default_factory=dict)


@dataclass(frozen=True)
class ExportReport(JsonRecord):
    """Sizes, latencies and their ratios to ``models[0]``, with the certificate."""

    models: tuple[ModelTiming, ...]
    batches: tuple[int, ...]
    input_shape: tuple[int, ...]
    rounds: int
    threads: int            # onnxruntime intra-op threads; 0: onnxruntime's default
    certificate: Certificate | None = None
    verification: dict[str, Any] | None = None

    @property
    def baseline(self) -> ModelTiming:
        return self.models[0]

    def size_ratio(self, label: str) -> float:
        return self._get(label).file_bytes / self.baseline.file_bytes

    def latency_ratio(self, label: str, batch: int) -> float:
        return self._get(label).latency_ms[batch] / self.baseline.latency_ms[batch]

    def _get(self, label: str) -> ModelTiming:
        for m in self.models:
            if m.label == label:
                return m
        raise KeyError(label)

    def summary(self) -> str:
        cols = "".join(f"  batch {b:>3} ms (ratio)" for b in self.batches)
        threads = (f"{self.threads} thread(s)" if self.threads else
                   f"default threads ({os.cpu_count()} CPUs)")
        lines = [f"ONNX report: onnxruntime {_runtime.ort_version()}, {threads}, "
                 f"input {list(self.input_shape[1:])}, median of {self.rounds} interleaved "
                 f"rounds; ratios to '{self.baseline.label}'",
                 f"  {'model':<16} {'size MB':>9} {'ratio':>6}{cols}"]
        for m in self.models:
            row = f"  {m.label:<16} {m.file_bytes / 1e6:>9.3f} {self.size_ratio(m.label):>6.3f}"
            for b in self.batches:
                row += f"  {m.latency_ms[b]:>10.3f} ({self.latency_ratio(m.label, b):.3f})"
            lines.append(row)
        if self.certificate is not None:
            lines.append(self.certificate.summary())
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline.label,
            "input_shape": list(self.input_shape), "batches": list(self.batches),
            "rounds": self.rounds, "threads": self.threads,
            "models": [{
                "label": m.label, "path": m.path, "file_bytes": m.file_bytes,
                "size_ratio": self.size_ratio(m.label),
                "latency_ms": {str(b): m.latency_ms[b] for b in self.batches},
                "latency_ratio": {str(b): self.latency_ratio(m.label, b)
                                  for b in self.batches},
                "latency_samples_ms": {str(b): m.samples.get(b, []) for b in self.batches},
            } for m in self.models],
            "certificate": None if self.certificate is None else self.certificate.to_dict(),
            "certificate_summary": None if self.certificate is None else
            self.certificate.summary(),
            "verification": self.verification,
            "versions": versions("onnx", "onnxruntime"),
            "cpus": os.cpu_count(),
        }


def _input_shape(model: onnx.ModelProto, given: Sequence[int] | None, label: str
                 ) -> tuple[int, ...]:
    if given is not None:
        return tuple(int(s) for s in given)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    rest = tuple(int(d.dim_value) for d in list(dims)[1:])
    if any(d <= 0 for d in rest):
        raise ConfigurationError(f"'{label}' has a dynamic non-batch input dimension; pass "
                                 "input_shape")
    return (1,) + rest


def build_report(models: Mapping[str, str | os.PathLike[str]], *,
                 certificate: Certificate | None = None, batches: Sequence[int] = (1, 64),
                 rounds: int = 5, threads: int | None = None,
                 input_shape: Sequence[int] | None = None, seed: int = 0,
                 verification: Mapping[str, Any] | None = None) -> ExportReport:
    """Measure every file of ``models`` (label -> path; the first is the baseline).

    Each model runs the same random float32 inputs (normal, ``seed``) at each batch size
    of ``batches``: one warm-up, then ``rounds`` interleaved timed runs; ``threads``
    fixes onnxruntime's intra-op threads (default: its own choice).
    """
    if not models:
        raise ConfigurationError("build_report needs at least one model")
    if rounds < 1 or not batches or any(b < 1 for b in batches):
        raise ConfigurationError("rounds and batch sizes must be >= 1")
    labels = list(models)
    protos = {lb: load_onnx_file(models[lb]) for lb in labels}
    shape = _input_shape(protos[labels[0]], input_shape, labels[0])
    sessions = {lb: _runtime.session(protos[lb], threads) for lb in labels}
    names = {lb: s.get_inputs()[0].name for lb, s in sessions.items()}
    rng = np.random.default_rng(seed)
    samples: dict[str, dict[int, list[float]]] = {lb: {} for lb in labels}
    for b in batches:
        x = rng.standard_normal((b,) + shape[1:]).astype(np.float32)
        for lb in labels:
            sessions[lb].run(None, {names[lb]: x})
            samples[lb][b] = []
        for _ in range(rounds):
            for lb in labels:
                t0 = time.perf_counter()
                sessions[lb].run(None, {names[lb]: x})
                samples[lb][b].append((time.perf_counter() - t0) * 1e3)
    timings = tuple(ModelTiming(
        label=lb, path=str(models[lb]), file_bytes=Path(models[lb]).stat().st_size,
        latency_ms={b: statistics.median(samples[lb][b]) for b in batches},
        samples=samples[lb]) for lb in labels)
    used = threads if threads is not None else 0
    return ExportReport(models=timings, batches=tuple(int(b) for b in batches),
                        input_shape=shape, rounds=rounds, threads=used,
                        certificate=certificate,
                        verification=None if verification is None else dict(verification))
