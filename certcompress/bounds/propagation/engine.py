"""The propagation driver: interval bounds node by node, tightened by back-substitution
at every ReLU input, then upper bounds of linear forms of the outputs.

Floating point: everything is float64 with round-to-nearest. Every computed bound is a
sum of products whose terms are bounded by the node's *magnitude* (the same quantities
propagated on absolute values, each rule's ``magnitude``). Each interval and each final
bound is pushed outward by ``eta * magnitude`` with
``eta = 2 (N + 2) * float_slack(K, 4 N)`` (``N`` primitive nodes, ``K`` the longest sum),
which covers the accumulated rounding of sums of at most ``K`` terms over the graph's
depth (the forward error analysis of ``certcompress.bounds.numerics``); the relaxations
are computed from the widened intervals. The margin is recorded in every result.

Underflow: a relative margin cannot cover a product that underflows (a back-substituted
coefficient ``1e-200 * 1e-200`` becomes 0, and multiplied by an input of ``1e300`` the
lost term is ``1e-100``). In the standard model with gradual underflow every rounded
product or sum is off by at most ``u |exact| + eta0`` with ``eta0 = 2^-1074``, so each sum
of at most ``K`` terms loses at most ``K eta0`` absolutely. Hence (docs/bounds.md,
"Rounding and underflow"):

* every interval and every magnitude is pushed outward by ``floor = K eta0`` per node as
  well (the magnitudes stay upper bounds of the true ones);
* a back-substituted form is a sum over the nodes it passed of coefficients times node
  values; a coefficient at node ``u`` that lost ``delta`` to underflow changes the form's
  value by at most ``delta * mag_u`` (a node's relaxed value is bounded by its magnitude),
  and every coefficient lost at most ``K eta0`` per step, so every back-substitution bound
  is raised by ``2 K eta0 * sum_u ||mag_u||_1`` over the nodes before it (per input box).
  For ordinary networks this is below ``1e-300``; it is what keeps the bound above the
  true deviation when weights of ``1e-200`` meet inputs of ``1e300``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from ...errors import ConfigurationError, NumericalRangeError
from ..numerics import float_slack
from .crown import backsubstitute
from .device import check_device
from .form import Form
from .interval import Magnitude, PairBounds, input_bounds, make_consistent, widen
from .primitives import PairNet
from .relax import Relaxation, decided
from .rules import SplitParams, rules_for

__all__ = ["PropagationOptions", "PairState", "propagate", "output_upper_bounds",
           "capped_row_max", "sign_vector_order", "rows_per_chunk", "rounding_eta", "ROUNDING_NOTE"]

ROUNDING_NOTE = ("float64 round-to-nearest; every interval and linear bound pushed outward "
                 "by eta x its magnitude (the same sum on absolute values)")


@dataclass(frozen=True)
class PropagationOptions:
    """How hard the propagation works.

    ``intermediate``: ``"crown"`` tightens the bounds at every ReLU input by
    back-substitution to the input (DeepPoly/CROWN; cost grows with the number of
    unstable neurons times the depth), ``"interval"`` keeps interval bounds there and
    back-substitutes only the final forms (CROWN-IBP; cheap). ``max_rows``: a ReLU input
    needing more back-substitution rows than this keeps its interval bounds.
    ``chunk_elements``: rows are processed in chunks of at most this many coefficients
    per tensor (memory; 2^19: 4 MB per float64 tensor, docs/bounds.md "Cost at scale"). ``sign_vectors_up_to``: the l1 bound also maximizes
    ``<s, f - f'>`` over all sign vectors ``s`` when the output has at most this many
    coordinates (``2^m`` rows; otherwise the sum of per-output bounds).
    ``slope_steps``: projected gradient (Adam, step ``slope_lr``) steps on the ReLU
    slopes of the final output rows, per row (alpha-CROWN for the pair,
    :mod:`.optimize`; 0: the default relaxation; the ``bounds`` tier uses it, other
    callers of :func:`output_upper_bounds` do not). Never looser than 0 steps.
    ``chain``: the ``bounds`` tier also bounds a *chain* pair (an MLP or plain CNN,
    :func:`~certcompress.equivalence.chain.chain_from_pair`) with the differential
    single pass of :mod:`certcompress.equivalence.chain` and states, per output and for
    the l1 bound, the smaller of the two sound bounds (docs/bounds.md); False: this
    engine alone (certificates made before the routing are re-checked that way).
    ``sign_rows``: the row budget of the sign-vector l1 bound: all ``2^m`` sign vectors
    when ``2^m <= sign_rows`` (exact), else a best-first branch-and-bound over partial
    sign vectors (:mod:`.signs`) stopped after this many rows, with a sound bound at most
    the sum of per-output bounds, usually between it and the flat maximum; None: every
    sign vector; ``"auto"`` (default): by the pair's size
    (:func:`.signs.resolve_sign_rows`: every sign vector for MLPs, about 200 rows for
    resnet18 at 32x32); certificates record the resolved budget.
    ``crown_rows_per_node``: with ``intermediate="crown"``, at most this many neurons per ReLU input, quantity and input box get back-substitution rows
    (the widest interval bounds first); the others keep their interval bounds (sound,
    looser); None: every unstable neuron.
    ``device``: where the ``bounds`` tier and :func:`~certcompress.certify_local` run
    (:mod:`.device`): ``"auto"`` (default) the CPU unless the environment variable
    ``CERTCOMPRESS_DEVICE`` names a device; ``"cpu"``, ``"cuda"`` or ``"cuda:N"``. Same
    float64 error model on both; a bound computed on a GPU is stated ``DEVICE_MARGIN``
    relative higher and re-checked on a GPU where one is present.
    """

    intermediate: Literal["crown", "interval"] = "crown"
    max_rows: int = 200_000
    chunk_elements: int = 1 << 19
    sign_vectors_up_to: int = 10
    slope_steps: int = 0
    slope_lr: float = 0.1
    chain: bool = True
    sign_rows: int | Literal["auto"] | None = "auto"
    crown_rows_per_node: int | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", check_device(self.device))
        if self.intermediate not in ("crown", "interval"):
            raise ConfigurationError(f"intermediate must be 'crown' or 'interval', got "
                                     f"{self.intermediate!r}")
        if self.max_rows < 0 or self.chunk_elements < 1 or self.sign_vectors_up_to < 0:
            raise ConfigurationError("max_rows, sign_vectors_up_to must be >= 0 and "
                                     "chunk_elements >= 1")
        if isinstance(self.slope_steps, bool) or not isinstance(self.slope_steps, int) \
                or self.slope_steps < 0:
            raise ConfigurationError(f"slope_steps must be an integer >= 0 (0: the default "
                                     f"ReLU slopes), got {self.slope_steps!r}")
        lr = self.slope_lr
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) \
                or not (math.isfinite(lr) and lr > 0):
            raise ConfigurationError(f"slope_lr must be a finite number > 0, got {lr!r}")
        if not isinstance(self.chain, bool):
            raise ConfigurationError(f"chain must be True or False (route chain pairs "
                                     f"through the differential single pass), got "
                                     f"{self.chain!r}")
        for name in ("sign_rows", "crown_rows_per_node"):
            v = getattr(self, name)
            if name == "sign_rows" and v == "auto":
                continue
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                auto = ", 'auto'" if name == "sign_rows" else ""
                raise ConfigurationError(f"{name} must be an integer >= 0{auto} or None (no "
                                         f"budget), got {v!r}")


@dataclass
class PairState:
    """Bounds and relaxations of every node for ``P`` input boxes."""

    pair: PairNet
    lower: Tensor
    upper: Tensor
    bounds: list[PairBounds]
    magnitudes: list[Magnitude]
    relax: dict[int, Relaxation]
    eta: float
    options: PropagationOptions
    stats: dict[str, float] = field(default_factory=dict)
    floor: float = 0.0  # absolute underflow margin per element of a node (K * 2^-1074)
    mag_sum: Tensor | None = None  # (P,): sum of ||mz + mc||_1 over the nodes so far

    def form_floor(self, prob: Tensor | None, rows: int) -> Tensor:
        """The absolute underflow margin of ``rows`` back-substitution bounds (module
        docstring): ``2 floor * sum_u ||mag_u||_1`` for each row's input box."""
        assert self.mag_sum is not None
        per_problem = 2.0 * self.floor * self.mag_sum
        if prob is None:
            return per_problem.max().expand(rows)
        return per_problem[prob]


def _longest_sum(pair: PairNet) -> int:
    return 4 * max(node.numel for node in pair.nodes) + 16


def rounding_eta(pair: PairNet) -> float:
    """The relative rounding margin (see the module docstring)."""
    n = len(pair.nodes)
    return 2.0 * (n + 2) * float_slack(_longest_sum(pair), 4 * n)


UNDERFLOW_UNIT = 2.0 ** -1074  # the smallest subnormal float64


def underflow_floor(pair: PairNet) -> float:
    """The absolute margin per element of a node: ``K * 2^-1074`` (module docstring)."""
    return _longest_sum(pair) * UNDERFLOW_UNIT


def _check_finite(b: PairBounds, mag: Magnitude, where: str) -> None:
    """Overflow is never passed on as ``inf`` (nor as a NaN that a later ``min`` would
    hide): a bound or magnitude beyond float64's range raises NumericalRangeError."""
    tensors = (b.zl, b.zu, b.cl, b.cu, b.dl, b.du, mag.mz, mag.mc)
    if all(bool(torch.isfinite(t).all()) for t in tensors):
        return
    finite = [t[torch.isfinite(t)].abs().max() for t in (mag.mz, mag.mc)
              if bool(torch.isfinite(t).any())]
    largest = max((float(v) for v in finite), default=float("nan"))
    raise NumericalRangeError(
        f"the bounds at node '{where}' overflow float64 (largest finite magnitude there "
        f"{largest:.3g}, range limit {torch.finfo(torch.float64).max:.3g}): the input box or "
        "the weights are too large for the bounds tier; certify over a smaller domain, or "
        "use the path-metric tier")


def _add_magnitude(state: PairState, mag: Magnitude) -> None:
    total = (mag.mz + mag.mc).reshape(mag.mz.shape[0], -1).sum(1)
    state.mag_sum = total if state.mag_sum is None else state.mag_sum + total


def _rows_per_chunk(pair: PairNet, options: PropagationOptions) -> int:
    widest = max(node.numel for node in pair.nodes)
    return max(8, options.chunk_elements // (2 * widest))


def rows_per_chunk(pair: PairNet, options: PropagationOptions) -> int:
    """How many back-substitution rows go through the pair at once (memory bound)."""
    return _rows_per_chunk(pair, options)


def _onehot_rows(shape: Sequence[int], flat: Tensor, sign: Tensor) -> Tensor:
    n = 1
    for s in shape:
        n *= s
    t = torch.zeros((flat.numel(), n), dtype=torch.float64, device=flat.device)
    t[torch.arange(flat.numel(), device=flat.device), flat] = sign
    return t.reshape((flat.numel(),) + tuple(shape))


def _widest(state: PairState, need: Tensor, width: Tensor, budget: int) -> Tensor:
    """``need`` (``(P, *shape)``) restricted to at most ``budget`` neurons per problem,
    those with the widest intervals (``width``); the others keep their interval bounds,
    which are sound (``PropagationOptions.crown_rows_per_node``). Counted in
    ``state.stats["interval_neurons"]``."""
    P = need.shape[0]
    flat = need.reshape(P, -1)
    if int(flat.sum(1).max()) <= budget:
        return need
    score = torch.where(flat, width.reshape(P, -1), torch.full_like(width.reshape(P, -1),
                                                                     -math.inf))
    keep = torch.zeros_like(flat)
    if budget > 0:
        top = score.topk(min(budget, flat.shape[1]), dim=1, sorted=False).indices
        keep.scatter_(1, top, True)
    keep &= flat
    state.stats["interval_neurons"] = (state.stats.get("interval_neurons", 0)
                                       + int(flat.sum()) - int(keep.sum()))
    return keep.reshape(need.shape)


def _tighten(state: PairState, i: int, b: PairBounds) -> PairBounds:
    """Back-substitution bounds at node ``i`` for its unstable neurons."""
    node = state.pair.nodes[i]
    P = b.zl.shape[0]
    mag = state.magnitudes[i]
    lows = {"z": b.zl.clone(), "c": b.cl.clone(), "d": b.dl.clone()}
    highs = {"z": b.zu.clone(), "c": b.cu.clone(), "d": b.du.clone()}
    margins = {"z": state.eta * mag.mz, "c": state.eta * mag.mc,
               "d": state.eta * (mag.mz + mag.mc)}
    # the quantity of a row, as a form over (z, d): c = z - d
    as_form = {"z": {"z": 1.0}, "c": {"z": 1.0, "d": -1.0}, "d": {"d": 1.0}}
    chunk = _rows_per_chunk(state.pair, state.options)
    rows_done = 0
    for q in ("z", "c", "d"):
        if q == "d":
            zs = (lows["z"] >= 0) | (highs["z"] <= 0)
            cs = (lows["c"] >= 0) | (highs["c"] <= 0)
            need = ~(zs & cs) & (highs["d"] > lows["d"])
        else:
            need = (lows[q] < 0) & (highs[q] > 0)
        need = decided("need", need)
        if state.options.crown_rows_per_node is not None:
            need = _widest(state, need, highs[q] - lows[q], state.options.crown_rows_per_node)
        idx = need.reshape(P, -1).nonzero()
        n_rows = 2 * idx.shape[0]
        if n_rows == 0:
            continue
        if n_rows > state.options.max_rows:
            state.stats["skipped_nodes"] = state.stats.get("skipped_nodes", 0) + 1
            continue
        probs = idx[:, 0].repeat_interleave(2)
        flats = idx[:, 1].repeat_interleave(2)
        signs = torch.tensor([1.0, -1.0], dtype=torch.float64,
                             device=idx.device).repeat(idx.shape[0])
        ub = torch.empty(n_rows, dtype=torch.float64, device=idx.device)
        for s in range(0, n_rows, chunk):
            sl = slice(s, s + chunk)
            lam = _onehot_rows(node.shape, flats[sl], signs[sl])
            prob = None if P == 1 else probs[sl]
            form = Form({k: lam * v for k, v in as_form[q].items()},
                        torch.zeros(lam.shape[0], dtype=torch.float64, device=lam.device))
            ub[sl] = backsubstitute(state.pair, {i: form}, state.relax, state.lower,
                                    state.upper, prob, bounds=state.bounds)
        rows_done += n_rows
        m = margins[q].reshape(P, -1)[probs, flats] + state.form_floor(probs, n_rows)
        up_rows, lo_rows = signs > 0, signs < 0
        hi_flat = highs[q].reshape(P, -1)
        lo_flat = lows[q].reshape(P, -1)
        hi_flat[probs[up_rows], flats[up_rows]] = torch.minimum(
            hi_flat[probs[up_rows], flats[up_rows]], ub[up_rows] + m[up_rows])
        lo_flat[probs[lo_rows], flats[lo_rows]] = torch.maximum(
            lo_flat[probs[lo_rows], flats[lo_rows]], -ub[lo_rows] - m[lo_rows])
    state.stats["backsub_rows"] = state.stats.get("backsub_rows", 0) + rows_done
    return make_consistent(PairBounds(lows["z"], highs["z"], lows["c"], highs["c"], lows["d"],
                                      highs["d"]), node.source)


def propagate(pair: PairNet, lower: Tensor, upper: Tensor,
              options: PropagationOptions | None = None) -> PairState:
    """Bounds at every node for the input boxes ``lower <= x <= upper`` (each
    ``(P, *input_shape)``, float64)."""
    opts = options or PropagationOptions()
    t0 = time.perf_counter()
    lower = lower.to(torch.float64)
    upper = upper.to(torch.float64)
    b0, m0 = input_bounds(lower, upper)
    if not bool(torch.isfinite(upper - lower).all()):
        raise NumericalRangeError(
            f"the input box is too wide for float64 arithmetic (bounds up to "
            f"{float(torch.maximum(lower.abs(), upper.abs()).max()):.3g}: its width "
            "overflows); certify over a smaller domain")
    state = PairState(pair, lower, upper, [b0], [m0], {}, rounding_eta(pair), opts,
                      floor=underflow_floor(pair))
    _add_magnitude(state, m0)
    rules = rules_for(pair)
    pre = set(pair.pre_activations())
    with torch.no_grad():
        for i, (node, rule) in enumerate(zip(pair.nodes, rules)):
            if rule.is_input:
                continue
            ins = [state.bounds[j] for j in node.inputs]
            mag = rule.magnitude(node, [state.magnitudes[j] for j in node.inputs])
            # rounded upward in the relative and the absolute sense, so it stays an upper
            # bound of the true magnitude even where a product underflows
            mag = Magnitude(mag.mz * (1 + state.eta) + state.floor,
                            mag.mc * (1 + state.eta) + state.floor)
            state.magnitudes.append(mag)
            _add_magnitude(state, mag)
            b = make_consistent(widen(rule.interval(node, ins, state.bounds), mag, state.eta,
                                      state.floor), node.source)
            _check_finite(b, mag, node.source)
            state.bounds.append(b)
            relaxation = rule.relaxation(node, state.bounds)
            if relaxation is not None:
                state.relax[i] = relaxation
            if i in pre and opts.intermediate == "crown":
                state.bounds[i] = _tighten(state, i, b)
    state.stats["seconds"] = time.perf_counter() - t0
    return state


def _split_outputs(pair: PairNet, coef: Tensor) -> dict[int, Tensor]:
    """Rows over the flattened output ``(R, m)`` as per-node rows ``(R, *shape)``."""
    out: dict[int, Tensor] = {}
    start = 0
    for j in pair.outputs:
        node = pair.nodes[j]
        part = coef[:, start:start + node.numel].reshape((coef.shape[0],) + node.shape)
        out[j] = out[j] + part if j in out else part
        start += node.numel
    return out


def _flat_outputs(pair: PairNet, per_node: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.reshape(t.shape[0], -1) for t in per_node], dim=1)


def _param_rows(params: SplitParams | None, sl: slice) -> SplitParams | None:
    if params is None:
        return None
    return {i: {k: t[sl] for k, t in p.items()} for i, p in params.items()}


def output_bounds(state: PairState) -> PairBounds:
    """Interval bounds on the flattened outputs, ``(P, m)`` each."""
    bs = [state.bounds[j] for j in state.pair.outputs]
    return PairBounds(*(_flat_outputs(state.pair, [getattr(b, k) for b in bs])
                        for k in ("zl", "zu", "cl", "cu", "dl", "du")))


def output_magnitudes(state: PairState) -> tuple[Tensor, Tensor]:
    ms = [state.magnitudes[j] for j in state.pair.outputs]
    return (_flat_outputs(state.pair, [m.mz for m in ms]),
            _flat_outputs(state.pair, [m.mc for m in ms]))


def output_upper_bounds(state: PairState, coef: dict[str, Tensor],
                        prob: Tensor | None = None, params: SplitParams | None = None
                        ) -> Tensor:
    """Upper bounds ``(R,)`` of ``sum_q <coef[q][r], q_out>`` over the box of row ``r``'s
    problem (``coef[q]`` is ``(R, m)`` over the flattened output; ``q`` in ``z`` (the
    original's output) and ``d`` (original minus compressed); the compressed output is
    ``z - d``), rounding margin included. ``params``: per-row ReLU split and slopes
    (``(R, *shape)`` each, in their valid ranges; :mod:`.optimize`), else the default
    relaxation."""
    R = next(iter(coef.values())).shape[0]
    chunk = _rows_per_chunk(state.pair, state.options)
    mz, mc = output_magnitudes(state)
    mags = {"z": mz, "d": mz + mc}
    result = torch.empty(R, dtype=torch.float64, device=state.lower.device)
    with torch.no_grad():
        for s in range(0, R, chunk):
            sl = slice(s, s + chunk)
            p = None if prob is None else prob[sl]
            forms: dict[int, Form] = {}
            margin = torch.zeros(min(R, s + chunk) - s, dtype=torch.float64,
                                 device=state.lower.device)
            for q, t in coef.items():
                rows = t[sl].to(torch.float64)
                m = mags[q] if p is None else mags[q][p]
                margin = margin + (rows.abs() * m).sum(1)
                for j, part in _split_outputs(state.pair, rows).items():
                    f = forms.setdefault(j, Form({}, torch.zeros(
                        rows.shape[0], dtype=torch.float64, device=rows.device)))
                    f.add(q, part)
            ub = backsubstitute(state.pair, forms, state.relax, state.lower, state.upper, p,
                                params=_param_rows(params, sl), bounds=state.bounds)
            result[sl] = ub + state.eta * margin + state.form_floor(p, ub.shape[0])
    return result


def sign_vector_order(signs: Tensor, plus: Tensor, minus: Tensor) -> Tensor:
    """An order of the sign vectors ``signs`` ``(S, m)`` for :func:`capped_row_max`, the
    likely largest bound of ``<s, f - f'>`` first: by ``sum_j`` of the per-output upper
    bound on the side ``s_j`` picks (``plus[j]`` for ``+1``, ``minus[j]`` for ``-1``),
    descending. Only the speed depends on it, never the result."""
    diff = torch.nan_to_num(plus - minus, nan=0.0, posinf=1e300, neginf=-1e300)
    score = (signs.to(diff.dtype) * diff.reshape(1, -1)).sum(1)
    return torch.argsort(score, descending=True, stable=True)


def capped_row_max(ub_rows: Callable[[Tensor], Tensor], prob: Tensor, cap: Tensor,
                   chunk: int) -> Tensor:
    """``max`` over rows ``r`` of problem ``p`` of ``ub_rows(r)``, per problem, for a caller
    that only needs ``min(cap[p], max)``: rows are evaluated in their order, ``chunk`` at
    a time (``ub_rows(idx)`` gives the values ``(len(idx),)`` of the rows ``idx``), and a
    problem whose running maximum has reached ``cap[p]`` gets no more rows. The result
    ``best[p]`` is the full maximum, or a value ``>= cap[p]`` that is one of the rows'
    values (so ``min(cap, best)`` equals ``min(cap, max)`` exactly). A problem with no
    rows gets ``-inf``. ``prob`` ``(R,)`` gives each row's problem, ``cap`` ``(P,)``."""
    P, R = cap.shape[0], prob.shape[0]
    best = torch.full((P,), -math.inf, dtype=torch.float64, device=cap.device)
    active = torch.ones(P, dtype=torch.bool, device=cap.device)
    for s in range(0, R, max(1, chunk)):
        idx = torch.arange(s, min(R, s + chunk), device=prob.device)
        idx = idx[active[prob[idx]]]
        if idx.numel() == 0:
            if not bool(active.any()):
                break
            continue
        v = ub_rows(idx).to(torch.float64)
        best = best.scatter_reduce(0, prob[idx], v, "amax")
        active = active & ~(best >= cap) & ~torch.isnan(best)
    return best
