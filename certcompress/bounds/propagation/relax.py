"""Linear relaxation of a ReLU node of the pair, applied to a linear form.

Forms are written over ``z`` (the original network's value) and ``d = z - c`` (the
difference to the compressed network's value ``c``); the compressed network alone is
``z - d``. At a ReLU node a form has coefficients ``lz`` on ``r = ReLU(z)`` and ``ld`` on
``r - rc = ReLU(z) - ReLU(c)``. For any real ``theta`` (per row and neuron) it is split
exactly as

    lz r + ld (r - rc) = theta ld (r - rc) + (lz + (1 - theta) ld) r - (1 - theta) ld rc

and each part is bounded above by a valid linear function of the node's input:

* ``s (r - rc)``, ``s = theta ld``: between ``min(d, 0)`` and ``max(d, 0)``
  (ReluDiff); their chords over ``[l_d, u_d]``: error of the order of the *difference*;
* ``m r``: the chord ``a z + b`` (``a = u/(u - l)``, ``b = -a l``) if ``m > 0``, the
  tangent ``alpha z`` (``alpha`` in ``[0, 1]``) if ``m < 0``; exact when stable;
* ``m' rc`` likewise on ``c = z - d``.

``theta = 1`` routes the difference through its own chords (best when both ReLUs are
unstable and the difference is small), ``theta = 0`` relaxes the two networks jointly
(exact when both are stable). By default each row and neuron takes whichever of the two
gives the smaller value over the node's input bounds, and ``alpha`` is 1 where
``u > -l`` (CROWN's choice); :func:`relu_backward` also accepts optimized ``theta`` and
``alpha`` per row (alpha-CROWN).

Near-ties (docs/bounds.md, "On a GPU"): the two values are often *mathematically* equal
(with different coefficients), and then the last bits of the computed values, which
differ with the summation order, would pick, and the bound would move by percent when
a re-check on another machine picks the other. So ``theta = 1`` is taken only where its
value is below the other's by more than ``TIE_REL`` times the row's scale
``(|lz| + |ld|) * max |bound|`` at the neuron (every term of either value is at most a
small multiple of it): far above the rounding (about ``1e-16`` of it) and far below the
genuine gaps (measured on benchmarks/bench_reorder_sensitivity.py's pairs: none between
``1e-14`` and ``1e-6`` of it). A tie goes to ``theta = 0`` (the joint relaxation), which
measured tighter there than ``theta = 1`` (up to 45%). Any ``theta`` is sound, so this
only decides how tight, never whether the bound holds. The default tangent slope
likewise: ``alpha = 1`` only where ``u + l > TIE_REL (u - l)`` (a symmetric interval,
``u = -l``, takes 0). :data:`SPLIT_TIES` ``"strict"`` restores the plain comparisons
(certificates made before the rule).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import Tensor

from .interval import PairBounds

__all__ = ["ReluRelaxation", "PerturbRelaxation", "Relaxation", "relax_relu",
           "perturb_deltas", "single_relu", "relu_backward", "TIE_REL", "SPLIT_TIES",
           "DECISION_HOOK", "decided"]

#: relative width of a near-tie between the two splits (module docstring)
TIE_REL = 2.0 ** -30
#: how the default split treats near-ties (module docstring): ``"tolerant"`` (default,
#: recorded as ``split_ties`` by the ``bounds`` tier), ``"strict"`` (the plain comparison
#: ``v1 <= v0``, which the last bits decide: how certificates made before the near-tie
#: rule were computed, and re-checked)
SPLIT_TIES: ContextVar[str] = ContextVar("certcompress_split_ties", default="tolerant")


#: a function ``(kind, mask) -> mask`` that sees (and may replace) every discrete
#: choice the relaxation makes (benchmarks/bench_reorder_sensitivity.py)
DECISION_HOOK: ContextVar[Callable[[str, Tensor], Tensor] | None] = \
    ContextVar("certcompress_decision_hook", default=None)


def decided(kind: str, mask: Tensor) -> Tensor:
    """``mask`` as the decision hook (if any) returns it."""
    hook = DECISION_HOOK.get()
    return mask if hook is None else hook(kind, mask)


@dataclass(frozen=True)
class ReluRelaxation:
    """Per-neuron relaxation data of a ReLU node (each ``(P, *shape)``): chords
    ``a*, b*`` and default tangent slopes ``al*`` of ``ReLU(z)`` and ``ReLU(c)``, chords
    ``su, bu`` of ``max(d, 0)`` and ``sl, bl`` of ``min(d, 0)``, the input bounds, and
    ``unstable_z``/``unstable_c`` (where a tangent slope may be chosen)."""

    az: Tensor
    bz: Tensor
    alz: Tensor
    ac: Tensor
    bc: Tensor
    alc: Tensor
    su: Tensor
    bu: Tensor
    sl: Tensor
    bl: Tensor
    bounds: PairBounds
    unstable_z: Tensor
    unstable_c: Tensor


@dataclass(frozen=True)
class PerturbRelaxation:
    """Per-element rounding bounds of a ``PPerturb`` node for each input box (each
    ``(P, *shape)``): ``|e_z| <= dz``, ``|e_c| <= dc``."""

    dz: Tensor
    dc: Tensor


#: what a node's rule hands back-substitution: a ReLU's relaxation or a perturbation's
#: per-element bounds
Relaxation = ReluRelaxation | PerturbRelaxation


def perturb_deltas(delta: Tensor, near_zero: Tensor | None, lo: Tensor, hi: Tensor
                   ) -> Tensor:
    """``min(delta, max(|lo|, |hi|) + near_zero)`` elementwise (``(P, *shape)``), or
    ``delta`` broadcast to ``lo``'s shape without ``near_zero``: the rounding bound of a
    quantizer whose grid contains 0, given bounds ``[lo, hi]`` of its input
    (docs/quantization.md, "Per-element rounding bound")."""
    full = delta.expand(lo.shape)
    if near_zero is None:
        return full
    size = torch.maximum(lo.abs(), hi.abs()) + near_zero
    return torch.minimum(full, size.clamp(min=0.0))


def single_relu(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(a, b, alpha)``: ``alpha x <= ReLU(x) <= a x + b`` for ``lo <= x <= hi``."""
    active = lo >= 0
    dead = hi <= 0
    unstable = ~(active | dead)
    width = torch.where(unstable, hi - lo, torch.ones_like(hi))
    a = torch.where(active, torch.ones_like(lo), torch.where(unstable, hi / width,
                                                             torch.zeros_like(lo)))
    b = torch.where(unstable, -a * lo, torch.zeros_like(lo))
    # CROWN's tangent: 1 where u > -l; with the near-tie rule, where u + l exceeds
    # TIE_REL (u - l): a symmetric interval (u = -l exactly, e.g. a zero-bias neuron over
    # a box centred at 0) then takes 0 whatever the last bits of u and l
    up = hi + lo > TIE_REL * (hi - lo) if SPLIT_TIES.get() == "tolerant" else hi > -lo
    alpha = torch.where(active | (unstable & decided("alpha", up)),
                        torch.ones_like(lo), torch.zeros_like(lo))
    return a, b, alpha


def relax_relu(bd: PairBounds) -> ReluRelaxation:
    """The relaxation data of a ReLU node whose input has bounds ``bd``."""
    az, bz, alz = single_relu(bd.zl, bd.zu)
    ac, bc, alc = single_relu(bd.cl, bd.cu)
    zero = torch.zeros_like(bd.zl)
    one = torch.ones_like(bd.zl)
    pos, neg = bd.dl >= 0, bd.du <= 0
    straddle = ~(pos | neg)
    width = torch.where(straddle, bd.du - bd.dl, one)
    su = torch.where(pos, one, torch.where(straddle, bd.du / width, zero))
    bu = torch.where(straddle, -su * bd.dl, zero)
    sl = torch.where(neg, one, torch.where(straddle, -bd.dl / width, zero))
    bl = torch.where(straddle, -sl * bd.du, zero)
    return ReluRelaxation(az, bz, alz, ac, bc, alc, su, bu, sl, bl, bd,
                          (bd.zl < 0) & (bd.zu > 0), (bd.cl < 0) & (bd.cu > 0))


def _rows(t: Tensor, prob: Tensor | None) -> Tensor:
    return t if prob is None else t[prob]


@dataclass
class _Part:
    """``cz * z + cd * d + const`` (elementwise, per row)."""

    cz: Tensor
    cd: Tensor
    const: Tensor

    def value(self, zl: Tensor, zu: Tensor, dl: Tensor, du: Tensor) -> Tensor:
        """Maximum over the box, elementwise. Summed in place, left to right (the same
        arithmetic as ``a + b + c + d + const``, fewer row-sized temporaries: memory at
        scale, docs/bounds.md "Cost at scale")."""
        v = self.cz.clamp(min=0) * zu
        v += self.cz.clamp(max=0) * zl
        v += self.cd.clamp(min=0) * du
        v += self.cd.clamp(max=0) * dl
        v += self.const
        return v


def _split(r: Mapping[str, Tensor], lz: Tensor, ld: Tensor, theta: Tensor | float,
           alz: Tensor, alc: Tensor) -> _Part:
    """The upper bound of ``lz r + ld (r - rc)`` for the split ``theta``. Sums are
    accumulated in place in the order of the formulas (bit-identical to the
    out-of-place expressions) and each row-sized temporary is dropped as soon as it is
    used: the back-substitution rows of a large network are the peak of its memory."""
    s = ld * theta
    sp, sn = s.clamp(min=0), s.clamp(max=0)
    cd = sp * r["su"]
    cd += sn * r["sl"]
    const = sp * r["bu"]
    const += sn * r["bl"]
    del sp, sn
    m = lz + ld
    m -= s
    mp, mn = m.clamp(min=0), m.clamp(max=0)
    del m
    cz = mp * r["az"]
    cz += mn * alz
    const += mp * r["bz"]
    del mp, mn
    mc = s - ld  # coefficient of rc; rc bounded on c = z - d
    del s
    cp, cn = mc.clamp(min=0), mc.clamp(max=0)
    del mc
    sc = cp * r["ac"]
    sc += cn * alc
    del cn
    cz += sc
    cd -= sc
    del sc
    const += cp * r["bc"]
    return _Part(cz, cd, const)


def relu_backward(relax: ReluRelaxation, lz: Tensor | None, ld: Tensor | None,
                  prob: Tensor | None, theta: Tensor | None = None,
                  alpha_z: Tensor | None = None, alpha_c: Tensor | None = None
                  ) -> tuple[Tensor | None, Tensor | None, Tensor]:
    """``(coef on z_in, coef on d_in, const per row)`` of an upper bound of the form
    ``<lz, r> + <ld, r - rc>`` (rows on dimension 0). ``theta``, ``alpha_z``, ``alpha_c``
    (``(R, *shape)``) override the default split and tangent slopes; slopes are used
    only where the ReLU is unstable (elsewhere the exact 0 or 1 is kept)."""
    r = {k: _rows(getattr(relax, k), prob) for k in
         ("az", "bz", "ac", "bc", "su", "bu", "sl", "bl")}
    alz = _rows(relax.alz, prob)
    alc = _rows(relax.alc, prob)
    if alpha_z is not None:
        alz = torch.where(_rows(relax.unstable_z, prob), alpha_z, alz)
    if alpha_c is not None:
        alc = torch.where(_rows(relax.unstable_c, prob), alpha_c, alc)
    if ld is None:
        assert lz is not None
        lp, ln = lz.clamp(min=0), lz.clamp(max=0)
        cz = lp * r["az"] + ln * alz
        return cz, None, _sum(lp * r["bz"])
    if lz is None:
        lz = torch.zeros_like(ld)
    if theta is None:
        b = relax.bounds
        box = [_rows(t, prob) for t in (b.zl, b.zu, b.dl, b.du)]
        p1 = _split(r, lz, ld, 1.0, alz, alc)
        with torch.no_grad():  # the choice only
            v1 = p1.value(*box)
            if SPLIT_TIES.get() == "tolerant":
                # theta = 1 only where it is lower by more than the near-tie width
                big = torch.stack([t.abs() for t in (b.zl, b.zu, b.cl, b.cu, b.dl,
                                                     b.du)]).amax(0)
                tie = lz.abs()
                tie += ld.abs()
                tie *= _rows(big, prob) * TIE_REL
                del big
                v1 += tie
                del tie
        p0 = _split(r, lz, ld, 0.0, alz, alc)
        with torch.no_grad():
            v0 = p0.value(*box)
            pick = decided("pick", v1 < v0 if SPLIT_TIES.get() == "tolerant" else v1 <= v0)
            del v0
        del v1
        if torch.is_grad_enabled():  # slopes being optimized: out= has no autograd
            part = _Part(torch.where(pick, p1.cz, p0.cz), torch.where(pick, p1.cd, p0.cd),
                         torch.where(pick, p1.const, p0.const))
        else:  # the choice written into p1's tensors (no third set of row-sized ones)
            for keep, other in ((p1.cz, p0.cz), (p1.cd, p0.cd), (p1.const, p0.const)):
                torch.where(pick, keep, other, out=keep)
            del p0
            part = p1
    else:
        part = _split(r, lz, ld, theta, alz, alc)
    return part.cz, part.cd, _sum(part.const)


def _sum(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1).sum(1)
