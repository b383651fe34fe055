"""The one-pass bound over a whole input box that the ``bounds`` tier states and the
``bab`` tier starts from (:func:`box_bound`): the engine's differential propagation and,
for a chain pair, the differential single pass of :mod:`.chain` (docs/bounds.md, "Chain
pairs"): per-output bounds of ``|f_o - f'_o|`` and an l1 bound (:func:`chain_bounds`:
None where the pair is not a chain, the routing is off (``PropagationOptions.chain``) or
the pass overflows)."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import torch

from ..bounds.numerics import round_up_sum
from ..bounds.propagation.engine import (
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
from ..bounds.propagation.optimize import optimized_largest_row, optimized_output_upper_bounds
from ..bounds.propagation.primitives import PairNet
from ..bounds.propagation.signs import resolve_sign_rows, sign_vector_search
from ..domain import InputDomain
from ..errors import NumericalRangeError
from .chain import ChainState, chain_from_pair

__all__ = ["chain_state", "chain_bounds", "chain_rows", "chain_per_output",
           "chain_largest_row", "BoxBound", "box_bound"]



def chain_state(lowered: PairNet, domain: InputDomain, opts: PropagationOptions
                 ) -> ChainState | None:
    """The differential single pass of a chain pair over the domain's box (relaxation
    ``"choose"``, intermediate bounds on ``z`` and ``d`` back-substituted and intersected
    with the symbolic forward ones, ``intermediate="both"``: on pruned MLPs 0.62-0.78x
    of back-substitution alone, docs/bounds.md), or None: the
    routing is off (``opts.chain``), the pair is not a chain
    (:func:`~certcompress.equivalence.chain.chain_from_pair`), or a layer is wider than
    ``opts.max_rows`` allows the engine to back-substitute (the engine then keeps
    interval bounds there; the chain pass has no such cap). With
    ``intermediate="interval"`` the cheap symbolic forward bounds stand in for the
    back-substituted ones. Its bounds carry the engine's outward rounding margins
    (``rounding_eta`` relative, ``underflow_floor`` absolute, :mod:`.propagation.engine`)."""
    if not opts.chain:
        return None
    chain = chain_from_pair(lowered)
    if chain is None:
        return None
    widest = max((int(layer.w.shape[0]) for layer in chain.layers if layer.w is not None),
                 default=0)
    if 4 * widest > opts.max_rows:
        return None
    lo = domain.lower_tensor().reshape(1, -1).to(torch.float64).to(lowered.device)
    hi = domain.upper_tensor().reshape(1, -1).to(torch.float64).to(lowered.device)
    return ChainState(chain, lo, hi,
                      intermediate="both" if opts.intermediate == "crown" else "forward",
                      quantities=("z", "d"), relaxation="choose")


def chain_bounds(lowered: PairNet, domain: InputDomain, opts: PropagationOptions
                  ) -> tuple[float, torch.Tensor, float] | None:
    """``(eta, per_output, l1)`` of the chain pass (:func:`chain_state`), or None where it
    does not apply or overflows float64 (an interval or bound that is not finite: the
    engine's bound stands alone there). Per output: the bound of ``|f_o - f'_o|``, +inf
    where not finite (so the minimum with the engine's ignores it); l1: the rounded-up
    sum of those and, with at most ``opts.sign_vectors_up_to`` outputs, the largest
    sign-vector row bound, whichever is smaller."""
    try:
        state = chain_state(lowered, domain, opts)
        if state is None:
            return None
        m = lowered.output_size
        per = chain_per_output(state, m, opts)
        per = torch.where(torch.isfinite(per), per, torch.full_like(per, math.inf))
        l1 = round_up_sum(per) if bool(torch.isfinite(per).all()) else math.inf
        if 0 < m <= opts.sign_vectors_up_to:
            signs = torch.tensor(list(itertools.product((1.0, -1.0), repeat=m)),
                                 dtype=torch.float64)
            best = chain_largest_row(state, signs, opts)
            if math.isfinite(best):
                l1 = min(l1, max(best, 0.0))
    except NumericalRangeError:  # the chain pass's own intervals overflowed
        return None
    if not math.isfinite(l1) and not bool(torch.isfinite(per).any()):
        return None
    return float(state.chain.eta), per, l1


def chain_rows(chain: ChainState, rows: torch.Tensor, opts: PropagationOptions
                ) -> torch.Tensor:
    """Upper bounds of ``<rows[r], f - f'>`` by the chain pass (with ``opts.slope_steps``
    gradient steps on the rows' ReLU slopes, the chain's own step size)."""
    dev = chain.lower.device
    prob = torch.zeros(rows.shape[0], dtype=torch.long, device=dev)
    with torch.no_grad():
        return chain.upper_bounds(None, rows.to(dev), prob, optimize=opts.slope_steps)[0]


def chain_per_output(chain: ChainState, m: int, opts: PropagationOptions) -> torch.Tensor:
    """Per-output bounds of ``|f_o - f'_o|`` by the chain pass."""
    eye = torch.eye(m, dtype=torch.float64)
    ub = chain_rows(chain, torch.cat([eye, -eye]), opts)
    return torch.maximum(ub[:m], ub[m:]).clamp(min=0.0)


def chain_largest_row(chain: ChainState, signs: torch.Tensor, opts: PropagationOptions
                       ) -> float:
    """The largest upper bound of ``<s, f - f'>`` over the sign vectors ``s`` by the chain
    pass (a bound of ``||f - f'||_1``)."""
    best = -math.inf
    for s in range(0, signs.shape[0], 256):
        top = float(chain_rows(chain, signs[s:s + 256], opts).max())
        if not top <= math.inf:  # NaN: no bound from these rows
            return math.inf
        best = max(best, top)
    return best


@dataclass(frozen=True)
class BoxBound:
    """The one-pass bound over a box that the ``bounds`` tier states and the ``bab`` tier
    starts from: the l1 ``bound``, ``per_output`` bounds of ``|f_o - f'_o|``, the relative
    rounding margin ``eta`` they carry, and the ``details`` a certificate records."""

    bound: float
    per_output: torch.Tensor
    eta: float
    details: dict[str, Any]


def box_bound(lowered: PairNet, domain: InputDomain, opts: PropagationOptions) -> BoxBound:
    """The engine's differential propagation over the domain's box (CROWN output rows,
    interval bounds, the sign-vector l1 bound within ``opts.sign_rows``) and, for a chain
    pair, the differential single pass (:func:`chain_bounds`): per output and for l1 the
    smallest sound bound. A :class:`NumericalRangeError` where the bounds overflow."""
    lower = domain.lower_tensor().unsqueeze(0).to(lowered.device)
    upper = domain.upper_tensor().unsqueeze(0).to(lowered.device)
    state = propagate(lowered, lower, upper, opts)
    m = lowered.output_size
    eye = torch.eye(m, dtype=torch.float64, device=lower.device)
    ub, slope_rows = _output_rows(state, torch.cat([eye, -eye]), opts)
    crown = torch.maximum(ub[:m], ub[m:]).clamp(min=0.0)
    interval = output_bounds(state).dev()[0].clamp(min=0.0)  # widened per node already
    engine_per = torch.minimum(crown, interval)
    chain = chain_bounds(lowered, domain, opts)
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
    return BoxBound(
        bound=l1, per_output=per,
        eta=float(state.eta) if chain is None else max(float(state.eta), chain[0]),
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
