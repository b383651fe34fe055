"""The certificate: a frozen, JSON-serializable statement of a certified deviation bound.

A certificate says: for every input ``x`` of shape ``input_shape`` in its domain
(``||x||_inf <= radius``), ``||f(x) - f'(x)||_1 <= bound``, where ``f`` and ``f'`` are the
models whose parameter digests it records, evaluated in exact arithmetic. The bound is
``max(radius, 1) * path_metric`` (Theorem 3.1 of Gonon et al., shared doc section 3),
with the float64 rounding slack it states. Since ``||.||_inf <= ||.||_2 <= ||.||_1``, the
same number bounds the l2 and l_inf deviation. Measured deviations (reference data and
adversarial search) are recorded beside it, and ``vacuous`` says when the bound exceeds
the output scale measured on the reference data.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ._io import atomic_write_text
from .errors import CertificateError

__all__ = ["Certificate", "Measurements", "SCHEMA"]

SCHEMA = "certcompress.certificate/1"


@dataclass(frozen=True)
class Measurements:
    """What was measured next to the bound (None where not measured)."""

    reference_count: int = 0
    deviation_max: float | None = None
    deviation_mean: float | None = None
    output_scale: float | None = None  # max ||f(x)||_1 over the reference inputs
    adversarial_max: float | None = None
    adversarial_steps: int = 0
    adversarial_restarts: int = 0


@dataclass(frozen=True)
class Certificate:
    """A certified bound on the output deviation between two models (see module doc)."""

    bound: float
    per_output: tuple[float, ...]
    input_shape: tuple[int, ...]
    radius: float
    factor: float
    path_metric: float
    path_metric_exact: bool
    method: str
    path_norm_original: float
    path_norm_compressed: float
    sign_changes: int
    changed_parameters: int
    original_digest: str
    compressed_digest: str
    float_slack_rel: float
    float_slack_abs: float
    baseline_linf: float | None
    baseline_note: str
    measurements: Measurements
    vacuous: bool | None
    domain: str
    model_name: str = "model"
    working_dtype: str = "float64"
    norm: str = "l1 (also bounds l2 and l_inf)"
    versions: dict[str, str] = field(default_factory=dict)
    created_utc: str = ""
    schema: str = SCHEMA

    # ---------------------------------------------------------------- display
    def summary(self) -> str:
        m = self.measurements
        lines = [
            f"certcompress certificate for {self.model_name} (input {self.input_shape}, "
            f"domain: {self.domain})",
            f"  certified bound      {self.bound:.6g}   (max over the domain of "
            f"||f(x) - f'(x)||_1; = max(r,1)={self.factor:g} x path-metric)",
            f"  path-metric          {self.path_metric:.6g}   "
            f"({self.method})",
            f"  path-norms           original {self.path_norm_original:.6g}, compressed "
            f"{self.path_norm_compressed:.6g}",
            f"  changed parameters   {self.changed_parameters:,} "
            f"({self.sign_changes:,} sign changes)",
        ]
        if self.baseline_linf is not None:
            lines.append(f"  baseline (op-norm)   {self.factor * self.baseline_linf:.6g}   "
                         "(l_inf deviation, rescaling-dependent)")
        else:
            lines.append(f"  baseline (op-norm)   n/a: {self.baseline_note}")
        if m.reference_count:
            lines.append(f"  measured on {m.reference_count} reference inputs: max "
                         f"{m.deviation_max:.6g}, mean {m.deviation_mean:.6g}; output scale "
                         f"max ||f(x)||_1 = {m.output_scale:.6g}")
        if m.adversarial_max is not None:
            lines.append(f"  adversarial search   {m.adversarial_max:.6g}   ({m.adversarial_steps}"
                         f" PGD steps x {m.adversarial_restarts} starts inside the domain)")
            if m.adversarial_max > 0:
                lines.append(f"  bound / found        {self.bound / m.adversarial_max:.3g}x")
        if self.vacuous is True:
            lines.append("  VACUOUS: the bound exceeds the output scale measured on the "
                         "reference inputs; it certifies nothing useful there")
        elif self.vacuous is False:
            lines.append("  not vacuous: the bound is below the measured output scale")
        lines.append(f"  float64 slack        relative {self.float_slack_rel:.2e}, absolute "
                     f"{self.float_slack_abs:.1e} (included)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    # ---------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["per_output"] = list(self.per_output)
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True, allow_nan=False)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the JSON atomically (never half-written)."""
        return atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def from_json(cls, text: str) -> Certificate:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CertificateError(f"not a certificate: invalid JSON ({exc})") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Certificate:
        p = Path(path)
        if not p.is_file():
            raise CertificateError(f"certificate file '{p}' does not exist")
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CertificateError(f"cannot read certificate '{p}': {exc}") from None
        return cls.from_json(text)

    @classmethod
    def from_dict(cls, data: Any) -> Certificate:
        if not isinstance(data, dict):
            raise CertificateError("not a certificate: expected a JSON object")
        if data.get("schema") != SCHEMA:
            raise CertificateError(f"field 'schema' is {data.get('schema')!r}; expected "
                                   f"{SCHEMA!r}")
        names = {f.name for f in fields(cls)}
        missing = sorted(n for n in names if n not in data and n not in
                         ("versions", "created_utc", "model_name", "working_dtype", "norm"))
        if missing:
            raise CertificateError(f"certificate is missing field(s): {', '.join(missing)}")
        unknown = sorted(set(data) - names)
        if unknown:
            raise CertificateError(f"certificate has unknown field(s): {', '.join(unknown)}")
        kw = dict(data)
        try:
            kw["measurements"] = Measurements(**kw["measurements"])
        except TypeError as exc:
            raise CertificateError(f"field 'measurements' is malformed: {exc}") from None
        kw["input_shape"] = tuple(int(s) for s in kw["input_shape"])
        kw["per_output"] = tuple(float(v) for v in kw["per_output"])
        for name in ("bound", "radius", "factor", "path_metric", "float_slack_rel"):
            v = kw[name]
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) \
                    or v < 0:
                raise CertificateError(f"field '{name}' must be a finite non-negative number, "
                                       f"got {v!r}")
        for name in ("path_metric_exact",):
            if not isinstance(kw[name], bool):
                raise CertificateError(f"field '{name}' must be true or false")
        return cls(**kw)
