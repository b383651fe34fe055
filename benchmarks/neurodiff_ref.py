"""An independent float64 reference implementation of the single forward pass of
ReluDiff (Paulsen, Wang, Wang, ICSE 2020) and of NeuroDiff (Paulsen, Wang, Wang, Wang,
ASE 2020) for a pair of fully connected ReLU networks, to measure certcompress's
differential single pass against (benchmarks/bench_single_pass.py).

It is plain torch and shares no code with ``certcompress.equivalence``. It is a benchmark
yardstick, not a certifier: arithmetic is float64 without outward rounding.

Source of the rules
-------------------
The paper (arXiv 2009.09943, Sections 3-4) and, for every detail the paper leaves open,
the authors' artifact ``pauls658/NeuroDiff-ASE2020-Artifact``, file ``DiffNN-Code/nnet.c``,
function ``forward_prop_delta_neurodiff`` with the helpers ``affineTransform``,
``computeAllBounds``, ``linearizeNeuronEq``, ``concretizeNeuronEq``, ``linearizeDeltaUB``,
``linearizeDeltaLB``, ``canonicalizeInterval``, ``makeIntermediateVar``; the build
configurations are those of ``DiffNN-Code/scripts/run_all_ACAS_exps.sh`` ("ReluDiff
original": no flag; full NeuroDiff: ``lineqall extravarssym``, i.e. the compile flags
``LINEQ``, ``LINEQDELTA``, ``EXTRAVARS``, ``EXTRAVARSSYM``) and the single-pass driver is
``DiffNN-Code/delta_network_test.c`` with ``-m 0`` (no splitting). The code here is
written from those descriptions, not copied.

State (per neuron, both modes): a *symbolic interval* -- a lower and an upper linear form
over the input ``x`` -- for the original's pre/post-activation ``n``, the compressed
network's ``n'``, and the difference ``D = n' - n`` (the artifact's sign; the reported
bound is ``max(-low D, up D)`` = the bound on ``|f - f'|``). From each pair of forms four
numbers over the box: ``low`` (min of the lower form), ``lowsUp`` (max of the lower form),
``upsLow`` (min of the upper form), ``up`` (max of the upper form).

Affine layer (both): ``n = W n``, ``n' = W' n'`` by the positive/negative split of the
weights (lower form from ``W+ L + W- U``), and the difference propagated directly,
``D = (W' - W) n + W' D + (b' - b)`` (ReluDiff, Sec. 3 / ``affineTransform`` called on
``nnetDelta`` and ``nnetPrime``).

ReLU of ``n`` and ``n'`` alone:

* ReluDiff (``concretizeNeuronEq``, the ReluVal rule): an unstable neuron's lower form
  becomes 0, its upper form is kept if ``upsLow >= 0`` and otherwise becomes the constant
  ``up``.
* NeuroDiff (``LINEQ``, ``linearizeNeuronEq``, the Neurify symbolic linear relaxation):
  upper form ``U -> up (U - upsLow) / (up - upsLow)`` when ``upsLow < 0``; lower form
  ``L -> 0`` when ``lowsUp <= 0`` and ``L -> lowsUp L / (lowsUp - low)`` otherwise.

ReLU of the difference, by the nine state pairs of ``(n, n')`` (inactive ``up <= 0``,
active ``low >= 0``, else unstable), both modes:

1. both inactive: ``D = 0``;  2. ``n`` inactive, ``n'`` active: ``D = n'`` (its forms);
3. ``n`` inactive, ``n'`` unstable: ``D in [0, upper form of relu(n')]``;
4. ``n`` active, ``n'`` inactive: ``D = -n`` (``[-U_n, -L_n]``);  5. both active: ``D`` kept;
7. ``n`` unstable, ``n'`` inactive: ``D in [-upper form of relu(n), 0]``.

and where they differ (the paper's contribution (a), Sec. 4.2-4.3):

6. ``n`` active, ``n'`` unstable: ReluDiff: constants ``[max(-up_n, low_D),
   max(-low_n, up_D)]``; NeuroDiff (``LINEQDELTA``): lower form of ``D`` kept, upper the
   constant ``max(-low_n, up_D)``;
8. ``n`` unstable, ``n'`` active: ReluDiff: constants ``[min(low_n', low_D), min(up_n',
   up_D)]``; NeuroDiff: lower the constant ``min(low_n', low_D)``, upper form kept;
9. both unstable: ReluDiff: constants, lower ``max(low_D, -up_n)`` (0 if ``low_D >= 0``),
   upper ``up_D`` (0 if ``up_D <= 0``); NeuroDiff: the convex approximation of
   ``relu(n') - relu(n)`` in ``[min(D, 0), max(D, 0)]``: upper form 0 if ``up_D < 0``,
   the chord ``up_D (U - upsLow_D) / (up_D - upsLow_D)`` if ``upsLow_D < 0``, else kept;
   lower form 0 if ``low_D > 0``, the chord ``-low_D (L - lowsUp_D) / (lowsUp_D -
   low_D)`` if ``lowsUp_D > 0``, else kept.

Intermediate symbolic variables (contribution (b), Sec. 4.4; ``EXTRAVARS`` +
``EXTRAVARSSYM``): after a case-9 neuron's difference is relaxed, while the budget lasts
and the previous layer received fewer new variables than half its width (the
``EXTRAVARSHEURISTIC`` test), the neuron's difference forms are replaced by one fresh
variable ``v`` (both forms ``= v``), whose own lower/upper forms over the input are the
neuron's forms with earlier variables substituted (``canonicalizeInterval``). Whenever a
difference form is bounded, each variable is substituted by its lower or upper form by
the sign of its coefficient (``low``/``up``) or by the opposite one (``lowsUp``/
``upsLow``, the ``flip`` of ``computeIntervalBoundsExtraSymbolic``). Variables keep
``v``'s coefficients of opposite sign from different paths cancelling before the
substitution, which the plain forms cannot.

Single pass as the artifact runs it with ``-m 0 -e 0``: one forward pass without
variables; then (the property being unproven) a second pass whose variable budget is
the first pass's ``sum over layers (case-9 count // (layer + 1) + 1)``. ``neurodiff``
returns the per-output minimum of the two passes (both are sound; the minimum is the
stronger bar), with each pass also reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Pair", "DiffBound", "diff_pass", "neurodiff", "reludiff", "interval_bound"]

Pair = Sequence[tuple[Tensor, Tensor]]  # [(W (out, in), b (out,)), ...], ReLU between


@dataclass(frozen=True)
class DiffBound:
    """Per-output bounds of ``D = f'(x) - f(x)`` over the box: ``low``, ``up``; ``bound``
    = ``max(-low, up)`` = the per-output bound of ``|f - f'|``; ``vars`` the number of
    intermediate variables used; ``case9`` the per-layer count of both-unstable neurons."""

    low: Tensor
    up: Tensor
    vars: int
    case9: tuple[int, ...]

    @property
    def bound(self) -> Tensor:
        return torch.maximum(-self.low, self.up).clamp(min=0)


def _check(net: Pair, net_c: Pair, lo: Tensor, hi: Tensor) -> None:
    if len(net) != len(net_c) or not net:
        raise ValueError(f"the two networks need the same, non-zero number of affine "
                         f"layers (got {len(net)} and {len(net_c)})")
    for i, ((w, b), (wc, bc)) in enumerate(zip(net, net_c)):
        if w.shape != wc.shape or b.shape != bc.shape or w.dim() != 2 or \
                b.shape != (w.shape[0],):
            raise ValueError(f"layer {i}: shapes differ or are not (out, in) / (out,): "
                             f"{tuple(w.shape)}, {tuple(b.shape)} vs {tuple(wc.shape)}, "
                             f"{tuple(bc.shape)}")
    if lo.dim() != 1 or lo.shape != hi.shape or lo.shape[0] != net[0][0].shape[1]:
        raise ValueError(f"the box must be two vectors of the input width "
                         f"{net[0][0].shape[1]}; got {tuple(lo.shape)}, {tuple(hi.shape)}")
    if not bool((lo <= hi).all()) or not bool(torch.isfinite(lo).all() & torch.isfinite(
            hi).all()):
        raise ValueError("the box must be finite with lo <= hi")


class _Forms:
    """Lower/upper forms ``(k, n_in + n_vars + 1)`` (input coefficients, variable
    coefficients, constant) and the variables' own forms ``(n_vars, n_in + 1)``."""

    def __init__(self, lo: Tensor, hi: Tensor, n_vars: int) -> None:
        self.lo, self.hi, self.n_in, self.n_vars = lo, hi, lo.shape[0], n_vars
        self.vl = torch.zeros(n_vars, self.n_in + 1, dtype=torch.float64)
        self.vu = torch.zeros(n_vars, self.n_in + 1, dtype=torch.float64)
        self.used = 0

    def _sub(self, m: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        """``m`` over the input alone: each variable replaced by ``pos`` where its
        coefficient is positive, ``neg`` where negative."""
        xc = torch.cat([m[:, :self.n_in], m[:, -1:]], 1)
        if self.n_vars == 0:
            return xc
        a = m[:, self.n_in:self.n_in + self.n_vars]
        return xc + a.clamp(min=0) @ pos + a.clamp(max=0) @ neg

    def _max(self, m: Tensor) -> Tensor:
        c = m[:, :self.n_in]
        return c.clamp(min=0) @ self.hi + c.clamp(max=0) @ self.lo + m[:, -1]

    def _min(self, m: Tensor) -> Tensor:
        return -self._max(-m)

    def bounds(self, low_f: Tensor, up_f: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(low, lowsUp, upsLow, up) of a pair of forms (``computeAllBounds``, with the
        variables substituted as ``computeIntervalBoundsExtraSymbolic`` does)."""
        low = self._min(self._sub(low_f, self.vl, self.vu))
        lows_up = self._max(self._sub(low_f, self.vu, self.vl))
        ups_low = self._min(self._sub(up_f, self.vl, self.vu))
        up = self._max(self._sub(up_f, self.vu, self.vl))
        return low, lows_up, ups_low, up

    def make_var(self, low_f: Tensor, up_f: Tensor, row: int) -> None:
        """Replace row ``row`` of both forms by a fresh variable (``makeIntermediateVar``)."""
        j = self.used
        self.vl[j] = self._sub(low_f[row:row + 1], self.vl, self.vu)[0]
        self.vu[j] = self._sub(up_f[row:row + 1], self.vu, self.vl)[0]
        low_f[row] = 0
        up_f[row] = 0
        low_f[row, self.n_in + j] = 1
        up_f[row, self.n_in + j] = 1
        self.used += 1


def _affine(w: Tensor, low_f: Tensor, up_f: Tensor) -> tuple[Tensor, Tensor]:
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    return wp @ low_f + wn @ up_f, wp @ up_f + wn @ low_f


def _relax_single(low_f: Tensor, up_f: Tensor, b: tuple[Tensor, ...], linear: bool
                  ) -> tuple[Tensor, Tensor]:
    """ReLU of one network's forms (all neurons): inactive -> 0, active kept, unstable by
    ``linearizeNeuronEq`` (``linear``) or ``concretizeNeuronEq``."""
    low, lows_up, ups_low, up = b
    inact = up <= 0
    unst = ~inact & (low < 0)
    lf, uf = low_f.clone(), up_f.clone()
    lf[inact] = 0
    uf[inact] = 0
    if linear:
        chord = unst & (ups_low < 0)
        lam = up / (up - ups_low)
        uf[chord] = uf[chord] * lam[chord, None]
        uf[chord, -1] -= (up * ups_low / (up - ups_low))[chord]
        zero = unst & (lows_up <= 0)
        lf[zero] = 0
        sc = unst & (lows_up > 0)
        lf[sc] = lf[sc] * (lows_up / (lows_up - low))[sc, None]
    else:
        lf[unst] = 0
        conc = unst & (ups_low < 0)
        uf[conc] = 0
        uf[conc, -1] = up[conc]
    return lf, uf


def _const(f: Tensor, mask: Tensor, value: Tensor) -> None:
    f[mask] = 0
    f[mask, -1] = value[mask]


def diff_pass(net: Pair, net_c: Pair, lo: Tensor, hi: Tensor, *, neurodiff_rules: bool,
              n_vars: int = 0, heuristic: bool = True,
              trace: list[dict[str, Tensor]] | None = None,
              reludiff_for: frozenset[str] = frozenset()) -> DiffBound:
    """One forward pass: ``neurodiff_rules`` False is ReluDiff, True NeuroDiff's relaxations
    with at most ``n_vars`` intermediate variables (``heuristic``: the artifact's
    half-the-previous-width limit). ``trace``, if given, receives per affine layer the
    concrete pre-activation bounds ``{"z": (low, up), "c": ..., "d": ...}`` (``d`` = compressed
    minus original), for tests and diagnosis. ``reludiff_for`` (ablation, with
    ``neurodiff_rules``): use ReluDiff's rule instead for ``"single"`` (the ReLU of one
    network), ``"case6"``, ``"case8"``, ``"case9"``."""
    _check(net, net_c, lo, hi)
    lo, hi = lo.double(), hi.double()
    n_in = lo.shape[0]
    if not neurodiff_rules:
        n_vars = 0
    fm = _Forms(lo, hi, n_vars)
    width = n_in + n_vars + 1
    eye = torch.zeros(n_in, width, dtype=torch.float64)
    eye[:, :n_in] = torch.eye(n_in, dtype=torch.float64)
    zl, zu = eye.clone(), eye.clone()  # original n
    cl, cu = eye.clone(), eye.clone()  # compressed n'
    dl = torch.zeros(n_in, width, dtype=torch.float64)  # D = n' - n
    du = dl.clone()
    case9: list[int] = []
    prev_layer_vars, prev_width = 0, n_in
    for li, ((w, b), (wc, bc)) in enumerate(zip(net, net_c)):
        w, b, wc, bc = w.double(), b.double(), wc.double(), bc.double()
        wd = wc - w
        nzl, nzu = _affine(w, zl, zu)
        ncl, ncu = _affine(wc, cl, cu)
        a1, a2 = _affine(wd, zl, zu)
        a3, a4 = _affine(wc, dl, du)
        ndl, ndu = a1 + a3, a2 + a4
        nzl[:, -1] += b
        nzu[:, -1] += b
        ncl[:, -1] += bc
        ncu[:, -1] += bc
        ndl[:, -1] += bc - b
        ndu[:, -1] += bc - b
        bz = fm.bounds(nzl, nzu)
        bcb = fm.bounds(ncl, ncu)
        bd = fm.bounds(ndl, ndu)
        if trace is not None:
            trace.append({"z": torch.stack([bz[0], bz[3]]), "c": torch.stack([bcb[0], bcb[3]]),
                          "d": torch.stack([bd[0], bd[3]])})
        if li == len(net) - 1:
            return DiffBound(bd[0], bd[3], fm.used, tuple(case9))
        z_in, z_act = bz[3] <= 0, (bz[3] > 0) & (bz[0] >= 0)
        z_un = ~z_in & ~z_act
        c_in, c_act = bcb[3] <= 0, (bcb[3] > 0) & (bcb[0] >= 0)
        c_un = ~c_in & ~c_act
        single = neurodiff_rules and "single" not in reludiff_for
        rzl, rzu = _relax_single(nzl, nzu, bz, single)
        rcl, rcu = _relax_single(ncl, ncu, bcb, single)
        d_low, d_lows_up, d_ups_low, d_up = bd
        ldl, ldu = ndl.clone(), ndu.clone()
        # 1: both inactive
        m = z_in & c_in
        ldl[m] = 0
        ldu[m] = 0
        # 2: n inactive, n' active: D = n'
        m = z_in & c_act
        ldl[m] = ncl[m]
        ldu[m] = ncu[m]
        # 3: n inactive, n' unstable: [0, upper form of relu(n')]
        m = z_in & c_un
        ldl[m] = 0
        ldu[m] = rcu[m]
        # 4: n active, n' inactive: D = -n
        m = z_act & c_in
        ldl[m] = -nzu[m]
        ldu[m] = -nzl[m]
        # 5: both active: kept
        # 7: n unstable, n' inactive: [-upper form of relu(n), 0]
        m = z_un & c_in
        ldl[m] = -rzu[m]
        ldu[m] = 0
        # 6: n active, n' unstable
        m = z_act & c_un
        _const(ldu, m, torch.maximum(-bz[0], d_up))
        if not neurodiff_rules or "case6" in reludiff_for:
            _const(ldl, m, torch.maximum(-bz[3], d_low))
        # 8: n unstable, n' active
        m = z_un & c_act
        _const(ldl, m, torch.minimum(bcb[0], d_low))
        if not neurodiff_rules or "case8" in reludiff_for:
            _const(ldu, m, torch.minimum(bcb[3], d_up))
        # 9: both unstable
        m9 = z_un & c_un
        case9.append(int(m9.sum()))
        if neurodiff_rules and "case9" not in reludiff_for:
            zero_u = m9 & (d_up < 0)
            ldu[zero_u] = 0
            ch_u = m9 & ~(d_up < 0) & (d_ups_low < 0)
            lam = d_up / (d_up - d_ups_low)
            ldu[ch_u] = ldu[ch_u] * lam[ch_u, None]
            ldu[ch_u, -1] -= (d_ups_low * lam)[ch_u]
            zero_l = m9 & (d_low > 0)
            ldl[zero_l] = 0
            ch_l = m9 & ~(d_low > 0) & (d_lows_up > 0)
            mu = -d_low / (d_lows_up - d_low)
            ldl[ch_l] = ldl[ch_l] * mu[ch_l, None]
            ldl[ch_l, -1] -= (d_lows_up * mu)[ch_l]
            made = 0
            if fm.used < n_vars and (not heuristic or prev_layer_vars < prev_width / 2):
                for i in m9.nonzero().flatten().tolist():
                    if fm.used >= n_vars:
                        break
                    fm.make_var(ldl, ldu, i)
                    made += 1
            prev_layer_vars = made
        else:
            prev_layer_vars = 0
            lowc = torch.where(d_low >= 0, torch.zeros_like(d_low),
                               torch.maximum(d_low, -bz[3]))
            upc = torch.where(d_up <= 0, torch.zeros_like(d_up), d_up)
            _const(ldl, m9, lowc)
            _const(ldu, m9, upc)
        prev_width = w.shape[0]
        zl, zu, cl, cu, dl, du = rzl, rzu, rcl, rcu, ldl, ldu
    raise AssertionError("unreachable")


def reludiff(net: Pair, net_c: Pair, lo: Tensor, hi: Tensor) -> DiffBound:
    """ReluDiff's single forward pass (the artifact built without flags)."""
    return diff_pass(net, net_c, lo, hi, neurodiff_rules=False)


@dataclass(frozen=True)
class NeuroDiffResult:
    first: DiffBound  # no intermediate variables
    second: DiffBound  # with the budget the first pass's counts give

    @property
    def bound(self) -> Tensor:
        return torch.minimum(self.first.bound, self.second.bound)


def neurodiff(net: Pair, net_c: Pair, lo: Tensor, hi: Tensor, *, n_vars: int | None = None,
              heuristic: bool = True) -> NeuroDiffResult:
    """NeuroDiff's unsplit run (``-m 0 -e 0``): a pass without variables, then one with
    ``n_vars`` of them (default: the artifact's budget from the first pass)."""
    first = diff_pass(net, net_c, lo, hi, neurodiff_rules=True, n_vars=0)
    if n_vars is None:
        n_vars = sum(c // (i + 1) + 1 for i, c in enumerate(first.case9)) + 1
    second = diff_pass(net, net_c, lo, hi, neurodiff_rules=True, n_vars=n_vars,
                       heuristic=heuristic)
    return NeuroDiffResult(first, second)


def interval_bound(net: Pair, net_c: Pair, lo: Tensor, hi: Tensor) -> Tensor:
    """The trivial bound: plain interval arithmetic on each network alone, per output
    ``max(up f - low f', up f' - low f)``."""
    _check(net, net_c, lo, hi)

    def run(layers: Pair) -> tuple[Tensor, Tensor]:
        a, b_ = lo.double(), hi.double()
        for i, (w, b) in enumerate(layers):
            w, b = w.double(), b.double()
            mid, rad = (a + b_) / 2, (b_ - a) / 2
            c, r = w @ mid + b, w.abs() @ rad
            a, b_ = c - r, c + r
            if i < len(layers) - 1:
                a, b_ = a.clamp(min=0), b_.clamp(min=0)
        return a, b_

    fl, fu = run(net)
    gl, gu = run(net_c)
    return torch.maximum(fu - gl, gu - fl)
