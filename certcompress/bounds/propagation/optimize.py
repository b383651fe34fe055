"""Optimized ReLU slopes for the final output rows (alpha-CROWN for the pair;
docs/bounds.md, "Optimized slopes").

Back-substitution (:mod:`.crown`) gives a valid upper bound for *any* tangent slopes
``alpha_z``, ``alpha_c`` in ``[0, 1]`` at the unstable ReLUs of either network and any
split ``theta`` between the difference's own chords and the joint relaxation
(:mod:`.relax`): the defaults are one choice. :func:`optimized_output_upper_bounds`
chooses them per output row and neuron by projected gradient steps (Adam) on the row's
bound, then evaluates the bound once with the best slopes each row has seen, without
gradients, through :func:`.engine.output_upper_bounds` itself (the same outward rounding
margin, underflow floor and early concretization as the default), and takes per row the
smaller of that and the default bound. Soundness does not depend on the optimizer: the
slopes are projected into their ranges before every use, and any slopes in range give a
sound bound; the optimizer only decides how tight. Deterministic: the initial slopes are
the defaults (no random start), and Adam on the same bounds repeats itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .crown import backsubstitute
from .engine import PairState, _rows_per_chunk, _split_outputs, output_upper_bounds
from .form import Form
from .relax import ReluRelaxation

__all__ = ["SlopeResult", "optimized_output_upper_bounds", "optimized_largest_row",
           "project_slopes", "OPTIMIZE_CHUNK_DIVISOR", "LARGEST_ROW_BATCH"]

#: the optimizer's row chunks are this many times smaller than the default pass's (the
#: gradient keeps every intermediate form of the chunk alive)
OPTIMIZE_CHUNK_DIVISOR = 16
#: :func:`optimized_largest_row` optimizes this many rows at a time
LARGEST_ROW_BATCH = 16


@dataclass
class SlopeResult:
    """``bound`` ``(R,)`` (the smaller per row of the default and the optimized bound),
    ``default`` ``(R,)`` (the default relaxation's), ``slopes``: the slopes the optimized
    evaluation used, per ReLU node ``{"theta", "alpha_z", "alpha_c"}`` ``(R, *shape)``
    (already projected; empty when nothing was optimized), ``steps`` run."""

    bound: Tensor
    default: Tensor
    slopes: dict[int, dict[str, Tensor]] = field(default_factory=dict)
    steps: int = 0


def _free_nodes(state: PairState) -> list[int]:
    """The ReLU nodes with an unstable neuron in either network (their slopes matter)."""
    out = []
    for i, r in sorted(state.relax.items()):
        if isinstance(r, ReluRelaxation) and bool((r.unstable_z | r.unstable_c).any()):
            out.append(i)
    return out


def _rows(t: Tensor, prob: Tensor | None, rows: int) -> Tensor:
    if prob is not None:
        return t[prob]
    return t.expand((rows,) + tuple(t.shape[1:]))


def _clamp01(t: Tensor) -> Tensor:
    """``t`` clamped into ``[0, 1]``; its gradient passes through unchanged (a plain
    clamp's is 0 at the ends, where the default slopes start)."""
    if not t.requires_grad:
        return t.clamp(0.0, 1.0)
    return torch.where((t >= 0.0) & (t <= 1.0), t, t.detach().clamp(0.0, 1.0) + (t - t.detach()))


def project_slopes(state: PairState, raw: dict[int, dict[str, Tensor]],
                   prob: Tensor | None) -> dict[int, dict[str, Tensor]]:
    """The slopes back-substitution may use, from the optimizer's ``raw`` values: every
    ``alpha`` and ``theta`` clamped into ``[0, 1]``; ``theta`` only where a ReLU of the
    pair is unstable (0, the exact joint relaxation, where both are stable)."""
    out: dict[int, dict[str, Tensor]] = {}
    for i, p in raw.items():
        r = state.relax[i]
        assert isinstance(r, ReluRelaxation)
        rows = p["alpha_z"].shape[0]
        free = _rows(r.unstable_z | r.unstable_c, prob, rows)
        out[i] = {"alpha_z": _clamp01(p["alpha_z"]), "alpha_c": _clamp01(p["alpha_c"]),
                  "theta": torch.where(free, _clamp01(p["theta"]),
                                       torch.zeros_like(p["theta"]))}
    return out


def _forms(state: PairState, coef: dict[str, Tensor], sl: slice) -> dict[int, Form]:
    """The output rows ``sl`` of ``coef`` as forms at the output nodes (as
    :func:`.engine.output_upper_bounds` builds them)."""
    forms: dict[int, Form] = {}
    for q, t in coef.items():
        rows = t[sl].to(torch.float64)
        for j, part in _split_outputs(state.pair, rows).items():
            f = forms.setdefault(j, Form({}, torch.zeros(rows.shape[0], dtype=torch.float64)))
            f.add(q, part)
    return forms


def _initial(state: PairState, nodes: list[int], prob: Tensor | None, rows: int
             ) -> dict[int, dict[str, Tensor]]:
    """The default slopes (CROWN's tangents) and the split ``theta = 1`` at unstable
    neurons (the difference through its own chords), per row."""
    init: dict[int, dict[str, Tensor]] = {}
    for i in nodes:
        r = state.relax[i]
        assert isinstance(r, ReluRelaxation)
        init[i] = {"alpha_z": _rows(r.alz, prob, rows).clone(),
                   "alpha_c": _rows(r.alc, prob, rows).clone(),
                   "theta": _rows(r.unstable_z | r.unstable_c, prob, rows).to(torch.float64)}
    return init


def _optimize_chunk(state: PairState, coef: dict[str, Tensor], sl: slice,
                    prob: Tensor | None, nodes: list[int], steps: int, lr: float
                    ) -> dict[int, dict[str, Tensor]]:
    """The projected slopes with the smallest bound each row of ``sl`` reached."""
    forms = _forms(state, coef, sl)
    rows = next(iter(forms.values())).const.shape[0]
    raw = _initial(state, nodes, prob, rows)
    leaves = [t.requires_grad_(True) for p in raw.values() for t in p.values()]
    opt = torch.optim.Adam(leaves, lr=lr)
    best: Tensor | None = None
    kept: dict[int, dict[str, Tensor]] = {}
    for _ in range(steps):
        with torch.enable_grad():
            used = project_slopes(state, raw, prob)
            start = {j: Form(dict(f.coef), f.const) for j, f in forms.items()}
            value = backsubstitute(state.pair, start, state.relax, state.lower, state.upper,
                                   prob, params=used, bounds=state.bounds)
            opt.zero_grad()
            value.sum().backward()
        with torch.no_grad():
            v = value.detach()
            better = torch.ones_like(v, dtype=torch.bool) if best is None else v < best
            best = v if best is None else torch.where(better, v, best)
            for i, p in used.items():
                k = kept.setdefault(i, {})
                for name, t in p.items():
                    mask = better.reshape((-1,) + (1,) * (t.dim() - 1))
                    k[name] = t.detach().clone() if name not in k else \
                        torch.where(mask, t.detach(), k[name])
        opt.step()
        with torch.no_grad():
            for t in leaves:
                t.clamp_(0.0, 1.0)
    return kept


def optimized_output_upper_bounds(state: PairState, coef: dict[str, Tensor],
                                  steps: int, lr: float = 0.1,
                                  prob: Tensor | None = None) -> SlopeResult:
    """:func:`.engine.output_upper_bounds` with the ReLU slopes of every row optimized by
    ``steps`` projected Adam steps (module docstring); never above the default bound."""
    with torch.no_grad():
        default = output_upper_bounds(state, coef, prob)
    nodes = _free_nodes(state)
    if steps <= 0 or not nodes:
        return SlopeResult(default, default)
    R = next(iter(coef.values())).shape[0]
    chunk = max(1, _rows_per_chunk(state.pair, state.options) // OPTIMIZE_CHUNK_DIVISOR)
    parts: list[dict[int, dict[str, Tensor]]] = []
    for s in range(0, R, chunk):
        sl = slice(s, s + chunk)
        parts.append(_optimize_chunk(state, coef, sl, None if prob is None else prob[sl],
                                     nodes, steps, lr))
    slopes = project_slopes(state, {i: {k: torch.cat([p[i][k] for p in parts])
                                        for k in parts[0][i]} for i in parts[0]}, prob)
    # the one evaluation the bound rests on: no gradients, the default's code path
    with torch.no_grad():
        optimized = output_upper_bounds(state, coef, prob, params=slopes)
    return SlopeResult(torch.minimum(default, optimized), default, slopes, steps)


def optimized_largest_row(state: PairState, coef: dict[str, Tensor], steps: int,
                          lr: float = 0.1, prob: Tensor | None = None) -> tuple[float, int]:
    """The largest of the rows' upper bounds, with optimized slopes where that matters:
    ``(value, rows optimized)``. Rows are optimized ``LARGEST_ROW_BATCH`` at a time in
    decreasing order of their default bound, until the next row's default bound is at
    most the largest bound reached; every other row keeps its default bound (an upper
    bound of its form), so the value is the maximum over all rows of a sound bound."""
    with torch.no_grad():
        default = output_upper_bounds(state, coef, prob)
    if steps <= 0 or not _free_nodes(state):
        return float(default.max()), 0
    order = torch.argsort(default, descending=True, stable=True)
    reached = float("-inf")
    done = 0
    while done < order.numel() and float(default[order[done]]) > reached:
        pick = order[done:done + LARGEST_ROW_BATCH]
        sub = {q: t[pick] for q, t in coef.items()}
        res = optimized_output_upper_bounds(state, sub, steps, lr,
                                            None if prob is None else prob[pick])
        reached = max(reached, float(res.bound.max()))
        done += int(pick.numel())
    rest = float(default[order[done]]) if done < order.numel() else float("-inf")
    return max(reached, rest), done
