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

import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from .._attribution import Attributed
from ..capture.plugins import Plugin, plugin_manager
from ..certificate import WORST_CASE, MethodBound, add_details_hook
from ..domain import InputDomain
from ..equivalence.chain_bounds import box_bound
from ..equivalence.tier import BabTier
from ..errors import ConfigurationError, PluginError
from ..ir.graph import Graph
from .arithmetic import Float32Error
from .pathmetric import PathMetric
from .propagation.device import graph_elements, graph_on, resolve_device, run_on, stated_up
from .propagation.engine import PropagationOptions
from .propagation.lowering import lower_pair
from .propagation.relax import SPLIT_TIES
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
        dev = resolve_device(opts.device, graph_elements(pair.original))
        b, dev = run_on(opts.device, dev, lambda d: box_bound(
            lower_pair(graph_on(pair.original, d), graph_on(pair.compressed, d)), domain, opts))
        bound, *per = stated_up(dev, [b.bound, *b.per_output.tolist()])
        return TierBound(bound=bound, per_output=tuple(per), exact=False,
                         float_slack_rel=b.eta, details={**b.details, "device": str(dev),
                                                         "split_ties": SPLIT_TIES.get()})

    def stated_options(self, stated: MethodBound) -> PropagationOptions:
        """The base class's options (``intermediate``, slopes) and whether chain pairs
        were routed through the differential single pass (``chain`` in the details; a
        certificate made before the routing records none: the engine alone), so that
        ``verify_onnx(recertify=True)`` recomputes the stated bound."""
        base = super().stated_options(stated)
        assert isinstance(base, PropagationOptions)
        return replace(base, chain=stated.details.get("chain") is True)

    def recheck(self, pair: GraphPair, domain: InputDomain, stated: MethodBound,
                float32: Float32Error | None = None) -> tuple[MethodBound, list[str]]:
        """The base class's re-check, with the ReLU split's near-tie rule the entry
        records (``split_ties``; absent: ``"strict"``, the plain comparison of
        certificates made before the rule, :data:`.propagation.relax.SPLIT_TIES`)."""
        rule = stated.details.get("split_ties", "strict")
        if rule not in ("strict", "tolerant"):
            raise ConfigurationError(f"tier '{self.name}': the certificate's split_ties is "
                                     f"{rule!r}; this version knows 'strict' and "
                                     "'tolerant' (a newer certcompress wrote it?)")
        token = SPLIT_TIES.set(rule)
        try:
            return super().recheck(pair, domain, stated, float32)
        finally:
            SPLIT_TIES.reset(token)


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
