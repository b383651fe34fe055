"""The differential single pass of :mod:`.chain` over a whole input box, as the
``bounds`` tier and the ``bab`` tier's one-pass bound use it (docs/bounds.md, "Chain
pairs"): per-output bounds of ``|f_o - f'_o|`` and an l1 bound, or None where the pair is
not a chain, the routing is off (``PropagationOptions.chain``) or the pass overflows."""

from __future__ import annotations

import itertools
import math

import torch

from ..bounds.numerics import round_up_sum
from ..bounds.propagation.engine import PropagationOptions
from ..bounds.propagation.primitives import PairNet
from ..domain import InputDomain
from ..errors import NumericalRangeError
from .chain import ChainState, chain_from_pair

__all__ = ["chain_state", "chain_bounds", "chain_rows", "chain_per_output",
           "chain_largest_row"]



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
    lo = domain.lower_tensor().reshape(1, -1).to(torch.float64)
    hi = domain.upper_tensor().reshape(1, -1).to(torch.float64)
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
    prob = torch.zeros(rows.shape[0], dtype=torch.long)
    with torch.no_grad():
        return chain.upper_bounds(None, rows.cpu(), prob, optimize=opts.slope_steps)[0]


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
