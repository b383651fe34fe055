"""The certificate: a frozen, JSON-serializable statement of a certified deviation bound.

A certificate says: for every input ``x`` of shape ``input_shape`` in its domain
(``input_domain``, inside the ball ``||x||_inf <= radius``), ``||f(x) - f'(x)||_1 <= bound``,
where ``f`` and ``f'`` are the models whose parameter digests it records, evaluated in exact
arithmetic (or, when ``arithmetic`` is ``"float32"``, as executed in IEEE float32). Each
certification tier's result is one :class:`MethodBound` in ``by_method`` (the single
source of the tier's numbers, with typed ``details``); ``bound`` is the smallest sound
worst-case tier bound. The path-metric tier bounds ``max(radius, 1) * path_metric``
(Theorem 3.1 of Gonon et al., docs/path-metrics.md, section 3), with the float64 rounding slack it
states. Since ``||.||_inf <= ||.||_2 <= ||.||_1``, the same number bounds the l2 and l_inf
deviation. Measured deviations (reference data and adversarial search) are recorded
beside it, and ``vacuous`` says when the bound exceeds the output scale measured on the
reference data.

Schema 3 (this version) stores the path-metric numbers only in
``by_method["path-metric"].details``; ``cert.path_metric``, ``cert.factor`` and the other
path-metric attributes of schemas 1 and 2 are read-only properties derived from it (None
when the tier did not run). Schemas 1 and 2 still load (upgraded; docs/formats.md).
"""

from __future__ import annotations

import math
import os
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, Generic, TypeVar, cast, overload

from ._frozen import FrozenMap, freeze
from ._io import JsonRecord, parse_json, read_text_file
from ._schema import field_name, validate
from .capture.plugins import plugin_manager
from .domain import InputDomain
from .errors import CertificateError, ConfigurationError

__all__ = ["BoundsDetails", "Certificate", "Measurements", "MethodBound", "PathMetricDetails",
           "ROW_COLUMNS", "SCHEMA", "SCHEMAS_READ", "TierDetails", "WORST_CASE",
           "add_details_hook", "details_type", "register_details"]

SCHEMA = "certcompress.certificate/3"
SCHEMAS_READ = ("certcompress.certificate/1", "certcompress.certificate/2", SCHEMA)
WORST_CASE = "worst case over the input domain: max over x in D of ||f(x) - f'(x)||_1"


# ----------------------------------------------------------------- typed tier details
_SCALAR_TYPES: dict[str, tuple[type, ...]] = {"float": (int, float), "int": (int,),
                                              "bool": (bool,), "str": (str,)}


@dataclass(frozen=True, kw_only=True, eq=False)
class TierDetails(Mapping[str, Any]):
    """The typed details of one tier's result (a base class: a tier defines a frozen,
    keyword-only subclass with its own fields and registers it with
    :func:`register_details`).

    A details object is also a read-only mapping of its fields (``details["factor"]``,
    ``dict(details)``, the JSON form); the optional fields that are None are left out of
    the mapping. The optional fields here are the ones ``arithmetic="float32"`` adds to
    every tier (:func:`certcompress.bounds.arithmetic.with_float32`): the exact-arithmetic
    bound and both models' float32 rounding error."""

    #: the relative float slack included in the bound (the Tier base records it)
    float_slack_rel: float | None = None
    arithmetic: str | None = None
    bound_exact: float | None = None
    float32_error: float | None = None
    float32_error_original: float | None = None
    float32_error_compressed: float | None = None

    def _present(self) -> list[str]:
        return [f.name for f in fields(self)
                if not (f.default is None and getattr(self, f.name) is None)]

    def __getitem__(self, key: str) -> Any:
        if key in self._present():
            return getattr(self, key)
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._present())

    def __len__(self) -> int:
        return len(self._present())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self.items()) == dict(other.items())
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self.items()))

    @classmethod
    def from_mapping(cls, method: str, data: Mapping[str, Any]) -> TierDetails:
        """Validated details of tier ``method`` from a mapping (a JSON object): every
        required field present, no unknown field, each of its declared type; raises
        :class:`CertificateError` naming the field."""
        where = f"by_method entry '{field_name(method)}': details"
        hints = typing.get_type_hints(cls)
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(field_name(k) for k in data if k not in known)
        if unknown:
            raise CertificateError(f"{where} has unknown field(s): {', '.join(unknown[:5])} "
                                   f"(the '{method}' tier records {', '.join(known)})")
        missing = [n for n, f in known.items() if n not in data and f.default is MISSING]
        if missing:
            raise CertificateError(f"{where} is missing field(s): {', '.join(missing)}")
        kw: dict[str, Any] = {}
        for name, value in data.items():
            kw[name] = _typed(f"{where}: field '{name}'", hints[name], value)
        return cls(**kw)


def _typed(where: str, hint: Any, value: Any) -> Any:
    """``value`` checked against a details field's type (float, int, bool, str, or one of
    them or None): ints are accepted for floats; anything else raises CertificateError."""
    args = typing.get_args(hint) or (hint,)
    if value is None:
        if type(None) in args:
            return None
        raise CertificateError(f"{where} must not be null")
    for t in args:
        if t is type(None):
            continue
        ok = _SCALAR_TYPES.get(t.__name__, (t,))
        if isinstance(value, ok) and (t is bool or not isinstance(value, bool)):
            if t is float:
                if not math.isfinite(float(value)):
                    raise CertificateError(f"{where} must be finite, got {value!r}")
                return float(value)
            return value
    names = " or ".join(a.__name__ for a in args if a is not type(None))
    raise CertificateError(f"{where} must be {names}, got {type(value).__name__} "
                           f"({str(value)[:40]!r})")


@dataclass(frozen=True, kw_only=True, eq=False)
class PathMetricDetails(TierDetails):
    """The path-metric tier's numbers: ``bound = factor * path_metric`` with
    ``factor = max(r, 1)`` (``r = max ||x||_inf`` over the domain), the path-norms of
    both models, what changed and the float64 rounding slack included in the value
    (docs/bounds.md)."""

    factor: float
    path_metric: float
    #: how the path-metric was computed (exactly, or which upper bound of it)
    computation: str
    #: the inputs the bound holds for, in words
    covers: str
    #: whether ``path_metric`` is the path-metric itself (not a further upper bound)
    path_metric_exact: bool
    path_norm_original: float
    path_norm_compressed: float
    sign_changes: int
    changed_parameters: int
    float_slack_rel: float
    float_slack_abs: float


@dataclass(frozen=True, kw_only=True, eq=False)
class BoundsDetails(TierDetails):
    """The bound-propagation tier's run: the intermediate-bound mode, the size of the
    lowered pair, the back-substitution rows, and the float64 outward rounding margin;
    with optimized ReLU slopes (``PropagationOptions.slope_steps``) the steps, their
    learning rate and how many output rows were optimized (absent otherwise); whether
    chain pairs also went through the differential single pass, whether it gave the
    stated bound, and both passes' l1 bounds; with the sign-vector l1 bound its row
    budget (``PropagationOptions.sign_rows``, absent: none), the rows used, whether the
    search was exhaustive and how (``"all"`` sign vectors or ``"branch-and-bound"``);
    with a CROWN row budget (``PropagationOptions.crown_rows_per_node``) the budget and
    how many unstable neurons kept their interval bounds because of it."""

    intermediate: str
    primitive_nodes: int
    relu_nodes: int
    backsub_rows: int
    skipped_nodes: int
    sign_vectors: bool
    rounding_margin_rel: float
    rounding: str
    domain: str
    slope_steps: int | None = None
    slope_lr: float | None = None
    slope_rows: int | None = None
    #: whether chain pairs were routed through the differential single pass as well
    #: (``PropagationOptions.chain``; absent in certificates made before the routing)
    chain: bool | None = None
    #: whether that pass gave the stated l1 bound (smaller than the engine's)
    differential_single_pass: bool | None = None
    #: the l1 bound of the differential single pass (absent: not a chain pair / off)
    chain_bound: float | None = None
    #: the l1 bound of the propagation engine alone
    engine_bound: float | None = None
    sign_rows_budget: int | None = None
    sign_rows_used: int | None = None
    sign_exhaustive: bool | None = None
    sign_search: str | None = None
    crown_rows_per_node: int | None = None
    interval_neurons: int | None = None
    #: where the bound was computed (``PropagationOptions.device``: ``"cpu"``,
    #: ``"cuda:N"``; absent in certificates made before the option: the CPU). A bound
    #: computed on a GPU is stated ``2^-31`` relative higher (docs/bounds.md, "On a GPU")
    device: str | None = None
    #: how the ReLU split treated near-ties (``"tolerant"``: by a tie width, so the last
    #: bits of another summation order do not tip it; absent in certificates made before
    #: the rule, re-checked with ``"strict"``, the plain comparison; docs/bounds.md,
    #: "On a GPU")
    split_ties: str | None = None


_DETAILS: dict[str, type[TierDetails]] = {"path-metric": PathMetricDetails,
                                          "bounds": BoundsDetails}


def register_details(method: str, cls: type[TierDetails]) -> None:
    """Declare the typed details of tier ``method`` (a frozen keyword-only
    :class:`TierDetails` subclass). Tiers without a registration keep their details as a
    read-only mapping of JSON scalars."""
    if not (isinstance(cls, type) and issubclass(cls, TierDetails)):
        raise ConfigurationError(f"details of tier '{method}' must be a TierDetails "
                                 f"subclass, got {cls!r}")
    _DETAILS[str(method)] = cls


def details_type(method: str) -> type[TierDetails] | None:
    """The registered details class of tier ``method`` (None: untyped)."""
    return _DETAILS.get(method)


_DETAILS_HOOKS: list[Callable[[], None]] = []


def add_details_hook(hook: Callable[[], None]) -> None:
    """Register ``hook`` (no arguments), called when a certificate being loaded names a
    tier whose details class is not registered yet: it makes pending registrations take
    effect. The tier registry (:mod:`certcompress.bounds.tiers`, a higher layer) installs
    one that runs the loaded plugins' ``register_tiers`` hooks, where tiers call
    :func:`register_details`. Adding the same hook twice keeps one."""
    if hook not in _DETAILS_HOOKS:
        _DETAILS_HOOKS.append(hook)


def _ensure_details(method: str) -> None:
    """Before tier ``method``'s details are read from a file: when it has no details
    class yet, load the installed plugins (entry points; a plugin with a tier imports
    the tier registry's module, which installs its hook) and run the hooks, so that a
    certificate loaded before any ``certify`` or ``tier_registry()`` still gets the
    plugin tier's typed details."""
    if method in _DETAILS:
        return
    plugin_manager()
    for hook in tuple(_DETAILS_HOOKS):
        hook()


def _details(method: str, data: Mapping[str, Any]) -> Mapping[str, Any]:
    cls = _DETAILS.get(method)
    if cls is None:
        return freeze(data)
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise CertificateError(f"by_method entry '{field_name(method)}': details must be an "
                               f"object, got {type(data).__name__}")
    return cls.from_mapping(method, data)


@dataclass(frozen=True)
class MethodBound:
    """One tier's certified bound: ``bound`` on the l1 deviation and ``per_output``
    bounds on each output's absolute deviation, both over ``scope``; ``seconds`` of
    wall time and ``forward_equivalents`` (seconds over one float64 forward pass of the
    original, measured in the same run; None when not measured); ``exact`` when the
    bound is the method's exact value (not a further upper bound of it); ``vacuous``
    when it exceeds the measured output scale (None when not measured); ``details``:
    the method's numbers, typed (:class:`PathMetricDetails`, :class:`BoundsDetails`, or
    a read-only mapping of JSON scalars for an unregistered tier). A plain mapping given
    as ``details`` is validated and converted."""

    method: str
    bound: float
    per_output: tuple[float, ...]
    scope: str
    seconds: float
    exact: bool
    vacuous: bool | None = None
    sound: bool = True
    forward_equivalents: float | None = None
    details: Mapping[str, Any] = field(default_factory=FrozenMap)

    def __post_init__(self) -> None:
        object.__setattr__(self, "details", _details(self.method, self.details))

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
        details = data.get("details") or {}
        if not isinstance(details, dict):
            raise CertificateError("by_method field 'details' must be a JSON object")
        _ensure_details(str(data["method"]))
        try:
            return cls(method=str(data["method"]), bound=float(b),
                       per_output=tuple(float(v) for v in data["per_output"]),
                       scope=str(data["scope"]), seconds=float(data["seconds"]),
                       exact=bool(data["exact"]), vacuous=data.get("vacuous"),
                       sound=bool(data.get("sound", True)),
                       forward_equivalents=None if data.get("forward_equivalents") is None
                       else float(data["forward_equivalents"]),
                       details=details)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, CertificateError):
                raise
            raise CertificateError(f"by_method entry is malformed: {exc}") from None

    def with_measurements(self, output_scale: float | None,
                          forward_seconds: float | None) -> MethodBound:
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


#: the columns of :meth:`Certificate.to_row`, in order (one vocabulary for every report
#: and the results store; ``bound_<tier>`` columns follow, one per tier that ran)
ROW_COLUMNS = ("certified_bound", "bound_method", "path_metric", "path_metric_exact", "method",
               "factor", "baseline_bound_linf", "path_norm_original", "path_norm_compressed",
               "sign_changes", "changed_parameters", "deviation_mean", "deviation_max",
               "adversarial_max", "output_scale", "vacuous", "original_digest",
               "compressed_digest")

#: the schema-1/2 top-level fields that schema 3 keeps in ``by_method["path-metric"]``
_PM_FIELDS = ("factor", "path_metric", "path_metric_exact", "method", "path_norm_original",
              "path_norm_compressed", "sign_changes", "changed_parameters", "float_slack_rel",
              "float_slack_abs")

_T = TypeVar("_T")


class _PathMetricAttr(Generic[_T]):
    """A read-only attribute of :class:`Certificate` derived from the path-metric tier's
    details (``by_method["path-metric"].details``): the details field ``key`` (by
    default the attribute's own name), or, when the tier did not run, ``absent(cert)``
    (None when not given). Schemas 1 and 2 stored these numbers at the top level; schema
    3 keeps them only in the tier's details, and this descriptor keeps the old names."""

    def __init__(self, key: str | None = None, *, doc: str,
                 absent: Callable[[Certificate], _T] | None = None) -> None:
        self._key = key or ""
        self._name = ""
        self._absent = absent
        self.__doc__ = doc

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name
        self._key = self._key or name

    @overload
    def __get__(self, cert: None, owner: type | None = None) -> _PathMetricAttr[_T]: ...

    @overload
    def __get__(self, cert: Certificate, owner: type | None = None) -> _T: ...

    def __get__(self, cert: Certificate | None,
                owner: type | None = None) -> _T | _PathMetricAttr[_T]:
        if cert is None:
            return self
        d = cert.path_metric_details
        if d is not None:
            return cast(_T, getattr(d, self._key))
        return cast(_T, None) if self._absent is None else self._absent(cert)

    def __set__(self, cert: Certificate, value: object) -> None:
        raise AttributeError(f"Certificate.{self._name} is read-only: it is derived from "
                             "by_method['path-metric'].details")


@dataclass(frozen=True)
class Certificate(JsonRecord):
    """A certified bound on the output deviation between two models (see module doc)."""

    bound: float
    per_output: tuple[float, ...]
    input_shape: tuple[int, ...]
    radius: float
    original_digest: str
    compressed_digest: str
    baseline_linf: float | None
    baseline_note: str
    measurements: Measurements
    vacuous: bool | None
    domain: str
    model_name: str = "model"
    #: the dtype the bounds were computed in (the traced graphs' parameters)
    working_dtype: str = "float64"
    norm: str = "l1 (also bounds l2 and l_inf)"
    versions: Mapping[str, str] = field(default_factory=FrozenMap)
    created_utc: str = ""
    by_method: Mapping[str, MethodBound] = field(default_factory=FrozenMap)
    input_domain: InputDomain | None = None
    #: explanations of surprising results (an exactly-zero bound, a vacuous bound...)
    notes: tuple[str, ...] = ()
    #: the arithmetic the bound covers: "exact" (the models evaluated exactly) or
    #: "float32" (as executed in IEEE float32, any summation order; both models' rounding
    #: error included, docs/bounds.md "Arithmetic")
    arithmetic: str = "exact"
    schema: str = SCHEMA

    def __post_init__(self) -> None:
        object.__setattr__(self, "versions", freeze(self.versions))
        object.__setattr__(self, "by_method", freeze(self.by_method))
        object.__setattr__(self, "notes", tuple(self.notes))

    # ------------------------------------------------- derived from by_method
    @property
    def path_metric_details(self) -> PathMetricDetails | None:
        """The path-metric tier's details (None when that tier did not run)."""
        t = self.by_method.get("path-metric")
        d = None if t is None else t.details
        return d if isinstance(d, PathMetricDetails) else None

    factor = _PathMetricAttr[float](
        doc="``max(radius, 1)``: the path-metric tier's factor (as it recorded it).",
        absent=lambda cert: max(float(cert.radius), 1.0))
    path_metric = _PathMetricAttr[float | None](
        doc="An upper bound of (or, when ``path_metric_exact``, the) path-metric "
            "``||Phi(theta) - Phi(theta')||_1`` (None when the path-metric tier did not run).")
    path_metric_exact = _PathMetricAttr[bool | None](
        doc="Whether ``path_metric`` is the path-metric itself (None: tier not run).")
    method = _PathMetricAttr[str | None](
        "computation", doc="How the path-metric was computed (None: tier not run).")
    path_norm_original = _PathMetricAttr[float | None](
        doc="The original's l1 path-norm (None: path-metric tier not run).")
    path_norm_compressed = _PathMetricAttr[float | None](
        doc="The compressed model's l1 path-norm (None: path-metric tier not run).")
    sign_changes = _PathMetricAttr[int | None](
        doc="Parameters whose sign changed (None: path-metric tier not run).")
    changed_parameters = _PathMetricAttr[int | None](
        doc="Parameters that differ (None: path-metric tier not run).")
    float_slack_rel = _PathMetricAttr[float | None](
        doc="The path-metric's relative float64 rounding slack (included; None: not run).")
    float_slack_abs = _PathMetricAttr[float | None](
        doc="The path-metric's absolute float64 rounding slack (included; None: not run).")

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
        pm = self.path_metric_details
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
        ]
        if pm is not None:
            lines += [
                f"  path-metric          {pm.path_metric:.6g}   ({pm.computation})",
                f"  path-norms           original {pm.path_norm_original:.6g}, compressed "
                f"{pm.path_norm_compressed:.6g}",
                f"  changed parameters   {pm.changed_parameters:,} "
                f"({pm.sign_changes:,} sign changes)",
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
        if pm is not None:
            lines.append(f"  float64 slack        relative {pm.float_slack_rel:.2e}, absolute "
                         f"{pm.float_slack_abs:.1e} (included)")
        return "\n".join(lines)

    def to_row(self) -> dict[str, Any]:
        """The certificate as one flat table row, the same columns for every report and
        the results store (:data:`ROW_COLUMNS`, then ``bound_<tier>`` for each tier that
        ran, ``-`` in the tier name written ``_``); a value not measured or a tier not run
        is NaN (None for the flags ``path_metric_exact``, ``method`` and ``vacuous``)."""
        nan = float("nan")
        m = self.measurements

        def num(v: float | int | None) -> float | int:
            return nan if v is None else v

        row: dict[str, Any] = {
            "certified_bound": self.bound, "bound_method": self.bound_method,
            "path_metric": num(self.path_metric), "path_metric_exact": self.path_metric_exact,
            "method": self.method, "factor": self.factor,
            "baseline_bound_linf": nan if self.baseline_linf is None
            else self.factor * self.baseline_linf,
            "path_norm_original": num(self.path_norm_original),
            "path_norm_compressed": num(self.path_norm_compressed),
            "sign_changes": num(self.sign_changes),
            "changed_parameters": num(self.changed_parameters),
            "deviation_mean": num(m.deviation_mean), "deviation_max": num(m.deviation_max),
            "adversarial_max": num(m.adversarial_max), "output_scale": num(m.output_scale),
            "vacuous": self.vacuous, "original_digest": self.original_digest,
            "compressed_digest": self.compressed_digest,
        }
        for name, t in self.by_method.items():
            row[f"bound_{name.replace('-', '_')}"] = t.bound
        return row

    # ---------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema, "bound": self.bound, "per_output": list(self.per_output),
            "input_shape": list(self.input_shape), "radius": self.radius,
            "original_digest": self.original_digest,
            "compressed_digest": self.compressed_digest, "baseline_linf": self.baseline_linf,
            "baseline_note": self.baseline_note,
            "measurements": {f.name: getattr(self.measurements, f.name)
                             for f in fields(self.measurements)},
            "vacuous": self.vacuous, "domain": self.domain, "model_name": self.model_name,
            "working_dtype": self.working_dtype, "norm": self.norm,
            "versions": dict(self.versions), "created_utc": self.created_utc,
            "by_method": {k: v.to_dict() for k, v in self.by_method.items()},
            "input_domain": None if self.input_domain is None else self.input_domain.to_dict(),
            "notes": list(self.notes), "arithmetic": self.arithmetic,
        }

    @classmethod
    def from_json(cls, text: str) -> Certificate:
        return cls.from_dict(parse_json(text, "the certificate", CertificateError))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Certificate:
        return cls.from_json(read_text_file(path, "certificate file", CertificateError))

    @classmethod
    def from_dict(cls, data: Any) -> Certificate:
        """Validate ``data`` against ``schemas/certificate.json`` (every violation is one
        line naming the field) and build the certificate. Schema 1 and 2 files are
        upgraded: their top-level path-metric fields become (or complete) the
        ``by_method["path-metric"]`` entry (a schema-1 file's only tier)."""
        names = {f.name for f in fields(cls)}
        validate(data, "certificate", "certificate", CertificateError, extra_fields=names)
        version = data["schema"]
        legacy = [n for n in _PM_FIELDS if n in data]
        if version == SCHEMA:
            if legacy:
                raise CertificateError(
                    f"a schema-3 certificate keeps the path-metric numbers in "
                    f"by_method['path-metric'].details, not at the top level: unknown "
                    f"field(s) {', '.join(legacy)}")
        else:
            missing = [n for n in _PM_FIELDS if n not in data]
            if missing:
                raise CertificateError(f"a {version!r} certificate is missing field(s): "
                                       f"{', '.join(missing)}")
            if version == SCHEMAS_READ[0] and ("by_method" in data or "input_domain" in data):
                raise CertificateError(f"a {version!r} certificate cannot have the fields "
                                       "'by_method' or 'input_domain' (schema 2)")
        kw = {k: v for k, v in data.items() if k not in _PM_FIELDS}
        kw["measurements"] = Measurements(**kw["measurements"])
        kw["schema"] = SCHEMA  # read as (upgraded to) the current schema
        raw = dict(kw.get("by_method") or {})
        if version != SCHEMA:
            raw = _upgrade_tiers(data, raw)
        kw["by_method"] = {str(k): MethodBound.from_dict(v) for k, v in raw.items()}
        if kw.get("input_domain") is not None:
            try:
                kw["input_domain"] = InputDomain.from_dict(kw["input_domain"])
            except ConfigurationError as exc:
                raise CertificateError(f"field 'input_domain': {exc}") from None
        kw["notes"] = tuple(kw.get("notes", ()))
        kw["input_shape"] = tuple(int(s) for s in kw["input_shape"])
        kw["per_output"] = tuple(float(v) for v in kw["per_output"])
        for name in ("bound", "radius"):
            kw[name] = float(kw[name])
        # ``bound`` is not cross-checked against ``by_method`` here: an edited bound is
        # for the digest and bound checks of ``verify`` to report (see export.verify).
        return cls(**kw)


def _upgrade_tiers(data: Mapping[str, Any], tiers: dict[str, Any]) -> dict[str, Any]:
    """Schema 1/2 -> 3: the top-level path-metric numbers move into the path-metric
    tier's details. A schema-2 file that ran the path-metric tier keeps its entry (its
    details completed); a schema-1 file, which had no tiers, gets the entry its bound
    came from (``factor * path_metric``; wall time not recorded: 0). A schema-2 file
    whose tiers did not include the path-metric keeps none (its top-level path-metric
    numbers described no tier of its bound and are not carried over)."""
    pm = {"factor": data["factor"], "path_metric": data["path_metric"],
          "computation": data["method"], "path_metric_exact": data["path_metric_exact"],
          "path_norm_original": data["path_norm_original"],
          "path_norm_compressed": data["path_norm_compressed"],
          "sign_changes": data["sign_changes"], "changed_parameters": data["changed_parameters"],
          "float_slack_rel": data["float_slack_rel"],
          "float_slack_abs": data["float_slack_abs"]}
    out = dict(tiers)
    entry = out.get("path-metric")
    if isinstance(entry, dict):
        details = entry.get("details")
        details = dict(details) if isinstance(details, dict) else {}
        out["path-metric"] = {**entry, "details": {**pm, **details}}
    elif data["schema"] == SCHEMAS_READ[0]:
        out["path-metric"] = {
            "method": "path-metric", "bound": data["bound"], "per_output": data["per_output"],
            "scope": WORST_CASE, "seconds": 0.0, "exact": data["path_metric_exact"],
            "details": {**pm, "covers": f"every x with ||x||_inf <= {float(data['radius']):.6g}"
                                        " (contains the domain)"}}
    return out
