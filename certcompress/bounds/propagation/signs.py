"""The sign-vector l1 bound by best-first branch-and-bound over partial sign vectors
(docs/bounds.md, "The sign-vector l1 bound and row budgets").

The l1 deviation is ``||d||_1 = max_s <s, d>`` over the ``2^m`` sign vectors ``s``. The
flat enumeration back-substitutes every ``s``; this search fixes the signs one output
at a time (outputs in a fixed order, the largest per-output bound first). A node that
fixes ``s_1 .. s_k`` has the bound

    B(node) = min(B(parent), UB(sum_{i <= k} s_i e_i) + sum_{i > k} per_i)

where ``UB(row)`` is any sound upper bound of ``<row, d>`` over the box (one
back-substitution row, unfixed outputs with coefficient 0) and ``per_i`` a sound bound of
``|d_i|`` over the box. For every completion ``s`` and every ``x`` of the box,
``<s, d(x)> <= <s_fixed, d(x)> + sum_{i > k} |d_i(x)| <= B(node)`` (the parent's bound
holds for all of its completions, this node's among them), so ``max(bounds of the open
nodes and of the evaluated leaves)`` is a sound bound of ``max_x ||d(x)||_1`` at any time.
The root's bound is ``min(cap, sum_i per_i)`` (``cap``: the l1 bound the caller already
has), a leaf's ``min(B(parent), UB(s))``.

Best first: the node with the largest bound is expanded (its two children evaluated),
``batch`` nodes per back-substitution call. The search ends when the largest bound
belongs to a leaf (*exhaustive*: no open node can exceed it) or when the row budget is
spent (the largest open bound is returned). Exhaustive, the result is the largest
``min(ancestors' bounds, UB(s))`` over the leaves it reached: the flat enumeration's
``min(cap, max_s UB(s))`` whenever each node's bound is at least the ``UB`` of its
completions, as for affine networks (``UB`` is then subadditive). Back-substitution
through ReLU relaxations is not always subadditive (a full row can be looser than a
partial row plus the others' bounds); there the result can be *below* the flat maximum,
and it is still sound by the argument above (the frontier's nodes cover every sign
vector). Never above it when exhaustive. Deterministic: ties are broken by creation
order.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..numerics import float_slack

__all__ = ["SignSearch", "sign_vector_search", "block_rows", "resolve_sign_rows", "SIGN_BATCH",
           "SIGN_BLOCK", "AUTO_SIGN_WORK", "AUTO_SIGN_MIN"]

#: nodes expanded per back-substitution call (2 rows each)
SIGN_BATCH = 8
#: the unfixed outputs' l1 bound comes from blocks of this many outputs
SIGN_BLOCK = 5
#: ``sign_rows="auto"``: about this many coefficients (rows times the pair's node
#: elements) for the sign-vector search: 199 rows for torchvision resnet18 at 32x32
#: (252,426 elements; about 7 s on one core), every sign vector for MLPs
AUTO_SIGN_WORK = 3 << 24
#: ``sign_rows="auto"`` never budgets fewer rows than this
AUTO_SIGN_MIN = 64


def resolve_sign_rows(option: int | str | None, elements: int, m: int, cost: int = 1
                      ) -> int | None:
    """The row budget ``PropagationOptions.sign_rows`` gives for a pair with ``elements``
    node elements and ``m`` outputs: ``"auto"``: ``max(AUTO_SIGN_MIN // cost,
    AUTO_SIGN_WORK // (cost * elements))`` (``cost``: the work of one row relative to one
    back-substitution through the pair), None (every sign vector) where that is at least
    ``2^m``; an integer or None as given. Deterministic, so a recorded budget recomputes
    the same bound."""
    if option != "auto":
        return option if isinstance(option, int) else None
    c = max(1, int(cost))
    rows = max(AUTO_SIGN_MIN // c, AUTO_SIGN_WORK // (c * max(1, int(elements))))
    return None if rows >= 2 ** m else rows


@dataclass(frozen=True)
class SignSearch:
    """``value``: a sound upper bound of ``max_x ||d(x)||_1`` (at most ``cap``); ``rows``:
    back-substitution rows evaluated; ``exhaustive``: the search ended because the
    largest bound was a leaf's (no budget cut it short)."""

    value: float
    rows: int
    exhaustive: bool


def _up(x: float) -> float:
    """``x`` rounded up by one ulp (covers one float64 addition's rounding)."""
    return math.nextafter(x, math.inf)


def _suffix_sums(per: list[float]) -> list[float]:
    """``rest[k] >= sum_{i >= k} per[i]`` exactly (rounded up), ``rest[m] = 0``."""
    m = len(per)
    grow = 1.0 + float_slack(m + 1, 1)
    rest = [0.0] * (m + 1)
    for k in range(m - 1, -1, -1):
        rest[k] = _up((rest[k + 1] + per[k]) * grow)
    return rest


def _block_suffixes(m: int, block: int) -> list[tuple[int, int]]:
    """The ranges ``[k, e)`` (positions in the output order) whose l1 bound
    :func:`_rest_bounds` computes: every suffix of at least two positions of each block
    ``[a, e)`` of ``block`` consecutive positions, except the first block's whole range
    (only the root would use it)."""
    out = []
    for a in range(0, m, block):
        e = min(m, a + block)
        out += [(k, e) for k in range(a + (1 if a == 0 else 0), e - 1)]
    return out


def block_rows(m: int, block: int) -> int:
    """Rows :func:`_rest_bounds` evaluates for ``m`` outputs and blocks of ``block``."""
    return sum(2 ** (e - k) for k, e in _block_suffixes(m, block)) if block >= 2 else 0


def _rest_bounds(ub_rows: Callable[[Tensor], Tensor], per: list[float], order: list[int],
                 block: int, dev: torch.device) -> list[float]:
    """``rest[k]``: a sound bound of ``max_x sum_{j >= k} |d_{order[j]}(x)|``, rounded up.
    Positions are cut into blocks of ``block``; within a block the l1 bound of the
    positions ``k..e-1`` is the smaller of the sum of their ``per`` and the largest
    ``UB(s)`` over their ``2^(e-k)`` sign vectors (one row each, flat); ``rest[k]`` adds
    the later blocks' whole bounds (a sum of maxima bounds the maximum of the sum)."""
    m = len(per)
    ranges = _block_suffixes(m, block) if block >= 2 else []
    within = {(k, min(m, (k // block + 1) * block) if block >= 2 else m): 0.0
              for k in range(m)}
    sums = {}
    for k, e in within:
        sums[(k, e)] = _suffix_sums(per[k:e])[0]
        within[(k, e)] = sums[(k, e)]
    if ranges:
        mats = []
        for k, e in ranges:
            signs = torch.tensor(list(itertools.product((1.0, -1.0), repeat=e - k)),
                                 dtype=torch.float64, device=dev)
            mat = torch.zeros(signs.shape[0], m, dtype=torch.float64, device=dev)
            mat[:, torch.tensor(order[k:e], dtype=torch.int64, device=dev)] = signs
            mats.append(mat)
        ub = torch.nan_to_num(ub_rows(torch.cat(mats)).to(torch.float64), nan=math.inf)
        start = 0
        for (k, e), mat in zip(ranges, mats):
            top = float(ub[start:start + mat.shape[0]].max())
            start += mat.shape[0]
            within[(k, e)] = min(sums[(k, e)], top)
    grow = 1.0 + float_slack(m + 1, 1)
    rest = [0.0] * (m + 1)
    later = 0.0  # the later blocks' bounds, summed (rounded up)
    for k in range(m - 1, -1, -1):
        e = min(m, (k // block + 1) * block) if block >= 2 else m
        rest[k] = _up((max(within[(k, e)], 0.0) + later) * grow)
        if block >= 2 and k % block == 0:
            later = rest[k]
    return rest


def sign_vector_search(ub_rows: Callable[[Tensor], Tensor], per: Tensor, cap: float,
                       budget: int | None, batch: int = SIGN_BATCH,
                       block: int = SIGN_BLOCK) -> SignSearch:
    """Best-first branch-and-bound for ``max_s <s, d>`` (module docstring).

    ``ub_rows(rows)``: sound upper bounds ``(R,)`` of ``<rows[r], d>`` over the box for
    rows ``(R, m)`` with entries in ``{-1, 0, 1}``; ``per`` ``(m,)``: sound bounds of
    ``|d_i|`` (non-negative, finite); ``cap``: a sound l1 bound the result never exceeds;
    ``budget``: the most rows to evaluate (None: until exhaustive); ``block``: the
    unfixed outputs' l1 bound (``rest``) comes from blocks of this many outputs
    (:func:`_rest_bounds`, :func:`block_rows` rows first, when they fit in half the
    budget; 0 or 1: the sum of their ``per``)."""
    if budget is not None and budget < 0:
        raise ValueError(f"budget must be >= 0 or None, got {budget}")
    per_l = [max(float(v), 0.0) for v in per.reshape(-1).tolist()]
    m = len(per_l)
    if m == 0:
        return SignSearch(0.0, 0, True)
    order = sorted(range(m), key=lambda i: (-per_l[i], i))  # largest per-output first
    dev = per.device
    per_o = [per_l[i] for i in order]
    rows = 0
    if block >= 2 and block_rows(m, block) > 0 \
            and (budget is None or 2 * block_rows(m, block) <= budget):
        rest = _rest_bounds(ub_rows, per_o, order, block, dev)
        rows = block_rows(m, block)
    else:
        rest = _suffix_sums(per_o)
    root = min(float(cap), rest[0])
    # heap entries: (-bound, serial, depth, signs as a tuple over ``order``)
    heap: list[tuple[float, int, int, tuple[float, ...]]] = [(-root, 0, 0, ())]
    serial = 1
    idx = torch.tensor(order, dtype=torch.int64, device=dev)
    while True:
        if heap[0][2] == m:  # the largest bound is a leaf's: nothing open can exceed it
            return SignSearch(-heap[0][0], rows, True)
        nodes: list[tuple[float, int, int, tuple[float, ...]]] = []
        while heap and heap[0][2] < m and len(nodes) < max(1, batch) \
                and (budget is None or rows + 2 * (len(nodes) + 1) <= budget):
            nodes.append(heapq.heappop(heap))
        if not nodes:  # budget spent: the largest open bound holds
            return SignSearch(-heap[0][0], rows, False)
        children: list[tuple[float, int, tuple[float, ...]]] = []
        for neg, _, k, signs in nodes:
            for s in (1.0, -1.0):
                children.append((-neg, k + 1, signs + (s,)))
        mat = torch.zeros(len(children), m, dtype=torch.float64, device=dev)
        for r, (_, k, signs) in enumerate(children):
            mat[r, idx[:k]] = torch.tensor(signs, dtype=torch.float64, device=dev)
        ub = ub_rows(mat).to(torch.float64)
        rows += len(children)
        ub = torch.nan_to_num(ub, nan=math.inf)
        for (parent, k, signs), u in zip(children, ub.tolist()):
            b = parent if u == math.inf else min(parent, _up(u + rest[k]))
            heapq.heappush(heap, (-b, serial, k, signs))
            serial += 1
