"""The certification tier's base class and its inputs and result: :class:`GraphPair`
(the traced pair a tier bounds), :class:`TierBound` (what a tier's ``_bound`` returns)
and :class:`Tier` (the template method :meth:`Tier.bound`). The built-in tiers, the
registry and its documentation are in :mod:`certcompress.bounds.tiers` (which
re-exports these); a tier defined below that module (one it registers itself, such as
:mod:`certcompress.equivalence.tier`) subclasses :class:`Tier` from here, so the
registration does not make an import cycle. docs/adding-a-tier.md.

:meth:`Tier.recheck` is how ``verify_onnx(recertify=True)`` re-checks a bound a
certificate states for the tier: by default it recomputes the bound (with the options the
certificate records) and requires equality within ``RECERTIFY_RTOL``; a tier whose bound
depends on a budget (``bab``) overrides it with a one-sided proof of the stated bound.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from ..certificate import WORST_CASE, MethodBound
from ..domain import InputDomain
from ..errors import ConfigurationError, NumericalRangeError
from ..ir.graph import Graph
from .actquant import quantizer_nodes
from .arithmetic import Float32Error, with_float32
from .pathmetric import PathMetric, graph_path_metric
from .propagation.device import recheck_device
from .propagation.engine import PropagationOptions

__all__ = ["GraphPair", "TierBound", "Tier", "RECERTIFY_RTOL", "compare_values"]

#: relative tolerance of re-checking a stated bound against a recomputed one (far above
#: float64 reordering, far below any meaningful edit); plus an absolute ``1e-12``
RECERTIFY_RTOL = 1e-9
RECERTIFY_ATOL = 1e-12


def differs(stated: float, recomputed: float) -> bool:
    """Whether two values differ by more than the recertification tolerance."""
    return abs(stated - recomputed) > RECERTIFY_RTOL * max(abs(stated), abs(recomputed)) \
        + RECERTIFY_ATOL


def at_least(stated: float, recomputed: float) -> bool:
    """Whether ``stated`` is at least ``recomputed`` (a sound bound), with no tolerance:
    a one-sided claim below a recomputed bound must be proven, however close it is
    (False for NaN)."""
    return bool(stated >= recomputed)


def compare_values(what: str, stated: float | tuple[float, ...],
                   recomputed: float | tuple[float, ...], problems: list[str]) -> None:
    """Append to ``problems`` where ``stated`` and ``recomputed`` (scalars or equally long
    tuples of upper bounds) disagree, naming the first disagreement: a stated value
    below the recomputed one by any amount (the unsafe direction has no tolerance; NaN
    never passes), or above it beyond the recertification tolerance (not what these
    weights give)."""
    s = (stated,) if isinstance(stated, float | int) else tuple(stated)
    r = (recomputed,) if isinstance(recomputed, float | int) else tuple(recomputed)
    if len(s) != len(r):
        problems.append(f"{what}: {len(s)} values stated, {len(r)} recomputed")
        return
    bad = [i for i, (a, b) in enumerate(zip(s, r))
           if not at_least(float(a), float(b)) or differs(float(a), float(b))]
    if bad:
        i = bad[0]
        where = "" if len(s) == 1 else f"[{i}] ({len(bad)} of {len(s)} differ)"
        side = "larger than" if s[i] > r[i] else "SMALLER than" if s[i] < r[i] else \
            "not comparable with"
        problems.append(f"{what}{where} states {s[i]:.10g}, {side} the recomputed "
                        f"{r[i]:.10g}")


# ---------------------------------------------------------------------- inputs
@dataclass(eq=False)
class GraphPair:
    """The traced original and compressed graphs a tier bounds (same structure, same
    input shape). The path-metric between them is computed once, on first use, and
    shared by every tier and by the certificate."""

    original: Graph
    compressed: Graph
    _path_metric: PathMetric | None = field(default=None, repr=False)
    radius: float | None = None  # max ||x||_inf over the domain: needed with activation quantizers

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.original.input_shape)

    @property
    def path_metric(self) -> PathMetric:
        if self._path_metric is None:
            self._path_metric = graph_path_metric(self.original, self.compressed, self.radius)
        return self._path_metric

    def path_metric_over(self, radius: float) -> PathMetric:
        """The path-metric for a domain of radius ``radius``: the shared one, unless the
        graphs quantize activations (their clipping term depends on the radius)."""
        if not (quantizer_nodes(self.original) or quantizer_nodes(self.compressed)):
            return self.path_metric
        if self.radius is None and self._path_metric is None:
            self.radius = float(radius)
        if self.radius == float(radius):
            return self.path_metric
        return graph_path_metric(self.original, self.compressed, float(radius))


@dataclass(frozen=True)
class TierBound:
    """What a tier's ``_bound`` returns: the l1 ``bound``, the ``per_output`` bounds,
    whether the bound is the method's ``exact`` value, its relative float slack
    (``float_slack_rel``: the outward rounding margin included in the bound, 0 when the
    tier computes in exact arithmetic) and method-specific ``details`` (JSON scalars)."""

    bound: float
    per_output: tuple[float, ...]
    exact: bool
    float_slack_rel: float
    details: Mapping[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------- base class
class Tier(ABC):
    """Base class of certification tiers (see the module doc and docs/adding-a-tier.md).

    Subclasses set ``name`` (what ``methods=`` and ``--method`` take), ``summary`` (one
    line for listings), ``scope`` (default :data:`WORST_CASE`: a bound over every input
    of the domain), ``options_type`` (the class of the options ``_bound`` accepts, None
    for none), ``default_with_domain`` (run by ``certify`` when it is given a domain and
    no ``methods``), ``measure_cost`` (time a float64 forward pass so the certificate
    states this tier's cost in forward passes) and implement :meth:`_bound`. Call :meth:`bound`, never ``_bound``.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    scope: ClassVar[str] = WORST_CASE
    options_type: ClassVar[type | None] = None
    default_with_domain: ClassVar[bool] = False
    measure_cost: ClassVar[bool] = True

    @abstractmethod
    def _bound(self, pair: GraphPair, domain: InputDomain, options: Any) -> TierBound:
        """The bound over ``domain`` (already checked against the pair's input shape);
        ``options`` is None or an instance of ``options_type``."""

    def own_options(self, options: object) -> Any:
        """``options`` when this tier takes options of its type, else None (so one set of
        options, e.g. ``PropagationOptions``, can be offered to every tier)."""
        ok = self.options_type is not None and isinstance(options, self.options_type)
        return options if ok else None

    def stated_options(self, stated: MethodBound) -> Any:
        """The options to recompute ``stated`` (this tier's entry of a certificate) with:
        for :class:`PropagationOptions` tiers the ``intermediate`` mode and the
        optimized-slope settings (``slope_steps``, ``slope_lr``) and the row budgets
        (``sign_rows_budget``, absent: ``"auto"``, which gives every sign vector wherever
        the tier records no budget, or every sign vector for a certificate made before the
        budget, which records no ``sign_rows_used``; ``crown_rows_per_node``, absent: none)
        it records, on the CPU, or on a GPU for an entry computed on one where a GPU is
        present (:func:`.propagation.device.recheck_device`), else
        None (the defaults). Override when a tier records other options."""
        if self.options_type is PropagationOptions:
            d = stated.details
            sign_rows, crown_rows = d.get("sign_rows_budget"), d.get("crown_rows_per_node")
            restated: int | Literal["auto"] | None = \
                "auto" if sign_rows is None else int(sign_rows)
            if sign_rows is None and d.get("sign_vectors") is True \
                    and "sign_rows_used" not in d:
                # made before the sign-vector budget: it maximized over every sign vector
                restated = None
            return PropagationOptions(intermediate=d.get("intermediate", "crown"),
                                      slope_steps=int(d.get("slope_steps") or 0),
                                      slope_lr=float(d.get("slope_lr") or 0.1),
                                      sign_rows=restated,
                                      crown_rows_per_node=None if crown_rows is None
                                      else int(crown_rows),
                                      device=recheck_device(d.get("device")))
        return None

    def recheck(self, pair: GraphPair, domain: InputDomain, stated: MethodBound,
                float32: Float32Error | None = None) -> tuple[MethodBound, list[str]]:
        """Re-check ``stated``, this tier's entry of a certificate, for ``pair`` over
        ``domain`` (``verify_onnx(recertify=True)``); ``float32``: the models' float32
        rounding error when the certificate states float32 arithmetic (added to the
        recomputed bound by :func:`~.arithmetic.with_float32`). Returns ``(value,
        problems)``: the bound the certificate may rely on for this tier and what is
        wrong with the stated one (empty: accepted).

        The default (a template step a tier may override): recompute with
        :meth:`stated_options` and require the stated l1 and per-output bounds to be at
        least the recomputed ones, with no tolerance (a smaller stated bound is not
        proven), and at most ``RECERTIFY_RTOL`` above them (a larger one is not what
        these weights give): :func:`compare_values`."""
        tier = self.bound(pair, domain, self.stated_options(stated))
        if float32 is not None:
            tier = with_float32(tier, float32)
        problems: list[str] = []
        compare_values(f"tier '{self.name}' bound", stated.bound, tier.bound, problems)
        compare_values(f"tier '{self.name}' per-output bound", stated.per_output,
                       tier.per_output, problems)
        return tier, problems

    def bound(self, pair: GraphPair, domain: InputDomain, options: Any = None) -> MethodBound:
        """This tier's :class:`MethodBound` for ``pair`` over ``domain``: inputs checked,
        the result checked finite and non-negative, wall time and float slack recorded."""
        if not isinstance(pair, GraphPair):
            raise ConfigurationError(f"tier '{self.name}': pair must be a GraphPair, got "
                                     f"{type(pair).__name__}")
        if not isinstance(domain, InputDomain):
            raise ConfigurationError(f"tier '{self.name}': domain must be an InputDomain, got "
                                     f"{type(domain).__name__}")
        if tuple(domain.shape) != pair.input_shape:
            raise ConfigurationError(f"the domain's shape {domain.shape} differs from the traced "
                                     f"input shape {pair.input_shape}")
        if options is not None and (self.options_type is None
                                    or not isinstance(options, self.options_type)):
            want = "no options" if self.options_type is None else \
                f"a {self.options_type.__name__} or None"
            raise ConfigurationError(f"tier '{self.name}' takes {want}, got "
                                     f"{type(options).__name__}")
        t0 = time.perf_counter()
        result = self._bound(pair, domain, options)
        seconds = time.perf_counter() - t0
        if not isinstance(result, TierBound):
            raise TypeError(f"tier '{self.name}': _bound must return a TierBound, got "
                            f"{type(result).__name__}")
        values = (result.bound, *result.per_output)
        if not all(math.isfinite(v) for v in values):
            raise NumericalRangeError(
                f"the '{self.name}' tier's bound overflows float64 (bound {result.bound:.3g}, "
                f"largest per-output bound {max(result.per_output, default=0.0):.3g}); "
                "certify over a smaller domain or use another tier")
        if any(v < 0 for v in values):
            raise ArithmeticError(f"internal error: tier '{self.name}' returned a negative "
                                  f"bound ({min(values)!r}); please report it")
        return MethodBound(
            method=self.name, bound=float(result.bound),
            per_output=tuple(float(v) for v in result.per_output), scope=self.scope,
            seconds=seconds, exact=bool(result.exact),
            details={**result.details, "float_slack_rel": float(result.float_slack_rel)})
