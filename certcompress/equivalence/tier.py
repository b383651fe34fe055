"""The ``bab`` certification tier: a worst-case bound tightened by branch-and-bound.

``certify(..., methods=("path-metric", "bab"), propagation=BabOptions(time_budget=30))``
splits the domain's box with the search of :mod:`.search` (the differential single pass
of :mod:`.chain` per region, split where the bound is most sensitive, worst region
first) and states the maximum of the certified l1 bounds over the leaf regions. That is
sound: every leaf has a sound bound, and the leaves (proven and still open) cover the
domain. It is never looser than the one-pass bound of the ``bounds`` tier with the same
options: the tier computes that pass too (over the whole box) and states the smaller.

How the search is steered: a leaf whose bound is already at most ``target`` is closed
(``target`` is ``1 + tolerance`` times the largest deviation found by probing the box:
the true worst case is at least that, so no split can bring the maximum below it), and
the open leaf with the largest bound is split first, until ``time_budget`` seconds or
``max_regions`` regions. When the search's own counterexample probes find a deviation
above ``target`` it stops (its leaves no longer cover the domain, so that run states
nothing); the tier then raises ``target`` above what was found and searches again,
within the same budget. Per-output bounds are the one-pass per-output bounds, each also
at most the l1 bound (``|d_o| <= ||d||_1``).

Not a default tier (it costs up to ``time_budget`` seconds per certificate): name it in
``methods=``. Its typed details (:class:`BabDetails`) say how far it got: regions,
seconds, proven fraction (the volume fraction of the domain whose leaves are closed),
the one-pass and the search bound. docs/adding-a-tier.md describes tiers in general.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from ..bounds.numerics import float_slack
from ..bounds.propagation.engine import (
    PropagationOptions,
    output_bounds,
    output_upper_bounds,
    propagate,
)
from ..bounds.propagation.lowering import lower_pair
from ..bounds.propagation.primitives import PairNet
from ..bounds.tierbase import GraphPair, Tier, TierBound
from ..certificate import TierDetails, register_details
from ..domain import InputDomain
from ..errors import ConfigurationError
from .properties import EpsilonProperty
from .search import Bounder, SearchConfig, run_search

__all__ = ["BabOptions", "BabDetails", "BabTier", "TIER_NAME"]

TIER_NAME = "bab"
_INTERMEDIATE = ("crown", "forward", "both")
#: relative outward rounding of ``score + target`` (the search stores ``bound - target``)
_ROUND_UP = 2.0 ** -48


@dataclass(frozen=True)
class BabOptions(PropagationOptions):
    """Options of the ``bab`` tier; also :class:`PropagationOptions` (the one-pass bound
    and the ``bounds`` tier use those fields), so one object serves both tiers:
    ``certify(..., propagation=BabOptions(time_budget=30))``.

    ``time_budget``: seconds of search (None: until ``max_regions``, deterministic; under
    a time budget the regions searched depend on the machine's speed, so
    ``verify_onnx(recertify=True)``, which recomputes with the default options, may get
    another bound). ``max_regions``: regions bounded at most. ``batch``: regions per round.
    ``split_candidates``: above 1, strong branching (see
    :func:`~certcompress.equivalence.verify_equivalence`). ``optimize_steps``: gradient
    steps on the ReLU slopes per bound. ``region_intermediate``: how each region's
    pre-activations are bounded (``"crown"``, ``"forward"`` or ``"both"``).
    ``tolerance``: leaves within ``1 + tolerance`` times the worst deviation found are
    closed. ``seed``: of the probes."""

    time_budget: float | None = 10.0
    max_regions: int = 20_000
    batch: int = 64
    split_candidates: int = 1
    optimize_steps: int = 0
    region_intermediate: str = "crown"
    tolerance: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        t = self.time_budget
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float))
                              or not (t > 0 and math.isfinite(t))):
            raise ConfigurationError(f"bab time_budget must be a number of seconds > 0 or "
                                     f"None (region budget only), got {t!r}")
        for name, least in (("max_regions", 1), ("batch", 2), ("split_candidates", 1),
                            ("optimize_steps", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < least:
                raise ConfigurationError(f"bab {name} must be an integer >= {least}, got "
                                         f"{v!r}")
        if self.region_intermediate not in _INTERMEDIATE:
            raise ConfigurationError(f"bab region_intermediate must be one of "
                                     f"{', '.join(_INTERMEDIATE)}, got "
                                     f"{self.region_intermediate!r}")
        tol = self.tolerance
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or \
                not (0 < tol and math.isfinite(tol)):
            raise ConfigurationError(f"bab tolerance must be a finite number > 0, got {tol!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigurationError(f"bab seed must be an integer, got {self.seed!r}")

    @classmethod
    def of(cls, options: PropagationOptions | None) -> BabOptions:
        """``options`` as BabOptions (a plain PropagationOptions keeps its fields, the
        search gets the defaults)."""
        if options is None or isinstance(options, BabOptions):
            return options or cls()
        return cls(**{f.name: getattr(options, f.name) for f in fields(PropagationOptions)})


@dataclass(frozen=True, kw_only=True, eq=False)
class BabDetails(TierDetails):
    """The ``bab`` tier's run: ``status`` ``"closed"`` (every leaf's bound is at most
    ``target``), ``"budget"`` (time or region budget reached; open leaves counted) or
    ``"one-pass"`` (no search run covered the domain: the one-pass bound stands);
    ``regions`` bounded and ``seconds`` spent by the search (every attempt);
    ``proven_fraction``: the domain's volume fraction whose leaves are closed;
    ``search_bound``: the max over the leaves (None when no run covered the domain);
    ``one_pass_bound``: the bound of one pass over the whole box; ``found``: the largest
    deviation seen (a lower bound of the true worst case). A verified
    :func:`~certcompress.equivalence.verify_equivalence` result converted to a
    certificate (:meth:`~certcompress.equivalence.EquivalenceResult.certificate`) states
    its run here too, with ``norm`` and ``epsilon``."""

    status: str
    regions: int
    rounds: int
    seconds: float
    proven_fraction: float
    open_regions: int
    attempts: int
    target: float
    search_bound: float | None = None
    #: None when the entry comes from ``verify_equivalence`` (no one-pass bound computed)
    one_pass_bound: float | None = None
    found: float | None = None
    #: the norm the search bounded: "l1" for the tier; "inf" or "l1" for a verified
    #: ``verify_equivalence`` result, whose ``epsilon`` is then the proven tolerance
    #: (``found`` is in that norm)
    norm: str = "l1"
    epsilon: float | None = None
    time_budget: float | None = None
    max_regions: int
    method: str
    intermediate: str
    rounding_margin_rel: float
    domain: str


register_details(TIER_NAME, BabDetails)


def _round_up_sum(values: Tensor) -> float:
    n = int(values.numel())
    s = float(values.sum())
    return math.nextafter(s * (1.0 + float_slack(max(n, 1), 1)), math.inf) if s > 0 else 0.0


def _one_pass(lowered: PairNet, domain: InputDomain, opts: PropagationOptions
              ) -> tuple[float, Tensor, float]:
    """The ``bounds`` tier's computation over the whole box: ``(l1, per-output, eta)``."""
    state = propagate(lowered, domain.lower_tensor().unsqueeze(0),
                      domain.upper_tensor().unsqueeze(0), opts)
    m = lowered.output_size
    eye = torch.eye(m, dtype=torch.float64)
    ub = output_upper_bounds(state, {"d": torch.cat([eye, -eye])})
    crown = torch.maximum(ub[:m], ub[m:]).clamp(min=0.0)
    per = torch.minimum(crown, output_bounds(state).dev()[0].clamp(min=0.0))
    l1 = _round_up_sum(per)
    if 0 < m <= opts.sign_vectors_up_to:
        signs = torch.tensor(list(itertools.product((1.0, -1.0), repeat=m)),
                             dtype=torch.float64)
        l1 = min(l1, max(float(output_upper_bounds(state, {"d": signs}).max()), 0.0))
    return l1, per, float(state.eta)


def _probe(bounder: Bounder, lower: Tensor, upper: Tensor, seed: int) -> float:
    """The largest l1 deviation at the centre, random points and random vertices."""
    gen = torch.Generator().manual_seed(seed)
    n = lower.numel()
    u = torch.rand((256, n), generator=gen, dtype=torch.float64)
    v = (torch.rand((64, n), generator=gen) < 0.5).double()
    x = torch.cat([((lower + upper) * 0.5)[None], lower + (upper - lower) * u,
                   lower + (upper - lower) * v])
    x = torch.minimum(torch.maximum(x, lower), upper)
    with torch.no_grad():
        f, fc = bounder.outputs(x)
        return float((f - fc).abs().sum(1).max())


class BabTier(Tier):
    """The max of the certified l1 bounds over the leaves of a branch-and-bound search
    (module doc); at most the one-pass bound."""

    name = TIER_NAME
    summary = ("branch-and-bound over the box: max of the leaf regions' bounds (tightest, "
               "costs up to its time budget)")
    options_type = BabOptions

    def own_options(self, options: object) -> Any:
        return BabOptions.of(options) if isinstance(options, PropagationOptions) else None

    def _bound(self, pair: GraphPair, domain: InputDomain, options: Any) -> TierBound:
        opts = BabOptions.of(options)
        lowered = lower_pair(pair.original, pair.compressed)
        m = lowered.output_size
        one_l1, one_per, eta = _one_pass(lowered, domain, opts)
        bounder = Bounder(lowered, intermediate=opts.region_intermediate,
                          optimize=opts.optimize_steps)
        lower = domain.lower_tensor().reshape(-1)
        upper = domain.upper_tensor().reshape(-1)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # many small products: one thread is faster (verify.py)
        try:
            run = self._search(bounder, m, lower, upper, opts)
        finally:
            torch.set_num_threads(threads)
        search_bound = run["bound"]
        l1 = one_l1 if search_bound is None else min(one_l1, search_bound)
        per = torch.clamp(one_per, max=l1)
        chain_eta = 0.0 if bounder.chain is None else float(bounder.chain.eta)
        return TierBound(
            bound=l1, per_output=tuple(float(v) for v in per), exact=False,
            float_slack_rel=max(eta, chain_eta),
            details={"status": run["status"], "regions": run["regions"],
                     "rounds": run["rounds"], "seconds": run["seconds"],
                     "proven_fraction": run["proven_fraction"],
                     "open_regions": run["open"], "attempts": run["attempts"],
                     "target": run["target"], "search_bound": search_bound,
                     "one_pass_bound": one_l1, "found": run["found"],
                     "time_budget": opts.time_budget, "max_regions": opts.max_regions,
                     "method": bounder.method, "intermediate": opts.intermediate,
                     "rounding_margin_rel": max(eta, chain_eta),
                     "domain": domain.describe()})

    @staticmethod
    def _search(bounder: Bounder, m: int, lower: Tensor, upper: Tensor, opts: BabOptions
                ) -> dict[str, Any]:
        """Search attempts until one covers the domain (not cut short by a deviation
        above its target) or the budget is spent."""
        t0 = time.perf_counter()
        found = _probe(bounder, lower, upper, opts.seed)
        target = max(found * (1.0 + opts.tolerance), 1e-300)
        regions = rounds = attempts = 0
        out: dict[str, Any] = {"status": "one-pass", "bound": None, "proven_fraction": 0.0,
                               "open": 1}
        while True:
            attempts += 1
            left = math.inf if opts.time_budget is None else \
                opts.time_budget - (time.perf_counter() - t0)
            cfg = SearchConfig(timeout=max(left, 0.0), max_regions=max(opts.max_regions
                                                                       - regions, 1),
                               batch=opts.batch, seed=opts.seed + attempts - 1,
                               strong_dims=opts.split_candidates)
            prop = EpsilonProperty(m, target, "l1", opts.sign_vectors_up_to)
            res = run_search(bounder, prop, lower, upper, cfg)
            regions += int(res["regions"])
            rounds += int(res["rounds"])
            if res["found"] is not None:
                found = max(found, float(res["found"]))
            if res["status"] != "falsified":
                # the leaves cover the domain: the proven ones (bound <= target, max in
                # bound_proven) and the open ones (bound = score + target, rounded up)
                cands = [float(res["bound_proven"])]
                if res["status"] != "verified":
                    cands.append(math.nextafter((float(res["score_open"]) + target)
                                                * (1.0 + _ROUND_UP), math.inf))
                bound = max(cands)
                if math.isfinite(bound):
                    out = {"status": "closed" if res["status"] == "verified" else "budget",
                           "bound": max(bound, 0.0),
                           "proven_fraction": 1.0 if res["status"] == "verified"
                           else float(res["proven_fraction"]),
                           "open": 0 if res["status"] == "verified" else int(res["open"])}
                break
            spent = time.perf_counter() - t0
            if (opts.time_budget is not None and spent >= opts.time_budget) or \
                    regions >= opts.max_regions:
                break
            target = max(found * (1.0 + opts.tolerance), target * 2.0)
        return {**out, "regions": regions, "rounds": rounds, "attempts": attempts,
                "seconds": time.perf_counter() - t0, "target": target, "found": found}
