"""The certificate: a frozen, JSON-serializable statement of a certified deviation bound.

A certificate says: for every input ``x`` of shape ``input_shape`` in its domain
(``||x||_inf <= radius``), ``||f(x) - f'(x)||_1 <= bound``, where ``f`` and ``f'`` are the
models whose parameter digests it records, evaluated in exact arithmetic (or, when
``arithmetic`` is ``"float32"``, as executed in IEEE float32). The bound is
``max(radius, 1) * path_metric`` (Theorem 3.1 of Gonon et al., docs/path-metrics.md, section 3),
with the float64 rounding slack it states. Since ``||.||_inf <= ||.||_2 <= ||.||_1``, the
same number bounds the l2 and l_inf deviation. Measured deviations (reference data and
adversarial search) are recorded beside it, and ``vacuous`` says when the bound exceeds
the output scale measured on the reference data.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ._io import JsonRecord, parse_json, read_text_file
from ._schema import validate
from .domain import InputDomain
from .errors import CertificateError, ConfigurationError

__all__ = ["Certificate", "Measurements", "MethodBound", "SCHEMA", "SCHEMAS_READ",
           "WORST_CASE"]

SCHEMA = "certcompress.certificate/2"
SCHEMAS_READ = ("certcompress.certificate/1", SCHEMA)
WORST_CASE = "worst case over the input domain: max over x in D of ||f(x) - f'(x)||_1"

@dataclass(frozen=True)
class MethodBound:
    """One tier's certified bound: ``bound`` on the l1 deviation and ``per_output``
    bounds on each output's absolute deviation, both over ``scope``; ``seconds`` of
    wall time and ``forward_equivalents`` (seconds over one float64 forward pass of the
    original, measured in the same run; None when not measured); ``exact`` when the
    bound is the method's exact value (not a further upper bound of it); ``vacuous``
    when it exceeds the measured output scale (None when not measured); ``details``:
    method-specific numbers and notes (JSON scalars)."""

    method: str
    bound: float
    per_output: tuple[float, ...]
    scope: str
    seconds: float
    exact: bool
    vacuous: bool | None = None
    sound: bool = True
    forward_equivalents: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "bound": self.bound, "per_output": list(self.per_output),
                "scope": self.scope, "seconds": self.seconds, "exact": self.exact,
                "vacuous": self.vacuous, "sound": self.sound,
                "forward_equivalents": self.forward_equivalents, "details": dict(self.details)}

    @classmethod
    def from_dict(cls, data: Any) -> MethodBound:
        if not isinstance(data, dict):
            raise CertificateError("a by_method entry must be a JSON object")
        need = {"method", "bound", "per_output", "scope", "seconds", "exact"}
        missing = sorted(need - set(data))
        if missing:
            raise CertificateError(f"by_method entry is missing field(s): {', '.join(missing)}")
        unknown = sorted(set(data) - need - {"vacuous", "sound", "forward_equivalents",
                                             "details"})
        if unknown:
            raise CertificateError(f"by_method entry has unknown field(s): "
                                   f"{', '.join(unknown)}")
        b = data["bound"]
        if not isinstance(b, (int, float)) or isinstance(b, bool) or not math.isfinite(b) \
                or b < 0:
            raise CertificateError(f"by_method bound must be a finite non-negative number, "
                                   f"got {b!r}")
        for name in ("exact", "sound"):
            if name in data and not isinstance(data[name], bool):
                raise CertificateError(f"by_method field '{name}' must be true or false")
        try:
            return cls(method=str(data["method"]), bound=float(b),
                       per_output=tuple(float(v) for v in data["per_output"]),
                       scope=str(data["scope"]), seconds=float(data["seconds"]),
                       exact=bool(data["exact"]), vacuous=data.get("vacuous"),
                       sound=bool(data.get("sound", True)),
                       forward_equivalents=None if data.get("forward_equivalents") is None
                       else float(data["forward_equivalents"]),
                       details=dict(data.get("details") or {}))
        except (TypeError, ValueError) as exc:
            raise CertificateError(f"by_method entry is malformed: {exc}") from None

    def with_measurements(self, output_scale: float | None,
                          forward_seconds: float | None) -> MethodBound:
        from dataclasses import replace

        vac = None if output_scale is None else bool(self.bound > output_scale)
        fe = None if not forward_seconds else self.seconds / forward_seconds
        return replace(self, vacuous=vac, forward_equivalents=fe)




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
    #: where output_scale comes from: "reference inputs", or "sampled: N points in the
    #: domain" when no reference data was given (None: not measured)
    output_scale_source: str | None = None
    adversarial_seconds: float | None = None
    adversarial_budget_exhausted: bool = False


@dataclass(frozen=True)
class Certificate(JsonRecord):
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
    by_method: dict[str, MethodBound] = field(default_factory=dict)
    input_domain: InputDomain | None = None
    #: explanations of surprising results (an exactly-zero bound, a vacuous bound...)
    notes: tuple[str, ...] = ()
    #: the arithmetic the bound covers: "exact" (the models evaluated exactly) or
    #: "float32" (as executed in IEEE float32, any summation order; both models' rounding
    #: error included, docs/bounds.md "Arithmetic")
    arithmetic: str = "exact"
    schema: str = SCHEMA

    @property
    def bound_method(self) -> str:
        """The method whose bound ``bound`` is (the tightest worst-case tier)."""
        best = [k for k, v in self.by_method.items()
                if v.sound and v.scope == WORST_CASE and v.bound == self.bound]
        return best[0] if best else "path-metric"

    # ---------------------------------------------------------------- display
    def input_box(self) -> tuple[Any, Any]:
        """The certified domain as per-sample float64 bounds ``(lower, upper)`` of shape
        ``input_shape[1:]``: the ``input_domain`` box when there is one, else the ball
        ``[-radius, radius]``."""
        import torch

        if self.input_domain is not None:
            return self.input_domain.lower_tensor()[0], self.input_domain.upper_tensor()[0]
        per = tuple(self.input_shape[1:])
        r = torch.full(per, float(self.radius), dtype=torch.float64)
        return -r, r

    def summary(self) -> str:
        m = self.measurements
        lines = [
            f"certcompress certificate for {self.model_name} (input {self.input_shape}, "
            f"domain: {self.domain})",
            f"  certified bound      {self.bound:.6g}   (max over the domain of "
            f"||f(x) - f'(x)||_1; " + (f"from the '{self.bound_method}' tier, float32 "
                                       "rounding included)" if self.arithmetic == "float32"
                                       else f"= max(r,1)={self.factor:g} x path-metric)"
                                       if self.bound_method == "path-metric" else
                                       f"from the '{self.bound_method}' tier)"),
            f"  arithmetic           {self.arithmetic}   ("
            + ("models evaluated exactly; float32 rounding not included)"
               if self.arithmetic == "exact" else
               "models as executed in IEEE float32, any summation order; both models' "
               "rounding error included)"),
            f"  path-metric          {self.path_metric:.6g}   "
            f"({self.method})",
            f"  path-norms           original {self.path_norm_original:.6g}, compressed "
            f"{self.path_norm_compressed:.6g}",
            f"  changed parameters   {self.changed_parameters:,} "
            f"({self.sign_changes:,} sign changes)",
        ]
        for name, t in self.by_method.items():
            cost = (f"{t.forward_equivalents:.3g} forward passes" if t.forward_equivalents
                    is not None else f"{t.seconds:.3g} s")
            flag = " VACUOUS" if t.vacuous else ""
            lines.append(f"  tier {name:<15} {t.bound:.6g}   ({'exact' if t.exact else 'upper bound'}"
                         f", {cost}{flag})")
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
            spent = ("" if m.adversarial_seconds is None else
                     f", {m.adversarial_seconds:.3g} s" + (" (time budget reached)"
                                                          if m.adversarial_budget_exhausted
                                                          else ""))
            lines.append(f"  adversarial search   {m.adversarial_max:.6g}   ({m.adversarial_steps}"
                         f" PGD steps x {m.adversarial_restarts} starts inside the domain{spent})")
            if m.adversarial_max > 0:
                lines.append(f"  bound / found        {self.bound / m.adversarial_max:.3g}x")
        where = m.output_scale_source or "reference inputs"
        if self.vacuous is True:
            lines.append(f"  VACUOUS: the bound exceeds the output scale ({where}); it "
                         "certifies nothing useful there")
        elif self.vacuous is False:
            lines.append(f"  not vacuous: the bound is below the output scale ({where})")
        lines.extend(f"  note: {n}" for n in self.notes)
        lines.append(f"  float64 slack        relative {self.float_slack_rel:.2e}, absolute "
                     f"{self.float_slack_abs:.1e} (included)")
        return "\n".join(lines)

    # ---------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["per_output"] = list(self.per_output)
        d["by_method"] = {k: v.to_dict() for k, v in self.by_method.items()}
        d["input_domain"] = None if self.input_domain is None else self.input_domain.to_dict()
        return d

    @classmethod
    def from_json(cls, text: str) -> Certificate:
        return cls.from_dict(parse_json(text, "the certificate", CertificateError))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Certificate:
        return cls.from_json(read_text_file(path, "certificate file", CertificateError))

    @classmethod
    def from_dict(cls, data: Any) -> Certificate:
        """Validate ``data`` against ``schemas/certificate.json`` (every violation is one
        line naming the field) and build the certificate."""
        names = {f.name for f in fields(cls)}
        validate(data, "certificate", "certificate", CertificateError, extra_fields=names)
        old = data["schema"] != SCHEMA
        if old and ("by_method" in data or "input_domain" in data):
            raise CertificateError(f"a {data['schema']!r} certificate cannot have the fields "
                                   "'by_method' or 'input_domain' (schema 2)")
        kw = dict(data)
        kw["measurements"] = Measurements(**kw["measurements"])
        kw["schema"] = SCHEMA  # read as (upgraded to) the current schema
        kw["by_method"] = {str(k): MethodBound.from_dict(v)
                           for k, v in (kw.get("by_method") or {}).items()}
        if kw.get("input_domain") is not None:
            try:
                kw["input_domain"] = InputDomain.from_dict(kw["input_domain"])
            except ConfigurationError as exc:
                raise CertificateError(f"field 'input_domain': {exc}") from None
        kw["notes"] = tuple(kw.get("notes", ()))
        kw["input_shape"] = tuple(int(s) for s in kw["input_shape"])
        kw["per_output"] = tuple(float(v) for v in kw["per_output"])
        for name in ("bound", "radius", "factor", "path_metric", "float_slack_rel",
                     "float_slack_abs", "path_norm_original", "path_norm_compressed"):
            kw[name] = float(kw[name])
        # ``bound`` is not cross-checked against ``by_method`` here: an edited bound is
        # for the digest and bound checks of ``verify`` to report (see export.verify).
        return cls(**kw)
