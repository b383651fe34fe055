"""What a verification found: the checks, the numbers, the tolerance used.

:class:`Tolerance` is the float32 allowance of the tolerance model stated in
:mod:`certcompress.export.verify`; :class:`VerificationReport` is frozen and serializes to
JSON; :class:`VerificationFailed` is the :class:`~certcompress.errors.VerificationError`
that carries it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from .._io import JsonRecord
from ..certificate import Certificate
from ..errors import ConfigurationError, VerificationError

__all__ = ["Tolerance", "Check", "VerificationReport", "VerificationFailed", "PASSED",
           "FAILED", "SKIPPED"]

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"


@dataclass(frozen=True)
class Tolerance:
    """Allowed float32 error of onnxruntime: ``rtol * S + atol * n`` (the tolerance model of
    :mod:`certcompress.export.verify`: ``S`` is the largest ``||ort(x)||_1`` over the inputs
    checked, ``n`` the number of outputs per input)."""

    rtol: float = 1e-4
    atol: float = 1e-6

    def __post_init__(self) -> None:
        for name in ("rtol", "atol"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or \
                    not math.isfinite(v) or v < 0:
                raise ConfigurationError(f"tolerance {name} must be a finite number >= 0, "
                                         f"got {v!r}")

    def value(self, scale: float, outputs: int) -> float:
        return self.rtol * scale + self.atol * outputs

    def to_dict(self) -> dict[str, float]:
        return {"rtol": float(self.rtol), "atol": float(self.atol)}


@dataclass(frozen=True)
class Check:
    """One check: ``status`` is passed, failed or skipped; ``measured`` and ``limit``
    are the compared numbers where there are some."""

    name: str
    status: str
    detail: str
    measured: float | None = None
    limit: float | None = None

    def line(self) -> str:
        return f"  [{self.status.upper():7}] {self.name:18} {self.detail}"


@dataclass(frozen=True)
class VerificationReport(JsonRecord):
    """What :func:`verify_onnx` checked and measured (frozen; JSON via ``to_json``)."""

    path: str
    checks: tuple[Check, ...]
    certificate: Certificate
    tolerance: Tolerance
    file_bytes: int
    opset: int
    inputs: int = 0
    inputs_source: str = "none"
    inputs_outside_domain: int = 0
    outputs: int | None = None
    output_scale: float | None = None
    numerical_tolerance: float | None = None
    equivalence_max: float | None = None
    deviation_max: float | None = None
    adversarial_max: float | None = None
    search: str = "not run"
    quantized: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    @property
    def passed(self) -> bool:
        return all(c.status != FAILED for c in self.checks)

    @property
    def authenticated(self) -> bool:
        """Whether a public key authenticated the file's signature (else the checks
        establish integrity only)."""
        return any(c.name == "signature" and c.status == PASSED for c in self.checks)

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status == FAILED)

    def summary(self) -> str:
        c = self.certificate
        head = (f"verification of {self.path}: {'PASSED' if self.passed else 'FAILED'} "
                f"({self.file_bytes / 1e6:.3f} MB, opset {self.opset})")
        lines = [head, *(ch.line() for ch in self.checks)]
        lines.append(f"  certified bound {c.bound:.6g} on {c.domain}"
                     f"{' (VACUOUS)' if c.vacuous else ''}; inputs: {self.inputs} "
                     f"({self.inputs_source}; {self.inputs_outside_domain} outside the domain)")
        if self.numerical_tolerance is not None:
            lines.append(f"  float32 tolerance {self.numerical_tolerance:.3g} = rtol "
                         f"{self.tolerance.rtol:g} x output scale {self.output_scale:.6g} + "
                         f"atol {self.tolerance.atol:g} x {self.outputs} outputs")
        lines.append(f"  search: {self.search}")
        if not self.authenticated:
            lines.append("  integrity only: not authenticated (no public key checked a "
                         "signature)")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "passed": self.passed, "authenticated": self.authenticated,
            "checks": [asdict(ch) for ch in self.checks],
            "tolerance": self.tolerance.to_dict(), "file_bytes": self.file_bytes,
            "opset": self.opset, "inputs": self.inputs, "inputs_source": self.inputs_source,
            "inputs_outside_domain": self.inputs_outside_domain, "outputs": self.outputs,
            "output_scale": self.output_scale,
            "numerical_tolerance": self.numerical_tolerance,
            "equivalence_max": self.equivalence_max, "deviation_max": self.deviation_max,
            "adversarial_max": self.adversarial_max, "search": self.search,
            "quantized": list(self.quantized),
            "certificate": self.certificate.to_dict(),
        }



class VerificationFailed(VerificationError):
    """A :class:`VerificationError` that carries the full report (``.report``)."""

    def __init__(self, message: str, report: VerificationReport) -> None:
        super().__init__(message)
        self.report = report
