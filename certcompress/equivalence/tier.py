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

Re-checking a stated bound (``verify_onnx(recertify=True)``, :meth:`BabTier.recheck`):
the search's bound depends on its budget (and, under a time budget, on the machine), so
it is not recomputed and compared; it is proven, one-sidedly. A stated l1 bound at
least the one-pass bound stands (that pass is sound over the whole box); a smaller one
must be proven by a search whose target is the stated bound (an epsilon-verification
in l1 at epsilon = the stated bound: every leaf's bound at most it), with no time budget
and a region budget of ``RECHECK_REGION_FACTOR`` times the stated regions (at least
``RECHECK_MIN_REGIONS``): deterministic. A stated per-output bound stands when it is at
least the one-pass per-output bound, or at least the accepted l1 bound (``|d_o| <=
||d||_1``); the others are proven together by one search in l_inf at the smallest of
them. A deviation above a stated bound found by the probes or the search is named in
the problem. With float32 arithmetic the models' rounding error (what
:func:`~certcompress.bounds.arithmetic.with_float32` adds) is taken off the stated
bounds, rounded down, before they are proven.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor

from .._threads import one_thread
from ..bounds.arithmetic import Float32Error, with_float32
from ..bounds.numerics import round_up_sum
from ..bounds.propagation.engine import (
    PropagationOptions,
)
from ..bounds.propagation.lowering import lower_pair
from ..bounds.propagation.primitives import PairNet
from ..bounds.tierbase import GraphPair, Tier, TierBound, at_least
from ..certificate import WORST_CASE, MethodBound, TierDetails, register_details
from ..domain import InputDomain
from ..errors import ConfigurationError
from .chain_bounds import box_bound
from .properties import EpsilonProperty
from .search import Bounder, SearchConfig, run_search

__all__ = ["BabOptions", "BabDetails", "BabTier", "TIER_NAME", "RECHECK_REGION_FACTOR",
           "RECHECK_MIN_REGIONS"]

TIER_NAME = "bab"
_INTERMEDIATE = ("crown", "forward", "both")
#: relative outward rounding of ``score + target`` (the search stores ``bound - target``)
_ROUND_UP = 2.0 ** -48
#: a stated bound is re-checked by a search of at most this many times its stated regions
RECHECK_REGION_FACTOR = 4
#: ... and at least this many regions
RECHECK_MIN_REGIONS = 2048


@dataclass(frozen=True)
class BabOptions(PropagationOptions):
    """Options of the ``bab`` tier; also :class:`PropagationOptions` (the one-pass bound
    and the ``bounds`` tier use those fields), so one object serves both tiers:
    ``certify(..., propagation=BabOptions(time_budget=30))``.

    ``time_budget``: seconds of search (None: until ``max_regions``, deterministic; under
    a time budget the regions searched depend on the machine's speed;
    ``verify_onnx(recertify=True)`` proves the stated bound rather than recomputing it,
    :meth:`BabTier.recheck`). ``max_regions``: regions bounded at most. ``batch``: regions per round.
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



def _one_pass(lowered: PairNet, domain: InputDomain, opts: PropagationOptions
              ) -> tuple[float, Tensor, float]:
    """The ``bounds`` tier's computation over the whole box (:func:`.chain_bounds.box_bound`,
    so this tier is never looser than that one): ``(l1, per-output, eta)``. Without slope
    optimization: ``stated_options`` restates none for it, so a re-check recomputes the
    same bound."""
    b = box_bound(lowered, domain, replace(opts, slope_steps=0))
    return b.bound, b.per_output, b.eta


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
        with one_thread():
            run = self._search(bounder, m, lower, upper, opts)
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

    # ------------------------------------------------------------------ re-checking
    def stated_options(self, stated: MethodBound) -> BabOptions:
        """Options to re-check ``stated``: the one-pass ``intermediate`` and the regions'
        intermediate mode and slope steps it records (defaults where it records none),
        no time budget and a region budget of ``RECHECK_REGION_FACTOR`` times its
        regions (at least ``RECHECK_MIN_REGIONS``): deterministic."""
        d = stated.details
        inter = d.get("intermediate")
        method = str(d.get("method") or "")
        region = next((m for m in _INTERMEDIATE if f"{m} intermediate" in method), "crown")
        if inter in _INTERMEDIATE and "intermediate" not in method:
            region = str(inter)
        steps = re.search(r"(\d+) slope-optimization steps", method)
        regions = d.get("regions")
        regions = regions if isinstance(regions, int) and not isinstance(regions, bool) \
            else 0
        return BabOptions(intermediate=inter if inter in ("crown", "interval") else "crown",
                          time_budget=None, region_intermediate=region,
                          optimize_steps=int(steps.group(1)) if steps else 0,
                          max_regions=max(RECHECK_REGION_FACTOR * regions,
                                          RECHECK_MIN_REGIONS))

    def recheck(self, pair: GraphPair, domain: InputDomain, stated: MethodBound,
                float32: Float32Error | None = None) -> tuple[MethodBound, list[str]]:
        """Prove the stated bounds one-sidedly (module doc); returns ``(stated, problems)``
        (the stated bounds are what the certificate relies on once they are proven)."""
        name = f"tier '{self.name}'"
        opts = self.stated_options(stated)
        lowered = lower_pair(pair.original, pair.compressed)
        m = lowered.output_size
        if len(stated.per_output) != m:
            return stated, [f"{name} per-output bound: {len(stated.per_output)} values "
                            f"stated, the models have {m} outputs"]
        one_l1, one_per, _ = _one_pass(lowered, domain, opts)
        one = MethodBound(method=f"{self.name} one pass", bound=one_l1,
                          per_output=tuple(float(v) for v in one_per), scope=WORST_CASE,
                          seconds=0.0, exact=False)
        zero = MethodBound(method=f"{self.name} one pass", bound=0.0, per_output=(0.0,) * m,
                           scope=WORST_CASE, seconds=0.0, exact=False)
        if float32 is not None:  # as stated: the bounds plus the float32 rounding error
            one, zero = with_float32(one, float32), with_float32(zero, float32)
        # proving |d| <= the stated bound less the (rounded-up) rounding error, rounded
        # down, proves the stated bound for the models as executed
        l1_target = _less(stated.bound, zero.bound)
        per_target = [_less(s, z) for s, z in zip(stated.per_output, zero.per_output)]
        problems: list[str] = []
        if l1_target < 0 or min(per_target) < 0:
            problems.append(f"{name} bound states {stated.bound:.10g}, less than the "
                            f"float32 rounding error {zero.bound:.10g} alone")
            return stated, problems
        lower = domain.lower_tensor().reshape(-1)
        upper = domain.upper_tensor().reshape(-1)
        bounder = Bounder(lowered, intermediate=opts.region_intermediate,
                          optimize=opts.optimize_steps)
        found = _probe(bounder, lower, upper, opts.seed)
        if found > l1_target:
            less = "" if float32 is None else \
                f" ({l1_target:.10g} without the float32 rounding error)"
            problems.append(f"{name} bound states {stated.bound:.10g}{less}, SMALLER than "
                            f"a deviation found in the domain: {found:.10g} (l1, float64)")
            return stated, problems
        l1_ok = at_least(stated.bound, one.bound)
        per_ok = [at_least(s, o) for s, o in zip(stated.per_output, one.per_output)]
        # a bound on each output proves an l1 bound of their sum: the accepted ones
        per_proven = list(one_per.tolist())
        norm = stated.details.get("norm", "l1")
        if norm == "inf" and not all(per_ok):  # verify_equivalence in l_inf: outputs first
            self._prove_per(bounder, m, lower, upper, opts, per_target, per_ok, per_proven,
                            stated, name, problems)
        if not l1_ok and all(per_ok):
            l1_ok = at_least(l1_target, _up_sum(per_proven))
        if not l1_ok and not problems:
            l1_ok = self._prove(bounder, EpsilonProperty(m, l1_target, "l1",
                                                         opts.sign_vectors_up_to),
                                lower, upper, opts, f"{name} bound", stated.bound, problems)
        if l1_ok:  # |d_o| <= ||d||_1
            per_ok = [ok or at_least(p, l1_target) for ok, p in zip(per_ok, per_target)]
        if not all(per_ok) and not problems:
            self._prove_per(bounder, m, lower, upper, opts, per_target, per_ok, per_proven,
                            stated, name, problems)
        return stated, problems

    def _prove_per(self, bounder: Bounder, m: int, lower: Tensor, upper: Tensor,
                   opts: BabOptions, per_target: list[float], per_ok: list[bool],
                   per_proven: list[float], stated: MethodBound, name: str,
                   problems: list[str]) -> None:
        """Prove the per-output bounds not yet accepted: one l_inf search at the smallest
        of them; updates ``per_ok`` and ``per_proven``."""
        todo = [o for o in range(m) if not per_ok[o]]
        eps = min(per_target[o] for o in todo)
        o = min(todo, key=lambda i: per_target[i])
        if self._prove(bounder, EpsilonProperty(m, eps, "inf"), lower, upper, opts,
                       f"{name} per-output bound[{o}]", stated.per_output[o], problems):
            for i in todo:
                per_ok[i] = True
                per_proven[i] = eps

    @staticmethod
    def _prove(bounder: Bounder, prop: EpsilonProperty, lower: Tensor, upper: Tensor,
               opts: BabOptions, what: str, stated: float, problems: list[str]) -> bool:
        """Whether the search proves ``prop`` within ``opts.max_regions`` regions (no time
        budget); a problem naming why not otherwise."""
        cfg = SearchConfig(timeout=math.inf, max_regions=opts.max_regions, batch=opts.batch,
                           seed=opts.seed, strong_dims=opts.split_candidates)
        with one_thread():
            res = run_search(bounder, prop, lower, upper, cfg)
        if res["status"] == "verified":
            return True
        norm = "l_inf" if prop.norm == "inf" else "l1"
        if res["status"] == "falsified":
            problems.append(f"{what} states {stated:.10g}, SMALLER than a deviation found "
                            f"in the domain: {float(res['found']):.10g} ({norm})")
        else:
            found = "" if res["found"] is None else \
                f"; largest deviation found {float(res['found']):.10g} ({norm})"
            less = "" if prop.epsilon == stated else \
                f", {prop.epsilon:.10g} without the float32 rounding error"
            problems.append(f"{what} states {stated:.10g}, not proven: a search with it as "
                            f"the target ({norm}{less}) left {int(res['open'])} of "
                            f"{int(res['regions'])} "
                            f"regions open (proven fraction "
                            f"{float(res['proven_fraction']):.4g}){found}")
        return False


def _less(v: float, err: float) -> float:
    """``v - err`` rounded down (``v`` itself when ``err`` is 0)."""
    if err == 0:
        return v
    d = v - err
    return math.nextafter(d, -math.inf) if d > 0 else d


def _up_sum(values: list[float]) -> float:
    return round_up_sum(torch.tensor(values, dtype=torch.float64))
