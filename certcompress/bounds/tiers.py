"""Certification tiers: each method's bound, with its scope written plainly.

A tier is one way of bounding the output deviation ``||f(x) - f'(x)||_1`` of the
original ``f`` and the compressed ``f'``. Tiers of the same *scope* answer the same
question and may be combined by taking the minimum; tiers of different scopes may not.

A tier is a :class:`Tier` subclass registered in the :class:`TierRegistry` that
:func:`tier_registry` returns (built-in tiers, then those of loaded plugins through
their ``register_tiers(registry)`` hook). :meth:`Tier.bound` is a template method: it
checks the domain against the traced shape and the options' type, calls the subclass's
``_bound``, refuses a non-finite result (:class:`NumericalRangeError`, never an
infinite bound), and records the wall time and the float slack. ``certify``, the
pruning budget search, the bit allocation, scale's ``CertifyTask`` and the CLI take the
tier names from the registry; docs/adding-a-tier.md shows a new tier end to end.

``path-metric``
    ``max(r, 1) * path-metric`` (Theorem 3.1 of Gonon et al.) with
    ``r = max ||x||_inf`` over the domain: a worst case over the whole ball of radius r,
    hence over the domain. Cheap (a few forward passes), parameter-only, usually loose.
``bounds``
    differential bound propagation of the pair over the domain's box
    (:mod:`certcompress.bounds.propagation`): interval bounds on ``x``, ``x'`` and their
    difference, tightened by linear relaxations with back-substitution; per-output bounds
    ``max |f_o - f'_o|`` and an l1 bound that also maximizes ``<s, f - f'>`` over the
    sign vectors ``s`` when the output is small. Sound in float64 (outward margin
    stated in the result). A chain pair (MLP, plain CNN) also goes through the
    differential single pass of :mod:`certcompress.equivalence.chain`; per output and
    for the l1 bound the smaller bound is stated (``PropagationOptions.chain``).

``bab``
    branch-and-bound over the domain's box (:mod:`certcompress.equivalence.tier`): the
    maximum of the certified bounds over the leaf regions, never above the ``bounds``
    pass; opt-in (not run by default), it costs up to its time budget.

All three have the scope :data:`WORST_CASE`. The base class :class:`Tier` and its inputs
live in :mod:`certcompress.bounds.tierbase` (re-exported here).
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import torch

from .._attribution import Attributed
from ..capture.plugins import Plugin, plugin_manager
from ..certificate import WORST_CASE, MethodBound, add_details_hook
from ..domain import InputDomain
from ..equivalence.chain_bounds import chain_bounds as _chain_bounds
from ..equivalence.tier import BabTier
from ..errors import ConfigurationError, NumericalRangeError, PluginError
from ..ir.graph import Graph
from .numerics import round_up_sum
from .pathmetric import PathMetric
from .propagation.engine import (
    ROUNDING_NOTE,
    PairState,
    PropagationOptions,
    capped_row_max,
    output_bounds,
    output_upper_bounds,
    propagate,
    rows_per_chunk,
    sign_vector_order,
)
from .propagation.lowering import lower_pair
from .propagation.optimize import optimized_largest_row, optimized_output_upper_bounds
from .propagation.signs import resolve_sign_rows, sign_vector_search
from .tierbase import GraphPair, Tier, TierBound

__all__ = ["MethodBound", "WORST_CASE", "Tier", "TierBound", "GraphPair", "TierRegistry",
           "PathMetricTier", "BoundsTier", "tier_registry", "register_builtin_tiers",
           "check_methods", "path_metric_tier", "bounds_tier"]


# ---------------------------------------------------------------------- built-in tiers
class PathMetricTier(Tier):
    """``max(r, 1) * path-metric`` with ``r = max ||x||_inf`` over the domain."""

    name = "path-metric"
    summary = "max(r, 1) x path-metric over the ball ||x||_inf <= r (cheap, parameter-only)"
    measure_cost = False

    def _bound(self, pair: GraphPair, domain: InputDomain, options: Any) -> TierBound:
        radius = domain.radius
        pm = pair.path_metric_over(radius)
        factor = max(float(radius), 1.0)
        return TierBound(
            bound=factor * pm.value, per_output=tuple(factor * v for v in pm.per_output),
            exact=pm.exact, float_slack_rel=pm.float_slack_rel,
            details={"factor": factor, "path_metric": pm.value, "computation": pm.method,
                     "covers": f"every x with ||x||_inf <= {float(radius):.6g} (contains the "
                               "domain)",
                     "path_metric_exact": pm.exact, "path_norm_original": pm.path_norm_original,
                     "path_norm_compressed": pm.path_norm_compressed,
                     "sign_changes": pm.sign_changes, "changed_parameters": pm.changed_parameters,
                     "float_slack_rel": pm.float_slack_rel,
                     "float_slack_abs": pm.float_slack_abs})



class BoundsTier(Tier):
    """Differential bound propagation of the pair over the domain's box."""

    name = "bounds"
    summary = "differential bound propagation over the domain's box (tighter, costs more)"
    options_type = PropagationOptions
    default_with_domain = True

    def _bound(self, pair: GraphPair, domain: InputDomain, options: Any) -> TierBound:
        opts = options or PropagationOptions()
        lowered = lower_pair(pair.original, pair.compressed)
        lower = domain.lower_tensor().unsqueeze(0)
        upper = domain.upper_tensor().unsqueeze(0)
        state = propagate(lowered, lower, upper, opts)
        m = lowered.output_size
        eye = torch.eye(m, dtype=torch.float64, device=lower.device)
        ub, slope_rows = _output_rows(state, torch.cat([eye, -eye]), opts)
        crown = torch.maximum(ub[:m], ub[m:]).clamp(min=0.0)
        interval = output_bounds(state).dev()[0].clamp(min=0.0)  # widened per node already
        engine_per = torch.minimum(crown, interval)
        chain = _chain_bounds(lowered, domain, opts)
        chain_per = None if chain is None else chain[1]
        per = engine_per if chain_per is None else torch.minimum(engine_per, chain_per)
        if not bool(torch.isfinite(per).all()):
            raise NumericalRangeError(
                f"the bounds tier's output bounds overflow float64 (crown "
                f"{float(crown.max()):.3g}, interval {float(interval.max()):.3g}); certify "
                "over a smaller domain or use the path-metric tier")
        l1 = round_up_sum(per)
        if not math.isfinite(l1):
            raise NumericalRangeError(f"the bounds tier's l1 bound overflows float64 (largest "
                                      f"per-output bound {float(per.max()):.3g}, {per.numel()} "
                                      "outputs); certify over a smaller domain")
        engine_l1 = round_up_sum(engine_per)
        chain_l1 = None if chain is None else chain[2]
        sign_rows, sign_info = 0, dict[str, Any]()
        if 0 < m <= opts.sign_vectors_up_to:
            best, sign_rows, rows, sign_info = _sign_vector_max(state, ub[:m], ub[m:], per,
                                                                engine_l1, opts)
            slope_rows += rows
            engine_l1 = min(engine_l1, max(best, 0.0))
        # both passes are sound: the smallest of the combined per-output sum and each
        # pass's own l1 bound (docs/bounds.md, "Chain pairs")
        l1 = min(l1, engine_l1, math.inf if chain_l1 is None else chain_l1)
        return TierBound(
            bound=l1, per_output=tuple(float(v) for v in per), exact=False,
            float_slack_rel=float(state.eta) if chain is None else max(float(state.eta),
                                                                       chain[0]),
            details={"intermediate": opts.intermediate, "primitive_nodes": len(lowered.nodes),
                     "relu_nodes": lowered.relu_count,
                     "backsub_rows": int(state.stats.get("backsub_rows", 0)) + 2 * m
                     + sign_rows,
                     "skipped_nodes": int(state.stats.get("skipped_nodes", 0)),
                     "sign_vectors": sign_rows > 0, "rounding_margin_rel": state.eta,
                     "rounding": ROUNDING_NOTE, "domain": domain.describe(),
                     **_slope_details(opts, slope_rows), **sign_info,
                     **_crown_budget_details(opts, state),
                     "chain": opts.chain, "differential_single_pass": l1 < engine_l1,
                     **({"engine_bound": engine_l1} if math.isfinite(engine_l1) else {}),
                     **({} if chain_l1 is None or not math.isfinite(chain_l1)
                        else {"chain_bound": chain_l1})})

    def stated_options(self, stated: MethodBound) -> PropagationOptions:
        """The base class's options (``intermediate``, slopes) and whether chain pairs
        were routed through the differential single pass (``chain`` in the details; a
        certificate made before the routing records none: the engine alone), so that
        ``verify_onnx(recertify=True)`` recomputes the stated bound."""
        base = super().stated_options(stated)
        assert isinstance(base, PropagationOptions)
        return replace(base, chain=stated.details.get("chain") is True)


def _output_rows(state: PairState, rows: torch.Tensor, opts: PropagationOptions
                 ) -> tuple[torch.Tensor, int]:
    """Upper bounds of ``<rows[r], f - f'>`` (default relaxation, or with optimized
    slopes when ``opts.slope_steps > 0``) and how many rows had their slopes optimized."""
    if opts.slope_steps <= 0:
        return output_upper_bounds(state, {"d": rows}), 0
    res = optimized_output_upper_bounds(state, {"d": rows}, opts.slope_steps, opts.slope_lr)
    return res.bound, rows.shape[0] if res.steps else 0


def _largest_row(state: PairState, rows: torch.Tensor, opts: PropagationOptions
                 ) -> tuple[float, int]:
    """The largest upper bound over ``rows``; with ``opts.slope_steps`` the rows'
    slopes are optimized from the largest default bound down until the rest cannot
    exceed the largest bound reached (:func:`optimized_largest_row`)."""
    if opts.slope_steps <= 0:
        return float(output_upper_bounds(state, {"d": rows}).max()), 0
    return optimized_largest_row(state, {"d": rows}, opts.slope_steps, opts.slope_lr)


def _slope_details(opts: PropagationOptions, rows: int) -> dict[str, Any]:
    """The optimized-slope settings a certificate records (none with the default
    relaxation, so certificates made without them read as before)."""
    if opts.slope_steps <= 0:
        return {}
    return {"slope_steps": opts.slope_steps, "slope_lr": float(opts.slope_lr),
            "slope_rows": rows}


def _crown_budget_details(opts: PropagationOptions, state: PairState) -> dict[str, Any]:
    """The CROWN row budget a certificate records (none without one, so certificates
    made without it read as before): the option and how many unstable neurons kept
    their interval bounds because of it."""
    if opts.crown_rows_per_node is None:
        return {}
    return {"crown_rows_per_node": opts.crown_rows_per_node,
            "interval_neurons": int(state.stats.get("interval_neurons", 0))}


# ---------------------------------------------------------------------- registry
class TierRegistry(Attributed):
    """Named tiers, in registration order. ``register(tier)`` adds one (a duplicate
    name is an error unless ``replace=True``), ``get(name)`` looks one up (an unknown
    name is a :class:`ConfigurationError` listing the known ones), ``names()`` lists
    them, ``check(methods)`` validates a ``methods=`` argument."""

    def __init__(self) -> None:
        self._tiers: dict[str, Tier] = {}
        self._origin: dict[str, str] = {}
        self._source = "certcompress"

    def register(self, tier: Tier, *, replace: bool = False) -> Tier:
        """Add ``tier`` (an instance or a subclass, instantiated without arguments)."""
        obj: object = tier() if isinstance(tier, type) and issubclass(tier, Tier) else tier
        if not isinstance(obj, Tier):
            raise ConfigurationError(f"{obj!r} is not a certcompress Tier subclass or instance")
        name = obj.name
        if not isinstance(name, str) or not name or name != name.strip() or "," in name:
            raise ConfigurationError(f"tier {type(obj).__name__} needs a non-empty name without "
                                     f"commas or surrounding spaces, got {name!r}")
        if name in self._tiers and not replace:
            raise ConfigurationError(f"a tier named '{name}' is already registered (by "
                                     f"{self._origin[name]}); pass replace=True to override it")
        self._tiers[name] = obj
        self._origin[name] = self._source
        return obj

    def unregister(self, name: str) -> None:
        self.get(name)
        del self._tiers[name], self._origin[name]

    def _refresh(self) -> None:
        """Called before every lookup (the process-wide registry syncs with plugins)."""

    def get(self, name: str) -> Tier:
        self._refresh()
        try:
            return self._tiers[name]
        except (KeyError, TypeError):
            raise ConfigurationError(f"unknown certification method {name!r}; choose from "
                                     f"{', '.join(self._tiers)}") from None

    def names(self) -> tuple[str, ...]:
        self._refresh()
        return tuple(self._tiers)

    def origin(self, name: str) -> str:
        """Who registered ``name``: "certcompress" or the plugin's name."""
        self.get(name)
        return self._origin[name]

    def defaults(self, with_domain: bool) -> tuple[str, ...]:
        """The tiers ``certify`` runs without ``methods``: path-metric alone without a
        domain; with one, path-metric and every tier marked ``default_with_domain``."""
        self._refresh()
        extra = [n for n, t in self._tiers.items() if with_domain and t.default_with_domain]
        return tuple(dict.fromkeys(["path-metric", *extra]))

    def check(self, methods: object) -> tuple[str, ...]:
        """Validated method names (a string or a sequence of them), duplicates removed."""
        self._refresh()
        if isinstance(methods, str):
            methods = (methods,)
        try:
            names = tuple(dict.fromkeys(str(m) for m in methods))  # type: ignore[attr-defined]
        except TypeError:
            raise ConfigurationError(f"methods must be a sequence of names from "
                                     f"{self.names()}, got {methods!r}") from None
        bad = [m for m in names if m not in self._tiers]
        if bad or not names:
            raise ConfigurationError(f"unknown certification method(s) {bad or '(none)'}; "
                                     f"choose from {', '.join(self._tiers)}")
        return names

    def __contains__(self, name: object) -> bool:
        self._refresh()
        return name in self._tiers

    def __iter__(self) -> Iterator[Tier]:
        self._refresh()
        return iter(tuple(self._tiers.values()))

    def __len__(self) -> int:
        self._refresh()
        return len(self._tiers)

    # ------------------------------------------------------------ plugins
    def add_plugin(self, plugin: Plugin, source: str) -> tuple[str, ...]:
        """Run ``plugin.register_tiers(self)``; the names it added (errors name it)."""
        before = set(self._tiers)
        try:
            with self.attributed_to(plugin.name):
                plugin.register_tiers(self)
        except PluginError:
            raise
        except Exception as exc:
            for n in set(self._tiers) - before:
                del self._tiers[n], self._origin[n]
            raise PluginError(f"plugin '{plugin.name}' ({source}) failed in register_tiers: "
                              f"{type(exc).__name__}: {exc}") from exc
        return tuple(n for n in self._tiers if n not in before)


def register_builtin_tiers(registry: TierRegistry) -> None:
    """The tiers certcompress ships."""
    registry.register(PathMetricTier())
    registry.register(BoundsTier())
    registry.register(BabTier())  # opt-in: certify(..., methods=(..., "bab"))


class _SyncedRegistry(TierRegistry):
    """The process-wide registry: the built-in tiers plus those of the plugins the
    plugin manager has loaded (synchronized on every use, so a plugin loaded later,
    e.g. by ``--plugin``, contributes its tiers; a plugin no longer loaded, e.g. after
    the manager was rebuilt, takes its tiers away)."""

    def __init__(self) -> None:
        super().__init__()
        register_builtin_tiers(self)
        self._applied: dict[int, tuple[Plugin, tuple[str, ...]]] = {}

    def _refresh(self) -> None:
        self.sync()

    def sync(self) -> None:
        with _lock:
            self._sync()

    def _sync(self) -> None:
        loaded = {id(lp.plugin): lp for lp in plugin_manager().plugins}
        for pid in [p for p in self._applied if p not in loaded]:
            for n in self._applied.pop(pid)[1]:
                self._tiers.pop(n, None)
                self._origin.pop(n, None)
        for pid, lp in loaded.items():
            if pid not in self._applied:
                self._applied[pid] = (lp.plugin, self.add_plugin(lp.plugin, lp.source))


_lock = threading.RLock()
_registry: _SyncedRegistry | None = None


def tier_registry() -> TierRegistry:
    """The process-wide tier registry (built-in tiers, then loaded plugins' tiers)."""
    global _registry
    with _lock:
        if _registry is None:
            _registry = _SyncedRegistry()
        _registry.sync()
        return _registry


def _run_plugin_tier_hooks() -> None:
    """Sync the registry with the loaded plugins (running their ``register_tiers``,
    where plugin tiers register their typed details)."""
    tier_registry()


# a certificate loaded before the registry was first used still gets the details types
# that plugin tiers register in their hook (certcompress.certificate calls this)
add_details_hook(_run_plugin_tier_hooks)


def check_methods(methods: object) -> tuple[str, ...]:
    """Validated method names from the registry (a string or a sequence of them)."""
    return tier_registry().check(methods)


def _sign_vector_max(state: PairState, plus: torch.Tensor, minus: torch.Tensor,
                     per: torch.Tensor, l1: float, opts: PropagationOptions
                     ) -> tuple[float, int, int, dict[str, Any]]:
    """A sound upper bound of ``max_s <s, f - f'>`` over the sign vectors ``s``, at most
    ``l1`` where it reaches it; with the rows it used, the rows whose slopes were
    optimized, and the details a certificate records (``sign_rows_budget``: the resolved
    budget, restated by ``Tier.stated_options``, absent where ``"auto"`` gives the same;
    ``sign_rows_used``; ``sign_exhaustive``; ``sign_search``).

    The budget: ``opts.sign_rows`` resolved for this pair (``resolve_sign_rows``).
    None or ``2^m <= budget``: every sign vector (exact; the
    value certificates made before the budget existed state). Flat: likely largest first
    (``sign_vector_order``), stopping once one reaches ``l1``, the bound it would
    tighten (``capped_row_max``; ``min(l1, .)`` is the same either way); with
    ``opts.slope_steps``, :func:`_largest_row`. Otherwise the best-first
    branch-and-bound over partial sign vectors (:func:`sign_vector_search`) within
    the budget, each node's row bounded with the same relaxation as the
    output rows (optimized slopes with ``opts.slope_steps``): sound, at most the sum of
    the per-output bounds, and usually at least the flat maximum (it can be below it,
    still sound, where a node's bound is below the flat bound of one of its completions:
    :mod:`.propagation.signs`)."""
    m = int(plus.shape[0])
    elements = sum(n.numel for n in state.pair.nodes)
    budget = resolve_sign_rows(opts.sign_rows, elements, m)
    info: dict[str, Any] = {} if budget is None else {"sign_rows_budget": budget}
    if budget is None or 2 ** m <= budget:
        # recorded only where "auto" (what a certificate without it restates) would not
        # give every sign vector too
        info = {} if resolve_sign_rows("auto", elements, m) is None else \
            {"sign_rows_budget": 2 ** m}
        signs = torch.tensor(list(itertools.product((1.0, -1.0), repeat=m)),
                             dtype=torch.float64, device=plus.device)
        info.update(sign_rows_used=2 ** m, sign_exhaustive=True, sign_search="all")
        if opts.slope_steps > 0:
            top, rows = _largest_row(state, signs, opts)
            return float(top), 2 ** m, rows, info
        order = sign_vector_order(signs, plus, minus)
        rows_t = signs[order]
        prob = torch.zeros(rows_t.shape[0], dtype=torch.int64, device=rows_t.device)
        cap = torch.tensor([l1], dtype=torch.float64, device=rows_t.device)
        best = capped_row_max(lambda idx: output_upper_bounds(state, {"d": rows_t[idx]}),
                              prob, cap, rows_per_chunk(state.pair, state.options))
        return float(best[0]), 2 ** m, 0, info
    slope_rows = 0

    def node_rows(rows: torch.Tensor) -> torch.Tensor:
        nonlocal slope_rows
        ub, n = _output_rows(state, rows, opts)
        slope_rows += n
        return ub

    res = sign_vector_search(node_rows, per, l1, budget)
    info.update(sign_rows_used=res.rows, sign_exhaustive=res.exhaustive,
                sign_search="branch-and-bound")
    return res.value, res.rows, slope_rows, info


# ---------------------------------------------------------------------- functions
def path_metric_tier(graph: Graph, other: Graph, radius: float,
                     pm: PathMetric | None = None) -> tuple[MethodBound, PathMetric]:
    """``max(radius, 1) * path-metric`` (with ``radius = max ||x||_inf`` over the domain):
    the ``path-metric`` tier over the box ``[-radius, radius]``."""
    pair = GraphPair(graph, other, pm, radius=float(radius))
    dom = InputDomain.box(-float(radius), float(radius), shape=graph.input_shape)
    return tier_registry().get("path-metric").bound(pair, dom), pair.path_metric


def bounds_tier(graph: Graph, other: Graph, domain: InputDomain,
                options: PropagationOptions | None = None) -> MethodBound:
    """Differential bound propagation of the pair over the domain's box."""
    return tier_registry().get("bounds").bound(GraphPair(graph, other), domain, options)
