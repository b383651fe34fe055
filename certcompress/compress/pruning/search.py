"""Budget search: the sparsest plan whose certified bound stays within a budget.

The weights are ordered once by the criterion (ties by position, as in ``criteria``);
step ``k`` prunes the first ``k`` of them (``scope="global"``) or, for
``scope="per-layer"``, the ratio ``k / S`` of every layer (``S`` = size of the largest
layer). Plans of increasing ``k`` are nested, so the certified bound is non-decreasing
in ``k`` (pruning more removes more paths). Bisection on ``k`` keeps the invariant
``bound(lo) <= budget < bound(hi)`` with an exact certificate (one difference pass on
the graph traced once, zeroed folded parameters) at each step, so the result states two
computed facts: the returned plan's bound is within the budget and the next denser
step's bound is not.

``certifier="bounds"`` (or any worst-case tier in the tier registry,
:func:`certcompress.bounds.tiers.tier_registry`) certifies each step with the smaller of
the path-metric bound and that tier's bound over the input domain (``domain``, default
the ball ``||x||_inf <= r``). That bound need not be monotone in ``k``; the bisection
still returns the two computed facts above.

``certifier="equivalence"`` proves each step instead: branch-and-bound
(:func:`certcompress.equivalence.verify_equivalence`, l1 norm, ``epsilon = budget``,
``timeout`` seconds per step) over the domain. A verified step's bound is its certified
bound (at most the budget); a falsified or unknown step counts as not proven (bound
``inf``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from ...api import trace
from ...bounds import graph_path_metric
from ...bounds.propagation.engine import PropagationOptions
from ...bounds.tiers import WORST_CASE, GraphPair, tier_registry
from ...domain import InputDomain
from ...errors import ConfigurationError
from ...ir.graph import Graph
from ...ir.ops import AffineParams
from ...resolve import resolve_domain
from ._layers import Layer, excluded_names, input_shape_for, prunable_layers
from .criteria import Masks, check_criterion, layer_nodes, prune_count, ranks, weight_scores
from .plan import PruningPlan

__all__ = ["search_sparsity", "SparsitySearch", "MaskCertifier"]


class MaskCertifier:
    """Certified bounds of keep-masks on a graph traced once.

    ``bound(masks)`` zeroes the masked weights in the graph's folded parameters (same
    layout as the module weights) and returns ``max(r, 1) * path-metric`` (exact for a
    pruning, float slack included): the bound :func:`certcompress.certify` gives for the
    pruned model. ``passes`` counts the difference passes run. With another
    ``certifier`` (a worst-case tier of the tier registry, e.g. ``"bounds"``) the bound is
    the smaller of that and the tier's bound over ``domain`` (default: the box
    ``[-r, r]``; ``options`` go to a tier that takes them).
    """

    def __init__(self, graph: Graph, layers: Sequence[Layer], radius: float,
                 certifier: str = "path-metric", domain: InputDomain | None = None,
                 options: PropagationOptions | None = None, epsilon: float | None = None,
                 timeout: float = 30.0) -> None:
        if not math.isfinite(radius) or radius < 0:
            raise ConfigurationError(f"input_radius must be a finite number >= 0, got {radius}")
        registry = tier_registry()
        if certifier == "equivalence":
            if epsilon is None or not epsilon > 0:
                raise ConfigurationError(f"certifier='equivalence' needs epsilon > 0 (the "
                                         f"budget on the l1 deviation), got {epsilon!r}")
            self.tier = None
        else:
            self.tier = registry.get(certifier) if certifier in registry else None
            if self.tier is None or self.tier.scope != WORST_CASE:
                worst = [t.name for t in registry if t.scope == WORST_CASE]
                raise ConfigurationError(f"certifier must be a worst-case tier ("
                                         f"{', '.join(map(repr, worst))}) or 'equivalence', "
                                         f"got {certifier!r}")
        self.certifier = certifier
        self.epsilon = epsilon
        self.timeout = timeout
        self.domain = domain if domain is not None else InputDomain.box(
            -float(radius), float(radius), shape=graph.input_shape)
        if self.domain.shape != tuple(graph.input_shape):
            raise ConfigurationError(f"the domain's shape {self.domain.shape} differs from "
                                     f"the input shape {tuple(graph.input_shape)}")
        self.options = options
        self.graph = graph
        self.factor = max(float(radius), 1.0)
        self.nodes = layer_nodes(graph, layers)
        self.passes = 0

    def bound(self, masks: Masks) -> float:
        params = dict(self.graph.params)
        changed = False
        for name, keep in masks.items():
            if bool(keep.all()):
                continue
            drop = ~keep
            for node in self.nodes.get(name, ()):
                p = params[node]
                params[node] = AffineParams(p.weight.masked_fill(drop, 0.0), p.bias)
                changed = True
        if not changed:
            return 0.0
        self.passes += 1
        other = self.graph.with_params(params)
        if self.certifier == "equivalence":
            from ...equivalence import verify_equivalence

            # input splitting: on a 16-32-32-4 MLP it proved a sparser plan sooner than
            # the ReLU splitting split="auto" picks there (docs/equivalence.md)
            res = verify_equivalence(self.graph, other, self.domain, epsilon=self.epsilon,
                                     norm="l1", timeout=self.timeout, split="input")
            return float(res.bound) if res.status == "verified" and res.bound is not None \
                else math.inf
        pm = graph_path_metric(self.graph, other)
        bound = self.factor * pm.value
        if self.certifier != "path-metric":
            assert self.tier is not None
            pair = GraphPair(self.graph, other, pm)
            tier = self.tier.bound(pair, self.domain, self.tier.own_options(self.options))
            bound = min(bound, tier.bound)
        return bound


@dataclass(frozen=True, eq=False)
class SparsitySearch:
    """The result of :func:`search_sparsity`.

    ``plan`` prunes ``pruned`` of ``candidates`` weights (``sparsity`` = their ratio)
    with certified bound ``bound <= budget``; the next denser step (``next_pruned``
    weights, ``next_sparsity``) has ``next_bound > budget`` (None when ``plan`` already
    prunes every candidate). ``forward_passes`` counts graph passes (scoring forward
    passes plus one difference pass per certified step), ``backward_passes`` the scoring
    backward passes; ``steps`` lists every certified ``(pruned, bound)``.
    """

    plan: PruningPlan
    budget: float
    bound: float
    sparsity: float
    pruned: int
    next_bound: float | None
    next_sparsity: float | None
    next_pruned: int | None
    candidates: int
    criterion: str
    scope: str
    radius: float
    input_shape: tuple[int, ...]
    forward_passes: int
    backward_passes: int
    steps: tuple[tuple[int, float], ...]

    def summary(self) -> str:
        nxt = ("every candidate weight is pruned within the budget" if self.next_bound is None
               else f"the next denser step ({self.next_pruned:,} weights, sparsity "
                    f"{self.next_sparsity:.6g}) is certified at {self.next_bound:.6g} > budget")
        return (f"budget search ({self.criterion}, {self.scope}) for budget {self.budget:.6g} "
                f"on ||x||_inf <= {self.radius:g}, input {self.input_shape}:\n"
                f"  sparsity {self.sparsity:.6g} ({self.pruned:,} of {self.candidates:,} "
                f"weights) certified at {self.bound:.6g} <= budget;\n  {nxt};\n"
                f"  {self.forward_passes} forward passes ({len(self.steps)} certified steps), "
                f"{self.backward_passes} backward")

    def __str__(self) -> str:
        return self.summary()


def _bisect(bound_at: Callable[[int], float], n: int, budget: float
            ) -> tuple[int, float, int | None, float | None, list[tuple[int, float]]]:
    steps: list[tuple[int, float]] = []

    def at(k: int) -> float:
        b = bound_at(k)
        steps.append((k, b))
        return b

    hi_b = at(n) if n > 0 else 0.0
    if hi_b <= budget:
        return n, hi_b, None, None, steps
    lo, lo_b, hi = 0, 0.0, n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        b = at(mid)
        if b <= budget:
            lo, lo_b = mid, b
        else:
            hi, hi_b = mid, b
    return lo, lo_b, hi, hi_b, steps


def search_sparsity(model: nn.Module, budget: float, criterion: str = "path-magnitude",
                    input_shape: Sequence[int] | None = None,
                    input_radius: float | None = None, *, scope: str = "global",
                    exclude: Sequence[str] = (), seed: int = 0,
                    certifier: str = "path-metric", domain: InputDomain | None = None,
                    timeout: float = 30.0) -> SparsitySearch:
    """The largest sparsity whose certified bound ``max(r,1) * path-metric`` is at most
    ``budget`` (see the module docstring). ``input_radius`` r bounds ``||x||_inf`` of the
    inputs as the network receives them; it defaults to a plugin's input spec.

    Costs one scoring pass (path-magnitude: one forward and one backward) and at most
    ``ceil(log2(steps)) + 1`` difference passes. Certify the returned plan in full
    (measured and adversarial deviation) with ``prune(model, result.plan, ...)``.

    ``certifier="bounds"`` (or another worst-case tier's name) adds that tier over
    ``domain`` (an :class:`~certcompress.InputDomain`; it replaces ``input_radius``) at
    every step: tighter, about a second per step on small CNNs for ``bounds``.
    ``certifier="equivalence"``: each step proven by branch-and-bound with
    ``epsilon = budget`` (l1) within ``timeout`` seconds; unknown counts as not proven.
    """
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) \
            or not math.isfinite(budget) or budget < 0:
        raise ConfigurationError(f"budget must be a finite number >= 0 (a bound on the l1 "
                                 f"output deviation), got {budget!r}")
    crit = check_criterion(criterion)
    if scope not in ("global", "per-layer"):
        raise ConfigurationError(f"scope must be 'global' or 'per-layer', got {scope!r}")
    shape = input_shape_for(model, input_shape if input_shape is not None or domain is None
                            else domain.shape, "the budget search")
    radius = resolve_domain(model, shape, input_radius, domain).radius
    layers = prunable_layers(model)
    excluded = excluded_names(layers, list(exclude))
    cand = [ly for ly in layers if ly.name not in excluded]
    names = [ly.name for ly in cand]
    graph = trace(model, shape)
    scores = weight_scores(model, crit, layers, graph=graph, input_shape=shape, seed=seed)
    scoring = 1 if crit == "path-magnitude" else 0
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ConfigurationError(f"timeout must be > 0 seconds, got {timeout!r}")
    cert = MaskCertifier(graph, layers, radius, certifier, domain,
                         epsilon=float(budget) if certifier == "equivalence" else None,
                         timeout=float(timeout))
    n_total = sum(ly.numel for ly in cand)

    if scope == "global":
        rank = ranks(scores, names)
        n_steps = n_total

        def masks_at(k: int) -> Masks:
            return {n: rank[n] >= k for n in names}

        def count(k: int) -> int:
            return k

        def plan_at(k: int) -> PruningPlan:
            return PruningPlan("global", crit, k / n_total if n_total else 0.0, {},
                               tuple(exclude), seed, shape)
    else:
        local = {n: ranks(scores, [n])[n] for n in names}
        n_steps = max((ly.numel for ly in cand), default=0)
        sizes = {ly.name: ly.numel for ly in cand}

        def masks_at(k: int) -> Masks:
            return {n: local[n] >= prune_count(k / n_steps, sizes[n]) for n in names}

        def count(k: int) -> int:
            return sum(prune_count(k / n_steps, sizes[n]) for n in names)

        def plan_at(k: int) -> PruningPlan:
            r = k / n_steps if n_steps else 0.0
            return PruningPlan.by_criterion(model, r, crit, scope="per-layer",
                                            exclude=exclude, seed=seed, input_shape=shape)

    k, b, k_next, b_next, steps = _bisect(lambda j: cert.bound(masks_at(j)), n_steps,
                                          float(budget))

    def frac(j: int) -> float:
        return count(j) / n_total if n_total else 0.0

    where = f"||x||_inf <= {radius:g}" if domain is None else domain.describe()
    plan = plan_at(k).with_note(f"budget search: certified bound {b:.6g} <= budget "
                                f"{float(budget):.6g} for {where} ({certifier})")
    return SparsitySearch(
        plan=plan, budget=float(budget), bound=b, sparsity=frac(k), pruned=count(k),
        next_bound=b_next, next_sparsity=None if k_next is None else frac(k_next),
        next_pruned=None if k_next is None else count(k_next), candidates=n_total,
        criterion=crit, scope=scope, radius=radius, input_shape=shape,
        forward_passes=scoring + cert.passes, backward_passes=scoring,
        steps=tuple((count(j), bj) for j, bj in steps))
