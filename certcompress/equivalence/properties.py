"""The properties an equivalence verification proves or refutes, each as: the linear
forms of the outputs to bound per region, how the bounds decide the region, and what
makes a concrete input a violation.

Forms are over ``f`` (the original's output, coefficient ``cz``) and ``f - f'`` (the
difference, ``cd``); the compressed output is ``f - (f - f')``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..bounds.numerics import float_slack

__all__ = ["Property", "EpsilonProperty", "Top1Property", "ConfidenceProperty",
           "Judgement"]


@dataclass(frozen=True)
class Judgement:
    """Per region (``(P,)`` each): ``verified``; ``score`` (how far from proven, larger is
    worse; the search works on the worst region first); ``worst`` (the index of the row
    whose input coefficients choose the split); ``bound`` (the certified bound of the
    property's quantity, or None for decision properties); ``excess`` (``(P, r)``, >= 0:
    how far each row's bound is above what proving the region needs, the weights of the
    smear split heuristic; None: split on the ``worst`` row alone)."""

    verified: Tensor
    score: Tensor
    worst: Tensor
    bound: Tensor | None
    excess: Tensor | None = None


class Property:
    """Base class; ``m`` is the number of outputs."""

    name = ""

    def __init__(self, m: int) -> None:
        self.m = m

    def rows(self, centre_f: Tensor) -> tuple[Tensor | None, Tensor | None, int]:
        """``(cz, cd, r)``: ``r`` forms per region, region-major (``(P * r, m)``);
        ``centre_f`` is the original's output at each region's centre."""
        raise NotImplementedError

    def judge(self, ub: Tensor, centre_f: Tensor) -> Judgement:
        """Decide the regions from the upper bounds ``(P, r)`` of their forms."""
        raise NotImplementedError

    def violation(self, f: Tensor, fc: Tensor, cls: Tensor | None = None) -> Tensor:
        """``(N,)``: positive exactly where the outputs violate the property (float64).
        ``cls`` (the class the region's centre predicts) is a hint for the smooth
        objective of the search; the sign never depends on it."""
        raise NotImplementedError

    def deviation(self, f: Tensor, fc: Tensor) -> Tensor | None:
        """The property's quantity at concrete outputs (for ``found``), or None."""
        return None


def _round_up(t: Tensor, terms: int) -> Tensor:
    """An upper bound of the exact sum that produced ``t`` (non-negative) in float64."""
    return t * (1.0 + float_slack(max(terms, 1), 1)) + 1e-300


class EpsilonProperty(Property):
    """``||f(x) - f'(x)||_norm <= epsilon`` (``norm`` ``"inf"``: every output; ``"l1"``:
    the sum of absolute differences, bounded through the sign vectors when the output
    has at most ``sign_vectors_up_to`` coordinates, else as the sum of per-output
    bounds)."""

    name = "epsilon"

    def __init__(self, m: int, epsilon: float, norm: str, sign_vectors_up_to: int = 10
                 ) -> None:
        super().__init__(m)
        self.epsilon = float(epsilon)
        self.norm = norm
        eye = torch.eye(m, dtype=torch.float64)
        self.signs = norm == "l1" and m <= sign_vectors_up_to
        if self.signs:
            self.base = torch.tensor(list(itertools.product((1.0, -1.0), repeat=m)),
                                     dtype=torch.float64)
        else:
            self.base = torch.cat([eye, -eye])

    def rows(self, centre_f: Tensor) -> tuple[Tensor | None, Tensor | None, int]:
        P = centre_f.shape[0]
        return None, self.base.repeat(P, 1), int(self.base.shape[0])

    def judge(self, ub: Tensor, centre_f: Tensor) -> Judgement:
        if self.norm == "inf" or self.signs:
            bound = ub.amax(1).clamp(min=0.0)
        else:
            per = torch.maximum(ub[:, :self.m], ub[:, self.m:]).clamp(min=0.0)
            bound = _round_up(per.sum(1), self.m)
        worst = ub.argmax(1)
        # per output (inf) or per sign vector (l1): each row alone must stay below epsilon
        excess = (ub - self.epsilon).clamp(min=0.0) if self.norm == "inf" or self.signs \
            else None
        return Judgement(bound <= self.epsilon, bound - self.epsilon, worst, bound, excess)

    def deviation(self, f: Tensor, fc: Tensor) -> Tensor:
        d = (f - fc).abs()
        return d.amax(1) if self.norm == "inf" else d.sum(1)

    def violation(self, f: Tensor, fc: Tensor, cls: Tensor | None = None) -> Tensor:
        return self.deviation(f, fc) - self.epsilon


def _pair_rows(m: int, i: Tensor) -> Tensor:
    """``(P, m - 1, m)``: rows ``e_k - e_i`` for every ``k != i[p]``."""
    P = i.shape[0]
    eye = torch.eye(m, dtype=torch.float64)
    ks = torch.arange(m).expand(P, m)
    others = ks[ks != i[:, None]].reshape(P, m - 1)
    return eye[others] - eye[i][:, None, :]


class Top1Property(Property):
    """``argmax f'(x) = argmax f(x)`` on the whole region. A region is proven when one
    class ``i`` (the one the original predicts at its centre) is strictly above every
    other class in both networks on the whole region."""

    name = "top1"

    def rows(self, centre_f: Tensor) -> tuple[Tensor | None, Tensor | None, int]:
        i = centre_f.argmax(1)
        r = _pair_rows(self.m, i)  # e_k - e_i
        P = r.shape[0]
        zrows = r
        cz = torch.cat([zrows, r], 1).reshape(P * 2 * (self.m - 1), self.m)
        cd = torch.cat([torch.zeros_like(r), -r], 1).reshape(P * 2 * (self.m - 1), self.m)
        return cz, cd, 2 * (self.m - 1)

    def judge(self, ub: Tensor, centre_f: Tensor) -> Judgement:
        score = ub.amax(1)
        # every row (a margin of another class over the predicted one) must be < 0
        return Judgement(score < 0, score, ub.argmax(1), None, ub.clamp(min=0.0))

    def violation(self, f: Tensor, fc: Tensor, cls: Tensor | None = None) -> Tensor:
        i = f.argmax(1)
        top2 = f.topk(2, dim=1).values
        strict = top2[:, 0] > top2[:, 1]
        other = fc.clone()
        other.scatter_(1, i[:, None], -math.inf)
        gap = other.amax(1) - fc.gather(1, i[:, None])[:, 0]  # > 0: f' prefers another
        return torch.where(strict, gap, torch.full_like(gap, -1.0))

    def objective(self, f: Tensor, fc: Tensor, cls: Tensor) -> Tensor:
        """Smooth: positive only at violations where the original predicts ``cls``."""
        fi = f.gather(1, cls[:, None])
        ci = fc.gather(1, cls[:, None])
        mask = torch.zeros_like(f, dtype=torch.bool).scatter_(1, cls[:, None], True)
        zo = f.masked_fill(mask, -math.inf).amax(1, keepdim=True)
        co = fc.masked_fill(mask, -math.inf).amax(1, keepdim=True)
        return (torch.minimum(fi - zo, co - ci))[:, 0]


class ConfidenceProperty(Property):
    """Where the original's softmax confidence ``max softmax f(x) >= confidence`` (in
    ``(0.5, 1)``: at most one class can be that confident), ``argmax f'(x) = argmax
    f(x)``. A region is proven when every class ``j`` either cannot reach that
    confidence on it (a sound upper bound of ``softmax_j``, from lower bounds of
    ``f_k - f_j``) or wins strictly in the compressed network on the whole region."""

    name = "top1"

    def __init__(self, m: int, confidence: float) -> None:
        super().__init__(m)
        self.confidence = float(confidence)
        eye = torch.eye(m, dtype=torch.float64)
        pairs = [(j, k) for j in range(m) for k in range(m) if j != k]
        self.pairs = pairs
        # z rows: f_j - f_k; c rows: f'_k - f'_j (as forms: cz = e_k - e_j, cd = -(e_k - e_j))
        zr = torch.stack([eye[j] - eye[k] for j, k in pairs])
        cr = -zr
        self.cz = torch.cat([zr, cr])
        self.cd = torch.cat([torch.zeros_like(zr), -cr])

    def rows(self, centre_f: Tensor) -> tuple[Tensor | None, Tensor | None, int]:
        P = centre_f.shape[0]
        return self.cz.repeat(P, 1), self.cd.repeat(P, 1), int(self.cz.shape[0])

    def softmax_upper(self, ub_z: Tensor) -> Tensor:
        """``(P, m)`` sound upper bounds of ``softmax_j f``: ``1 / (1 + sum_k exp(l_kj))``
        with ``l_kj = -ub(f_j - f_k)`` lower bounds of ``f_k - f_j``; the sum rounded
        down, the quotient rounded up."""
        P, m = ub_z.shape[0], self.m
        low = -ub_z.reshape(P, m, m - 1)
        s = torch.exp(low).sum(2) * (1.0 - 1e-12)
        return 1.0 / (1.0 + s) * (1.0 + 1e-12)

    def judge(self, ub: Tensor, centre_f: Tensor) -> Judgement:
        P, m = ub.shape[0], self.m
        n = m * (m - 1)
        soft = self.softmax_upper(ub[:, :n])
        cwin = ub[:, n:].reshape(P, m, m - 1)  # ub of f'_k - f'_j
        cmax = cwin.amax(2)
        ok = (soft < self.confidence) | (cmax < 0)
        per_class = torch.minimum(soft - self.confidence, cmax)
        score = per_class.amax(1)
        j = per_class.argmax(1)
        worst = n + j * (m - 1) + cwin.argmax(2).gather(1, j[:, None])[:, 0]
        return Judgement(ok.all(1), score, worst, None)

    def violation(self, f: Tensor, fc: Tensor, cls: Tensor | None = None) -> Tensor:
        conf = torch.softmax(f, dim=1).amax(1)
        gap = Top1Property(self.m).violation(f, fc)
        return torch.where(conf >= self.confidence, gap, torch.full_like(gap, -1.0))

    def objective(self, f: Tensor, fc: Tensor, cls: Tensor) -> Tensor:
        logp = torch.log_softmax(f, dim=1).gather(1, cls[:, None])[:, 0]
        top = Top1Property(self.m).objective(f, fc, cls)
        return torch.minimum(logp - math.log(self.confidence), top)
