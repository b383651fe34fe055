"""A fast differential single pass for *chain* pairs (input, then affine / fixed linear
maps and ReLUs one after the other: MLPs and plain CNNs).

The lowered pair (:mod:`certcompress.bounds.propagation`) is rewritten into dense
matrices, one per primitive node (a convolution becomes its exact dense matrix: applying
the op to the standard basis gives the weights themselves), so that bounding many input
boxes at once is a handful of matrix products per layer instead of mapped
vector-Jacobian products. The rules are the engine's:

* interval bounds on ``z`` (original), ``c`` (compressed) and ``d = z - c``, the difference
  propagated directly (ReluDiff): ``d' = W' d + (W - W') z + db``, intersected with the
  reading over ``c``;
* every pre-activation bound tightened by back-substitution of forms over ``(z, d)`` to
  the input (DeepPoly/CROWN for the pair), with the ReLU-pair relaxation of
  :mod:`certcompress.bounds.propagation.relax` (the difference of two ReLUs bounded by
  chords of ``min(d, 0)``/``max(d, 0)``, i.e. in terms of the input difference, or the
  two ReLUs relaxed jointly, whichever is smaller per neuron);
* floating point as in :mod:`certcompress.bounds.propagation.engine`: float64, each
  interval and each final bound pushed outward by ``eta`` times its magnitude (the same
  sums on absolute values), ``eta`` the engine's :func:`rounding_eta` of the pair.

Every back-substituted row also returns its coefficients on the input, which the
branch-and-bound uses to choose the dimension to split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..bounds.propagation.engine import rounding_eta, underflow_floor
from ..bounds.propagation.interval import (
    Magnitude,
    PairBounds,
    intersect_difference,
    make_consistent,
    relu_interval,
    widen,
)
from ..bounds.propagation.primitives import PairNet
from ..bounds.propagation.relax import (
    SPLIT_TIES,
    TIE_REL,
    ReluRelaxation,
    relax_relu,
    relu_backward,
)
from ..bounds.propagation.rules import ReLURule, rules_for

__all__ = ["Layer", "ChainPair", "chain_from_pair", "ChainState", "affine_backward", "DENSE_LIMIT",
           "RELAXATIONS", "LAYOUTS"]

DENSE_LIMIT = 1 << 24  # largest dense matrix (entries) a layer may become

# how back-substitution relaxes a ReLU pair without given slopes (ChainState.backsubstitute)
RELAXATIONS = ("choose", "ramp", "min2", "default")  # "ramp": unfused "choose"

# how the intermediate rows of a pass are laid out (ChainState._tighten): "padded", per
# problem with its tables broadcast; "rows", one flat row list with the tables gathered
LAYOUTS = ("padded", "rows")

Slopes = tuple[Tensor, Tensor, Tensor]  # theta, alpha_z, alpha_c per row and neuron


@dataclass(frozen=True)
class Layer:
    """``kind`` ``"affine"`` (``w``, ``b`` original; ``wc``, ``bc`` compressed; ``(out, in)``
    matrices) or ``"relu"``."""

    kind: str
    w: Tensor | None = None
    b: Tensor | None = None
    wc: Tensor | None = None
    bc: Tensor | None = None

    @property
    def changed(self) -> bool:
        assert self.w is not None and self.wc is not None and self.b is not None
        assert self.bc is not None
        return bool((self.w != self.wc).any()) or bool((self.b != self.bc).any())


@dataclass(frozen=True)
class ChainPair:
    """The pair as dense layers; ``n_in`` input features (the flattened per-problem input
    shape ``input_shape``), ``n_out`` outputs; ``eta`` the relative rounding margin."""

    layers: tuple[Layer, ...]
    input_shape: tuple[int, ...]
    n_in: int
    n_out: int
    eta: float
    floor: float = 0.0  # absolute underflow margin per element (engine.underflow_floor)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Outputs ``(f(x), f'(x))`` of both networks in float64 for flat inputs
        ``(N, n_in)``."""
        z = x.to(torch.float64)
        c = z
        for layer in self.layers:
            if layer.kind == "relu":
                z, c = z.clamp(min=0), c.clamp(min=0)
            else:
                assert layer.w is not None and layer.wc is not None
                assert layer.b is not None and layer.bc is not None
                z = z @ layer.w.T + layer.b
                c = c @ layer.wc.T + layer.bc
        return z, c


def chain_from_pair(pair: PairNet) -> ChainPair | None:
    """The chain form of ``pair``, or None when it is not a chain (branches, max-pooling
    envelopes, several outputs) or a layer's dense matrix would exceed
    :data:`DENSE_LIMIT` entries."""
    nodes = pair.nodes
    if len(pair.outputs) != 1 or pair.outputs[0] != len(nodes) - 1:
        return None
    layers: list[Layer] = []
    rules = rules_for(pair)
    for i, (node, rule) in enumerate(zip(nodes, rules)):
        if rule.is_input:
            if i != 0:
                return None
            continue
        if node.inputs != (i - 1,):
            return None
        n_in = nodes[i - 1].numel
        if isinstance(rule, ReLURule):
            layers.append(Layer("relu"))
            continue
        if n_in * node.numel > DENSE_LIMIT:
            return None
        with torch.no_grad():
            dense = rule.dense(node, n_in)
        if dense is None:
            return None
        layers.append(Layer("affine", *dense))
    if not layers:
        return None
    return ChainPair(tuple(layers), tuple(pair.input_shape), nodes[0].numel,
                     nodes[-1].numel, rounding_eta(pair), underflow_floor(pair))


def _affine_interval(layer: Layer, b: PairBounds) -> PairBounds:
    w, wc, bz, bc = layer.w, layer.wc, layer.b, layer.bc
    assert w is not None and wc is not None and bz is not None and bc is not None
    mz, rz = (b.zl + b.zu) * 0.5, (b.zu - b.zl) * 0.5
    mc, rc = (b.cl + b.cu) * 0.5, (b.cu - b.cl) * 0.5
    md, rd = (b.dl + b.du) * 0.5, (b.du - b.dl) * 0.5
    ez, fz = mz @ w.T + bz, rz @ w.abs().T
    ec, fc = mc @ wc.T + bc, rc @ wc.abs().T
    dw = w - wc
    db = bz - bc
    e1 = md @ wc.T + mz @ dw.T + db
    f1 = rd @ wc.abs().T + rz @ dw.abs().T
    e2 = md @ w.T + mc @ dw.T + db
    f2 = rd @ w.abs().T + rc @ dw.abs().T
    return PairBounds(ez - fz, ez + fz, ec - fc, ec + fc,
                      torch.maximum(e1 - f1, e2 - f2), torch.minimum(e1 + f1, e2 + f2))


@dataclass(frozen=True)
class _Sym:
    """Symbolic bounds of a layer, linear in the input: each ``(P, n, n_in + 1)``, the
    last column the constant (``zl(x) <= z <= zu(x)`` for every ``x`` in the box)."""

    zl: Tensor
    zu: Tensor
    cl: Tensor
    cu: Tensor
    dl: Tensor
    du: Tensor


def _conc(s: Tensor, mid: Tensor, rad: Tensor, upper: bool) -> Tensor:
    """Concrete bound of the symbolic bound ``s`` over the boxes ``mid +- rad``."""
    a = s[..., :-1]
    v = s[..., -1] + (a * mid[:, None, :]).sum(-1)
    r = (a.abs() * rad[:, None, :]).sum(-1)
    return v + r if upper else v - r


def _mm(w: Tensor, s: Tensor) -> Tensor:
    return torch.matmul(w, s)


def _sym_affine(layer: Layer, s: _Sym, mid: Tensor, rad: Tensor, mz: Tensor, mc: Tensor,
                eta: float, abs_floor: Tensor) -> tuple[_Sym, PairBounds]:
    """Symbolic bounds after an affine layer (constants pushed outward by the rounding
    margin) and their concretization."""
    w, wc, b, bc = layer.w, layer.wc, layer.b, layer.bc
    assert w is not None and wc is not None and b is not None and bc is not None
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    wcp, wcn = wc.clamp(min=0), wc.clamp(max=0)
    # symbolic coefficients are products of weights: the absolute floor ``abs_floor``
    # (per problem) covers what they lose to underflow
    ez, ec = eta * mz + abs_floor[:, None], eta * mc + abs_floor[:, None]
    ed = ez + ec

    def shift(t: Tensor, c: Tensor) -> Tensor:
        t = t.clone()
        t[..., -1] += c
        return t

    zu = shift(_mm(wp, s.zu) + _mm(wn, s.zl), b + ez)
    zl = shift(_mm(wp, s.zl) + _mm(wn, s.zu), b - ez)
    cu = shift(_mm(wcp, s.cu) + _mm(wcn, s.cl), bc + ec)
    cl = shift(_mm(wcp, s.cl) + _mm(wcn, s.cu), bc - ec)
    if not layer.changed:
        du = shift(_mm(wp, s.du) + _mm(wn, s.dl), ed)
        dl = shift(_mm(wp, s.dl) + _mm(wn, s.du), -ed)
        dlc, duc = _conc(dl, mid, rad, False), _conc(du, mid, rad, True)
    else:
        dw = w - wc
        db = b - bc
        dwp, dwn = dw.clamp(min=0), dw.clamp(max=0)
        # d' = W' d + dW z + db  and  d' = W d + dW c + db
        du1 = shift(_mm(wcp, s.du) + _mm(wcn, s.dl) + _mm(dwp, s.zu) + _mm(dwn, s.zl), db + ed)
        dl1 = shift(_mm(wcp, s.dl) + _mm(wcn, s.du) + _mm(dwp, s.zl) + _mm(dwn, s.zu), db - ed)
        du2 = shift(_mm(wp, s.du) + _mm(wn, s.dl) + _mm(dwp, s.cu) + _mm(dwn, s.cl), db + ed)
        dl2 = shift(_mm(wp, s.dl) + _mm(wn, s.du) + _mm(dwp, s.cl) + _mm(dwn, s.cu), db - ed)
        u1, u2 = _conc(du1, mid, rad, True), _conc(du2, mid, rad, True)
        l1, l2 = _conc(dl1, mid, rad, False), _conc(dl2, mid, rad, False)
        du = torch.where((u1 <= u2)[..., None], du1, du2)
        dl = torch.where((l1 >= l2)[..., None], dl1, dl2)
        duc, dlc = torch.minimum(u1, u2), torch.maximum(l1, l2)
    out = _Sym(zl, zu, cl, cu, dl, du)
    conc = PairBounds(_conc(zl, mid, rad, False), _conc(zu, mid, rad, True),
                      _conc(cl, mid, rad, False), _conc(cu, mid, rad, True), dlc, duc)
    return out, conc


def _relu_sym_single(lo_s: Tensor, up_s: Tensor, lo: Tensor, hi: Tensor
                     ) -> tuple[Tensor, Tensor]:
    """Symbolic lower/upper bounds of ``ReLU(v)`` from those of ``v`` (concrete
    ``lo <= v <= hi``): the chord above, ``alpha v`` below (DeepPoly)."""
    active = (lo >= 0)[..., None]
    dead = (hi <= 0)[..., None]
    width = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    a = (hi.clamp(min=0) / width).clamp(0, 1)[..., None]
    chord = a * up_s
    chord[..., -1] -= (a[..., 0] * lo)
    alpha = (hi > -lo)[..., None].to(lo_s.dtype)
    zero = torch.zeros_like(up_s)
    up = torch.where(active, up_s, torch.where(dead, zero, chord))
    low = torch.where(active, lo_s, torch.where(dead, zero, alpha * lo_s))
    return low, up


def _sym_relu(s: _Sym, b: PairBounds, mid: Tensor, rad: Tensor) -> _Sym:
    """Symbolic bounds after a ReLU: ``z`` and ``c`` by DeepPoly, the difference
    ``ReLU(z) - ReLU(c)`` by the tightest (per neuron, concretized over the
    pre-activation intervals) of: the chords of ``max(d, 0)``/``min(d, 0)`` on the
    input difference (ReluDiff), the joint relaxation ``[ReLU(z)] - [ReLU(c)]``, and the
    exact cases (both active: ``d``; one active, the other dead: ``z`` or ``-c``; one
    active, the other unstable: ``min(d, z)`` or ``max(d, -c)``, NeuroDiff)."""
    zl_s, zu_s = _relu_sym_single(s.zl, s.zu, b.zl, b.zu)
    cl_s, cu_s = _relu_sym_single(s.cl, s.cu, b.cl, b.cu)
    dl, du = b.dl, b.du
    # ReluDiff chords on d
    straddle = (dl < 0) & (du > 0)
    width = torch.where(straddle, du - dl, torch.ones_like(du))
    su = torch.where(dl >= 0, torch.ones_like(du), torch.where(straddle, du / width,
                                                               torch.zeros_like(du)))
    sl = torch.where(du <= 0, torch.ones_like(du), torch.where(straddle, -dl / width,
                                                               torch.zeros_like(du)))
    up_a = su[..., None] * s.du
    up_a[..., -1] -= torch.where(straddle, su * dl, torch.zeros_like(du))
    lo_a = sl[..., None] * s.dl
    lo_a[..., -1] -= torch.where(straddle, sl * du, torch.zeros_like(du))
    # joint
    up_b = zu_s - cl_s
    lo_b = zl_s - cu_s
    cands_up = [up_a, up_b]
    cands_lo = [lo_a, lo_b]
    z_act, c_act = b.zl >= 0, b.cl >= 0
    # exact / one-sided cases as extra candidates (invalid where the case does not hold:
    # replaced by the trivially valid joint bound there)
    def case(mask: Tensor, t: Tensor, fallback: Tensor) -> Tensor:
        return torch.where(mask[..., None], t, fallback)

    both = z_act & c_act
    cands_up.append(case(both, s.du, up_b))
    cands_lo.append(case(both, s.dl, lo_b))
    # z active: d' = min(d, z) <= d, <= z;  c active: d' = max(d, -c) >= d, >= -c
    cands_up.append(case(z_act, s.du, up_b))
    cands_lo.append(case(c_act, s.dl, lo_b))
    return _Sym(zl_s, zu_s, cl_s, cu_s, *_pick(cands_lo, cands_up, mid, rad))


def _pick(cands_lo: list[Tensor], cands_up: list[Tensor], mid: Tensor, rad: Tensor
          ) -> tuple[Tensor, Tensor]:
    """Per neuron, the candidate with the tightest concretization over the box; a later
    candidate wins ties within ``TIE_REL`` of the candidates' scale (the sum of their
    terms' magnitudes over the box), so exact ties are not decided by the last bits of
    the summation order (docs/bounds.md, "On a GPU"). Every candidate is valid."""
    def scale(t: Tensor) -> Tensor:
        return (t[..., :-1].abs() * (mid.abs() + rad)[:, None, :]).sum(-1) + t[..., -1].abs()

    strict = SPLIT_TIES.get() == "strict"  # certificates made before the rule
    out = []
    for cands, upper in ((cands_lo, False), (cands_up, True)):
        sign = 1.0 if upper else -1.0
        pick = cands[0]
        best = _conc(pick, mid, rad, upper)
        big = scale(pick)
        for t in cands[1:]:
            v, s = _conc(t, mid, rad, upper), scale(t)
            take = sign * v < sign * best if strict else \
                sign * v <= sign * best + TIE_REL * torch.maximum(big, s)
            pick = torch.where(take[..., None], t, pick)
            best = torch.where(take, v, best)
            big = torch.where(take, s, big)
        out.append(pick)
    return out[0], out[1]


def ramp_slopes(b: PairBounds) -> tuple[Tensor, Tensor]:
    """``(kz, kc)`` per neuron: difference-aware lower/upper bounds of ``Delta = ReLU(z) -
    ReLU(c)`` where ``d = z - c`` has one sign (0 elsewhere).

    With ``d >= 0``, ``Delta = clamp(z, 0, d)`` and for ``z <= zu``, ``d >= dl``:
    ``Delta >= kz z`` with ``kz = min(dl, zu) / zu`` (``z <= 0``: ``0 >= kz z``; ``z >= 0``:
    ``min(z, d) >= kz z`` as ``kz <= 1`` and ``d >= dl >= kz z``). With ``d <= 0``,
    ``-Delta = clamp(c, 0, -d)`` likewise, so ``Delta <= -kc c``, ``kc = min(-du, cu) / cu``.
    A ReLU whose input can switch contributes only ``0`` or ``d`` to the plain chords
    (error ``|d|``); the ramp is exact at both ends of the input range and is used where
    the input is mostly positive (``u > -l``, CROWN's rule for its lower slope). Any
    smaller non-negative slope is also valid: the quotients are rounded down."""
    zero = torch.zeros_like(b.zl)
    tz = (b.dl >= 0) & (b.zl < 0) & (b.zu > -b.zl)
    tc = (b.du <= 0) & (b.cl < 0) & (b.cu > -b.cl)
    kz = torch.where(tz, torch.minimum(b.dl, b.zu) / torch.where(tz, b.zu, 1.0), zero)
    kc = torch.where(tc, torch.minimum(-b.du, b.cu) / torch.where(tc, b.cu, 1.0), zero)
    # a quotient rounded to nearest may lie above the exact one, in the subnormal range
    # too (where "* down" changes nothing): one step toward 0 makes it a lower value
    kz, kc = torch.nextafter(kz, zero), torch.nextafter(kc, zero)
    down = 1.0 - 1e-12
    return (kz * down).clamp(0.0, 1.0), (kc * down).clamp(0.0, 1.0)


def affine_backward(layer: Layer, lz: Tensor | None, ld: Tensor | None,
                    const: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor]:
    """One affine layer of back-substitution: the rows ``lz`` on ``z`` and ``ld`` on
    ``d = z - c`` of its output as rows on its input (``z_out = W z + b``, ``d_out =
    (W - Wc) z + Wc d + (b - bc)``), and ``const`` plus what its biases add."""
    w, wc, b, bc = layer.w, layer.wc, layer.b, layer.bc
    assert w is not None and wc is not None and b is not None and bc is not None
    nz = None
    if lz is not None:
        const = const + lz @ b
        nz = lz @ w
    if ld is not None:
        if layer.changed:
            const = const + ld @ (b - bc)
            t = ld @ (w - wc)
            nz = t if nz is None else nz + t
            ld = ld @ wc
        else:
            ld = ld @ w
    return nz, ld, const


class ChainState:
    """Bounds of every layer of a chain pair for ``P`` input boxes (``lower``/``upper``
    flat, ``(P, n_in)``), tightened by back-substitution; :meth:`upper_bounds` bounds
    linear forms of the outputs."""

    def __init__(self, chain: ChainPair, lower: Tensor, upper: Tensor,
                 intermediate: str = "forward", chunk_rows: int = 1 << 15,
                 quantities: tuple[str, ...] = ("z", "c", "d"),
                 prior: Sequence[Tensor | None] | None = None, ramp: bool = True,
                 relaxation: str = "choose", layout: str = "padded",
                 empty_ok: bool = False, mixed_chords: bool = False) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        if intermediate not in ("forward", "crown", "both"):
            raise ValueError(f"intermediate must be 'forward' or 'crown', got {intermediate!r}")
        if relaxation not in RELAXATIONS:
            raise ValueError(f"relaxation must be one of {', '.join(RELAXATIONS)}, got "
                             f"{relaxation!r}")
        self.chain = chain
        self.intermediate = intermediate
        self.quantities = quantities
        self.prior = prior
        self.ramp = ramp
        # ``ramp=False`` is the relaxation before the difference-structured bounds
        self.relaxation = relaxation if ramp else "default"
        # how _tighten lays out its rows (LAYOUTS; the same bounds)
        self.layout = layout
        self._ramps: dict[int, tuple[Tensor, Tensor]] = {}
        self._packs: dict[int, Tensor] = {}
        self.lower = lower.to(torch.float64)
        self.upper = upper.to(torch.float64)
        self.mid = (self.lower + self.upper) * 0.5
        self.rad = (self.upper - self.lower) * 0.5
        self.chunk_rows = chunk_rows
        self.relax: dict[int, ReluRelaxation] = {}
        # per affine layer: W - W', b - b' and whether they differ (computed once)
        self._diff: dict[int, tuple[Tensor, Tensor, bool]] = {
            j: (layer.w - layer.wc, layer.b - layer.bc, layer.changed)
            for j, layer in enumerate(chain.layers) if layer.kind == "affine"
            and layer.w is not None and layer.wc is not None and layer.b is not None
            and layer.bc is not None}
        self.mags: list[tuple[Tensor, Tensor]] = []
        # per ReLU layer: (P, n), neurons dead in both networks on the box
        self.dead: dict[int, Tensor] = {}
        self.bounds: list[PairBounds] = []
        self.rows = 0
        # ``empty_ok``: a problem whose bounds become empty (its ``prior`` clamps a
        # neuron's sign, a ReLU split: docs/equivalence.md, "ReLU splitting") has no input
        # and is marked in ``infeasible`` instead of raising; its bounds are then replaced
        # by a consistent point so the pass stays finite (they are meaningless: the
        # problem is proven vacuously by the caller)
        self.empty_ok = empty_ok
        # ``mixed_chords``: where one ReLU is dead and the other active, :meth:`_pack` uses
        # the difference's chords (``min(d, 0) <= Delta <= max(d, 0)``, exact up to the
        # dead side's range) instead of the exact joint form, which writes ``Delta`` through
        # the dead network's pre-activation (``Delta = d - z`` or ``d + c``): after a ReLU
        # split clamps ``z <= 0`` while ``c >= 0`` (``d`` tiny), that form carries ``z``'s
        # loose symbolic bound back to the input (4x looser bounds measured on the
        # digits MLP; docs/equivalence.md, "ReLU splitting")
        self.mixed_chords = mixed_chords
        self.infeasible = torch.zeros(lower.shape[0], dtype=torch.bool)
        with torch.no_grad():
            self._run()

    # ------------------------------------------------------------------ forward
    def form_floor(self) -> Tensor:
        """``(P,)``: the absolute underflow margin of a back-substituted or symbolic bound
        over the layers so far, ``2 floor * sum ||mag||_1`` (as in the engine)."""
        return 2.0 * self.chain.floor * self.mag_sum

    def _run(self) -> None:
        lo, hi = self.lower, self.upper
        zero = torch.zeros_like(lo)
        b = PairBounds(lo, hi, lo, hi, zero, zero.clone())
        m = torch.maximum(lo.abs(), hi.abs())
        mz, mc = m, m
        eta, floor = self.chain.eta, self.chain.floor
        self.mag_sum = 2 * m.sum(1)
        P, n0 = lo.shape
        sym: _Sym | None = None
        if self.intermediate in ("forward", "both"):
            eye = torch.eye(n0, dtype=torch.float64)
            x = torch.cat([eye, torch.zeros(n0, 1, dtype=torch.float64)], 1)
            x = x.expand(P, n0, n0 + 1)
            zd = torch.zeros_like(x)
            sym = _Sym(x, x, x, x, zd, zd)
        for k, layer in enumerate(self.chain.layers):
            if layer.kind == "relu":
                self.relax[k] = relax_relu(b)
                # dead in both networks on the box (the widened bounds): both outputs are
                # exactly 0, so its magnitude is 0 and every form passing through it is
                # given coefficient 0 there (docs/equivalence.md, "Rounding", chain pass)
                dead = (b.zu <= 0) & (b.cu <= 0)
                self.dead[k] = dead
                if sym is not None:
                    sym = _sym_relu(sym, b, self.mid, self.rad)
                    keep = (~dead)[..., None].to(torch.float64)
                    sym = _Sym(*(t * keep for t in (sym.zl, sym.zu, sym.cl, sym.cu, sym.dl,
                                                    sym.du)))
                b = relu_interval(b)
                mz = torch.where(dead, 0.0, mz)
                mc = torch.where(dead, 0.0, mc)
            else:
                assert layer.w is not None and layer.wc is not None
                assert layer.b is not None and layer.bc is not None
                # magnitudes rounded up relatively and absolutely (underflow), so they
                # stay upper bounds of the true ones (docs/bounds.md)
                mz = (mz @ layer.w.abs().T + layer.b.abs()) * (1 + eta) + floor
                mc = (mc @ layer.wc.abs().T + layer.bc.abs()) * (1 + eta) + floor
                self.mag_sum = self.mag_sum + (mz + mc).sum(1)
                b = widen(_affine_interval(layer, b), Magnitude(mz, mc), eta, floor)
                pk = None if self.prior is None else self.prior[k]
                if pk is not None:  # bounds over a box containing this one still hold
                    b = b.intersect(PairBounds(*pk.unbind(1)))
                if sym is not None:
                    sym, sb = _sym_affine(layer, sym, self.mid, self.rad, mz, mc, eta,
                                          self.form_floor())
                    b = b.intersect(sb)
                nxt = k + 1
                if self.intermediate in ("crown", "both") and nxt < len(self.chain.layers) \
                        and self.chain.layers[nxt].kind == "relu" and k > 0:
                    b = self._tighten(k, b, mz, mc)
                b = self._consistent(b, k)
            self.bounds.append(b)
            self.mags.append((mz, mc))
        self.sym = sym

    def _consistent(self, b: PairBounds, k: int) -> PairBounds:
        """:func:`make_consistent`; with ``empty_ok``, problems with an empty interval are
        marked :attr:`infeasible` (sound: every interval holds on the problem's inputs, so
        an empty one means there are none) and their bounds set to the point 0."""
        if not self.empty_ok:
            return make_consistent(b, f"layer {k}")
        t = intersect_difference(b)
        zl, zu, cl, cu, dl, du = t.zl, t.zu, t.cl, t.cu, t.dl, t.du
        empty = ((zl > zu) | (cl > cu) | (dl > du)).any(1)
        self.infeasible = self.infeasible | empty
        if not bool(self.infeasible.any()):
            return make_consistent(b, f"layer {k}")
        gone = self.infeasible[:, None]
        zero = torch.zeros_like(zl)
        fix = [torch.where(gone, zero, t) for t in (zl, zu, cl, cu, dl, du)]
        return make_consistent(PairBounds(*fix), f"layer {k}")

    def relu_intercepts(self, k: int, lz: Tensor | None, ld: Tensor | None, prob: Tensor
                        ) -> dict[int, Tensor]:
        """Per ReLU layer ``j <= k``: ``(R, n_j)``, the constant each neuron's relaxation adds
        to the upper bound of the rows ``<lz, z_k> + <ld, d_k>`` (as
        :meth:`backsubstitute`, relaxation ``"choose"``, without slopes). It is 0 where both
        ReLUs are stable (the relaxation is exact there), so a large value marks a neuron
        whose sign, once fixed, removes a large term from the bound: the branching score
        of ReLU splitting (BaBSR's intercept term; docs/equivalence.md). A score only;
        nothing is proven from it."""
        out: dict[int, Tensor] = {}
        with torch.no_grad():
            for j in range(k, -1, -1):
                layer = self.chain.layers[j]
                if layer.kind == "relu":
                    if lz is None and ld is None:
                        break
                    pz, nz, pd, nd, pk, nk, az, alz, bz = (
                        t.index_select(0, prob) for t in self._pack(j).unbind(0))
                    const = torch.zeros((prob.shape[0], pk.shape[1]), dtype=torch.float64)
                    cz: Tensor | None = None
                    cd: Tensor | None = None
                    if ld is not None:
                        sp, sn = ld.clamp(min=0), ld.clamp(max=0)
                        cz, cd = sp * pz + sn * nz, sp * pd + sn * nd
                        const = const + sp * pk + sn * nk
                    if lz is not None:
                        mp, mn = lz.clamp(min=0), lz.clamp(max=0)
                        t = mp * az + mn * alz
                        cz = t if cz is None else cz + t
                        const = const + mp * bz
                    out[j] = const
                    lz, ld = cz, cd
                    continue
                w, wc = layer.w, layer.wc
                assert w is not None and wc is not None
                nzs = None if lz is None else lz @ w
                if ld is not None:
                    dw, _, changed = self._diff[j]
                    if changed:
                        t = ld @ dw
                        nzs = t if nzs is None else nzs + t
                        ld = ld @ wc
                    else:
                        ld = ld @ w
                lz = nzs
        return out

    def _tighten(self, k: int, b: PairBounds, mz: Tensor, mc: Tensor) -> PairBounds:
        """Back-substitution bounds for the pre-activations of layer ``k`` where the
        relaxation depends on them (unstable ``z`` or ``c``; ``d`` unless both are
        stable)."""
        eta = self.chain.eta
        zs = (b.zl >= 0) | (b.zu <= 0)
        cs = (b.cl >= 0) | (b.cu <= 0)
        needs = {"z": ~zs, "c": ~cs, "d": ~(zs & cs) & (b.du > b.dl)}
        lows = {"z": b.zl.clone(), "c": b.cl.clone(), "d": b.dl.clone()}
        highs = {"z": b.zu.clone(), "c": b.cu.clone(), "d": b.du.clone()}
        margin = {"z": eta * mz, "c": eta * mc, "d": eta * (mz + mc)}
        abs_floor = self.form_floor()
        n = b.zl.shape[1]
        if self.relaxation == "choose" and self.layout == "padded":
            for q in self.quantities:
                self._tighten_padded(k, q, needs[q], lows[q], highs[q], margin[q], abs_floor)
            return PairBounds(lows["z"], highs["z"], lows["c"], highs["c"], lows["d"],
                              highs["d"])
        for q in self.quantities:
            idx = needs[q].nonzero()
            if idx.shape[0] == 0:
                continue
            probs = idx[:, 0].repeat_interleave(2)
            flats = idx[:, 1].repeat_interleave(2)
            signs = torch.tensor([1.0, -1.0], dtype=torch.float64).repeat(idx.shape[0])
            R = probs.shape[0]
            ub = torch.empty(R, dtype=torch.float64)
            for s in range(0, R, self.chunk_rows):
                sl = slice(s, s + self.chunk_rows)
                lam = torch.zeros((signs[sl].shape[0], n), dtype=torch.float64)
                lam[torch.arange(lam.shape[0]), flats[sl]] = signs[sl]
                lz = None if q == "d" else lam
                ld = lam if q == "d" else (-lam if q == "c" else None)
                ub[sl] = self.backsubstitute(k, lz, ld, probs[sl])[0]
            self.rows += R
            m = margin[q][probs, flats] + abs_floor[probs]
            up, dn = signs > 0, signs < 0
            hi_t, lo_t = highs[q], lows[q]
            hi_t[probs[up], flats[up]] = torch.minimum(hi_t[probs[up], flats[up]],
                                                       ub[up] + m[up])
            lo_t[probs[dn], flats[dn]] = torch.maximum(lo_t[probs[dn], flats[dn]],
                                                       -ub[dn] - m[dn])
        return PairBounds(lows["z"], highs["z"], lows["c"], highs["c"], lows["d"], highs["d"])

    def _tighten_padded(self, k: int, q: str, need: Tensor, low: Tensor, high: Tensor,
                        margin: Tensor, abs_floor: Tensor) -> None:
        """:meth:`_tighten`'s rows for quantity ``q`` laid out per problem, ``(P, 2M, n)``:
        each problem's ``M`` neurons, those that need a bound first, both signs, in groups
        of problems with similar counts (``M`` the largest in the group); a problem with
        fewer needs pads with neurons that need none, whose values are discarded. The rows of one problem share its ReLU
        tables, so :meth:`_backsubstitute_padded` broadcasts them instead of gathering them
        per row (the same bounds; 1.4-1.7x less CPU on the 6x50 ACAS-like table pairs,
        docs/equivalence.md). ``low``/``high`` are updated in place."""
        P, n = need.shape
        cnt = need.sum(1)
        if P == 0 or int(cnt.max()) == 0:
            return
        # needed neurons first (a stable sort keeps the rest after them); a prefix of a
        # permutation, so no neuron appears twice in a problem's rows
        order_all = torch.argsort((~need).to(torch.int8), dim=1, stable=True)
        # problems grouped by their count, so little is padded
        by_count = torch.argsort(cnt, stable=True)
        sign_all = torch.tensor([1.0, -1.0], dtype=torch.float64)
        counts = cnt[by_count].tolist()
        s = 0
        while s < P:
            # a group: the next problems (by increasing count) while their count stays
            # within 5/4 of the first's (little padding) and the rows fit in chunk_rows
            first = counts[s]
            e = s + 1
            while e < P and 4 * counts[e] <= 5 * max(first, 4) and \
                    (e + 1 - s) * 2 * counts[e] <= self.chunk_rows:
                e += 1
            idx = by_count[s:e]
            M = counts[e - 1]
            s = e
            if M == 0:
                continue
            o = order_all[idx, :M]
            p = o.shape[0]
            lam = torch.zeros((p, 2 * M, n), dtype=torch.float64)
            rows = torch.cat([o, o], 1)[..., None]
            sign = sign_all.repeat_interleave(M)
            lam.scatter_(2, rows, sign[None, :, None].expand(p, 2 * M, 1))
            lz = None if q == "d" else lam
            ld = lam if q == "d" else (-lam if q == "c" else None)
            ub = self._backsubstitute_padded(k, lz, ld, idx)
            m = margin[idx].gather(1, o) + abs_floor[idx, None]
            v = torch.arange(M)[None, :] < cnt[idx, None]
            hi_t, lo_t = high[idx], low[idx]
            cur = hi_t.gather(1, o)
            hi_t.scatter_(1, o, torch.where(v, torch.minimum(cur, ub[:, :M] + m), cur))
            cur = lo_t.gather(1, o)
            lo_t.scatter_(1, o, torch.where(v, torch.maximum(cur, -ub[:, M:] - m), cur))
            high[idx], low[idx] = hi_t, lo_t
        self.rows += 2 * int(cnt.sum())

    def _backsubstitute_padded(self, k: int, lz: Tensor | None, ld: Tensor | None,
                               sl: Tensor) -> Tensor:
        """Upper bounds ``(p, m)`` of rows ``(p, m, n)`` of the problems ``sl`` (row block
        ``i`` over problem ``sl[i]``'s box) by the relaxation of
        :meth:`_choose_backward` (the same products, each problem's tables broadcast over
        its rows)."""
        ref = lz if lz is not None else ld
        assert ref is not None
        p, m, n0 = ref.shape
        const = torch.zeros((p, m), dtype=torch.float64)

        def mm(a: Tensor, w: Tensor) -> Tensor:  # 2-D products (faster than batched)
            return (a.reshape(p * m, a.shape[2]) @ w).reshape(p, m, w.shape[1])

        for j in range(k, -1, -1):
            layer = self.chain.layers[j]
            if layer.kind == "relu":
                pz, nz, pd, nd, pk, nk, az, alz, bz = (
                    t[sl, None, :] for t in self._pack(j).unbind(0))
                cz: Tensor | None = None
                cd: Tensor | None = None
                if ld is not None:
                    sp, sn = ld.clamp(min=0), ld.clamp(max=0)
                    cz = sp * pz + sn * nz
                    cd = sp * pd + sn * nd
                    const = const + (sp * pk + sn * nk).sum(-1)
                if lz is not None:
                    mp, mn = lz.clamp(min=0), lz.clamp(max=0)
                    t = mp * az + mn * alz
                    cz = t if cz is None else cz + t
                    const = const + (mp * bz).sum(-1)
                lz, ld = cz, cd
                continue
            w, wc, b, bc = layer.w, layer.wc, layer.b, layer.bc
            assert w is not None and wc is not None and b is not None and bc is not None
            nzs = None
            if lz is not None:
                const = const + lz @ b
                nzs = mm(lz, w)
            if ld is not None:
                dw, db, changed = self._diff[j]
                if changed:
                    const = const + ld @ db
                    t = mm(ld, dw)
                    nzs = t if nzs is None else nzs + t
                    ld = mm(ld, wc)
                else:
                    ld = mm(ld, w)
            lz = nzs
        if lz is None:
            return const
        return const + (lz * self.mid[sl, None, :]).sum(-1) \
            + (lz.abs() * self.rad[sl, None, :]).sum(-1)

    def pre_bounds(self) -> list[Tensor | None]:
        """Per layer: the bounds of an affine layer's output ``(P, 6, n)`` (``zl, zu, cl,
        cu, dl, du``), None for a ReLU; valid on any sub-box (``prior`` of a child)."""
        out: list[Tensor | None] = []
        for layer, b in zip(self.chain.layers, self.bounds):
            out.append(None if layer.kind == "relu" else
                       torch.stack([b.zl, b.zu, b.cl, b.cu, b.dl, b.du], 1))
        return out

    # ----------------------------------------------------------------- backward
    def backsubstitute(self, k: int, lz: Tensor | None, ld: Tensor | None, prob: Tensor,
                       slopes: Mapping[int, Slopes] | None = None
                       ) -> tuple[Tensor, Tensor]:
        """Upper bounds ``(R,)`` of ``<lz, z_k> + <ld, d_k>`` (layer ``k``'s output, rows
        on dimension 0, row ``r`` over problem ``prob[r]``'s box), and the forms'
        coefficients on the input ``(R, n_in)``. ``slopes``: per ReLU layer, the split
        ``theta`` and tangent slopes ``alpha_z``, ``alpha_c`` per row and neuron (see
        :func:`~certcompress.bounds.propagation.relax.relu_backward`; any values give a
        valid bound, :meth:`optimized_backsubstitute` chooses them). Without ``slopes``,
        by ``relaxation`` (:data:`RELAXATIONS`): ``"choose"``, one pass with the variant
        picked per row and neuron (:meth:`_choose_backward`); ``"min2"``, the smaller per
        row of two whole passes, the default relaxation and the difference-structured one
        (:meth:`_ramp_backward` at every ReLU); ``"default"``, the split picked per neuron
        by its value over the box, no ramp."""
        if slopes is not None or self.relaxation == "default":
            return self._backsubstitute(k, lz, ld, prob, slopes, "default")
        if ld is None:  # one network: the same relaxation in every variant
            return self._backsubstitute(k, lz, ld, prob, None, "choose")
        if self.relaxation in ("choose", "ramp"):
            return self._backsubstitute(k, lz, ld, prob, None, self.relaxation)
        v0, x0 = self._backsubstitute(k, lz, ld, prob, None, "default")
        v1, x1 = self._backsubstitute(k, lz, ld, prob, None, "ramp")
        take = v1 < v0
        return torch.where(take, v1, v0), torch.where(take[:, None], x1, x0)

    def _backsubstitute(self, k: int, lz: Tensor | None, ld: Tensor | None, prob: Tensor,
                        slopes: Mapping[int, Slopes] | None, variant: str
                        ) -> tuple[Tensor, Tensor]:
        R = prob.shape[0]
        const = torch.zeros(R, dtype=torch.float64)
        for j in range(k, -1, -1):
            layer = self.chain.layers[j]
            if layer.kind == "relu":
                sl = None if slopes is None else slopes.get(j)
                cz: Tensor | None
                cd: Tensor | None
                if sl is None and variant == "choose" and (ld is not None or lz is not None):
                    cz, cd, c0 = self._choose_backward(j, lz, ld, prob)
                elif sl is None and variant == "ramp" and ld is not None:
                    cz, cd, c0 = self._ramp_backward(j, lz, ld, prob)
                else:
                    # rows 0 at neurons dead in both networks (their terms are exactly 0
                    # on the box), so no relaxation choice carries a form through them
                    lz, ld = self._drop_dead(j, lz, prob), self._drop_dead(j, ld, prob)
                    if sl is None:
                        cz, cd, c0 = relu_backward(self.relax[j], lz, ld, prob)
                    else:
                        cz, cd, c0 = relu_backward(self.relax[j], lz, ld, prob, *sl)
                lz, ld = cz, cd
                const = const + c0
                continue
            lz, ld, const = affine_backward(layer, lz, ld, const)
        if lz is None:
            lz = torch.zeros((R, self.chain.n_in), dtype=torch.float64)
        value = const + (lz * self.mid[prob]).sum(1) + (lz.abs() * self.rad[prob]).sum(1)
        return value, lz

    def _ramp_backward(self, j: int, lz: Tensor | None, ld: Tensor, prob: Tensor
                       ) -> tuple[Tensor | None, Tensor | None, Tensor]:
        """The ReLU pair at layer ``j`` with the difference routed through its own bounds
        (``theta = 1``) and, where the difference has one sign and the ReLU that can
        switch is mostly active, the ramp bounds of :func:`ramp_slopes` in place of the
        constant ``0``: ``Delta >= kz z`` (``d >= 0``), ``Delta <= -kc c`` (``d <= 0``)."""
        rl = self.relax[j]
        lz, ld0 = self._drop_dead(j, lz, prob), self._drop_dead(j, ld, prob)
        assert ld0 is not None
        ld = ld0
        if j not in self._ramps:
            self._ramps[j] = ramp_slopes(rl.bounds)
        kz, kc = (t[prob] for t in self._ramps[j])
        # both stable: the joint relaxation is exact (theta = 0)
        theta = (rl.unstable_z | rl.unstable_c)[prob].to(ld.dtype)
        cz, cd, c0 = relu_backward(rl, lz, ld, prob, theta)
        assert cz is not None and cd is not None
        neg, pos = ld.clamp(max=0), ld.clamp(min=0)
        # s < 0 needs a lower bound of Delta: kz z;  s > 0 an upper one: -kc (z - d)
        return cz + neg * kz - pos * kc, cd + pos * kc, c0

    def _drop_dead(self, j: int, t: Tensor | None, prob: Tensor) -> Tensor | None:
        """The rows ``t`` with 0 at the neurons of ReLU layer ``j`` dead in both networks
        (:attr:`dead`): both ReLUs are exactly 0 there on the box, so the form's value is
        unchanged, and the magnitudes, 0 there, stay upper bounds of every term."""
        if t is None:
            return None
        return torch.where(self.dead[j][prob], 0.0, t)

    def _pack(self, j: int) -> Tensor:
        """``(9, P, n)``: per neuron of ReLU layer ``j``, the coefficients of
        :meth:`_choose_backward`'s bound, by the sign of the row's coefficients (``ld``
        positive / negative, ``lz`` positive / negative): ``pz, nz`` (on ``z`` per unit of
        ``ld``), ``pd, nd`` (on ``d``), ``pk, nk`` (constant), ``az, alz, bz`` (``lz r``: chord
        and tangent of ``ReLU(z)``). Components first, so a row batch gathers each
        contiguously."""
        t = self._packs.get(j)
        if t is None:
            rl = self.relax[j]
            kz, kc = ramp_slopes(rl.bounds)
            u = rl.unstable_z | rl.unstable_c
            if self.mixed_chords:  # one dead, the other active (d has one sign)
                bd = rl.bounds
                z_dead, z_act = bd.zu <= 0, bd.zl >= 0
                c_dead, c_act = bd.cu <= 0, bd.cl >= 0
                u = u | (z_dead & c_act) | (z_act & c_dead)

            def pick(a: Tensor, b: Tensor) -> Tensor:
                return torch.where(u, a, b)

            zero = torch.zeros_like(rl.az)
            # unstable: ld (r - rc) by the chords of max(d, 0) (ld > 0) / min(d, 0)
            # (ld < 0), or the ramps -kc c = -kc (z - d) / kz z where they apply (kz, kc
            # are 0 elsewhere); both stable: r = az z, rc = ac (z - d) exactly
            diff = rl.az - rl.ac
            t = torch.stack([pick(-kc, diff), pick(kz, diff), pick(rl.su + kc, rl.ac),
                             pick(rl.sl, rl.ac), pick(rl.bu, zero), pick(rl.bl, zero),
                             rl.az, rl.alz, rl.bz])
            # 0 at neurons dead in both networks (:attr:`dead`), as :meth:`_drop_dead` in
            # the other paths: their magnitudes are 0, so no form may pass through them.
            # Without this a zero-width input interval at 0 (``c`` in ``[0, 0]``, which
            # ``single_relu`` reads as active, or ``mixed_chords``' chords) carried the
            # pre-activation's form with no rounding margin (tests/equivalence/
            # test_margin_review.py: a bound 1.0 below the exact value)
            t = torch.where(self.dead[j][None], 0.0, t)
            self._packs[j] = t
        return t

    def _choose_backward(self, j: int, lz: Tensor | None, ld: Tensor | None, prob: Tensor
                         ) -> tuple[Tensor | None, Tensor | None, Tensor]:
        """The ReLU pair at layer ``j`` in one pass, the relaxation chosen per neuron by
        its stability: where both ReLUs are stable the joint relaxation (``theta = 0``,
        exact: ``lz r + ld (r - rc)`` is linear there); where either can switch the
        difference through its own chords (``theta = 1``) with, where the difference has
        one sign and the switching ReLU is mostly active, the ramp of :func:`ramp_slopes`
        in place of the chords' constant ``0``. This is :meth:`_ramp_backward` fused into
        a few elementwise products on precomputed per-neuron tables (:meth:`_pack`; the
        same bound). Every candidate bounds the form above for every ``(z, d)`` in the
        node's input bounds, neuron by neuron, so any per-neuron choice is a valid bound
        (docs/bounds.md).

        Measured on the 6x50 ACAS-like pairs (benchmarks/bench_equivalence.py): within
        1% of the smaller of the two whole passes (``"min2"``) and 2-3x as fast;
        picking ``theta`` per neuron by the candidates' values over the node's input box
        (as :func:`relu_backward` does) was 5-8x looser on small regions, since the box
        value ignores that the difference's chords stay correlated across layers."""
        pack = self._pack(j)
        if prob.shape[0] != pack.shape[1] or not bool((prob[1:] > prob[:-1]).all()):
            # one gather per component along the rows (contiguous; much faster than one
            # index_select of the stack along its middle dimension)
            parts = [t.index_select(0, prob) for t in pack.unbind(0)]
        else:
            parts = list(pack.unbind(0))
        pz, nz, pd, nd, pk, nk, az, alz, bz = parts
        if ld is None:  # the original network alone (DeepPoly/CROWN)
            assert lz is not None
            mp, mn = lz.clamp(min=0), lz.clamp(max=0)
            return mp * az + mn * alz, None, (mp * bz).sum(1)
        sp, sn = ld.clamp(min=0), ld.clamp(max=0)
        cz = sp * pz + sn * nz
        cd = sp * pd + sn * nd
        k = sp * pk + sn * nk
        if lz is not None:
            mp, mn = lz.clamp(min=0), lz.clamp(max=0)
            cz = cz + mp * az + mn * alz
            k = k + mp * bz
        return cz, cd, k.sum(1)

    def optimized_backsubstitute(self, k: int, lz: Tensor | None, ld: Tensor | None,
                                 prob: Tensor, steps: int, lr: float = 0.25
                                 ) -> tuple[Tensor, Tensor]:
        """:meth:`backsubstitute` with the split and tangent slopes of every ReLU layer
        chosen per row by ``steps`` projected gradient steps (Adam) on the bound
        (alpha-CROWN for the pair: ``alpha_z``, ``alpha_c`` in ``[0, 1]`` for both networks,
        ``theta`` in ``[0, 1]`` between the difference's own chords and the joint
        relaxation). Every iterate is a valid bound; each row keeps its smallest, never
        above the default relaxation's."""
        with torch.no_grad():
            best, best_lx = self.backsubstitute(k, lz, ld, prob)
        relus = [j for j in range(k + 1) if self.chain.layers[j].kind == "relu"]
        if steps <= 0 or not relus:
            return best, best_lx
        params: dict[int, Slopes] = {}
        for j in relus:
            rl = self.relax[j]
            theta = (rl.unstable_z | rl.unstable_c)[prob].to(torch.float64)
            params[j] = (theta.requires_grad_(True), rl.alz[prob].clone().requires_grad_(True),
                         rl.alc[prob].clone().requires_grad_(True))
        flat = [t for sl in params.values() for t in sl]
        opt = torch.optim.Adam(flat, lr=lr)
        for _ in range(steps):
            with torch.enable_grad():
                v, lx = self.backsubstitute(k, lz, ld, prob, params)
                better = v.detach() < best
                best = torch.where(better, v.detach(), best)
                best_lx = torch.where(better[:, None], lx.detach(), best_lx)
                opt.zero_grad()
                v.sum().backward()
            opt.step()
            with torch.no_grad():
                for t in flat:
                    t.clamp_(0.0, 1.0)
        with torch.no_grad():
            v, lx = self.backsubstitute(k, lz, ld, prob, params)
            better = v < best
            best = torch.where(better, v, best)
            best_lx = torch.where(better[:, None], lx, best_lx)
        return best, best_lx

    def upper_bounds(self, cz: Tensor | None, cd: Tensor | None, prob: Tensor,
                     optimize: int = 0) -> tuple[Tensor, Tensor]:
        """Upper bounds ``(R,)`` of ``<cz, f> + <cd, f - f'>`` over problem ``prob[r]``'s
        box (rounding margin included) and the rows' input coefficients; ``cz``/``cd``
        are ``(R, n_out)``. ``optimize``: gradient steps on the output rows' slopes
        (:meth:`optimized_backsubstitute`; 0: the default relaxation)."""
        k = len(self.chain.layers) - 1
        mz, mc = self.mags[k]
        R = prob.shape[0]
        vals, coefs = [], []
        for s in range(0, R, self.chunk_rows):
            sl = slice(s, s + self.chunk_rows)
            p = prob[sl]
            a = None if cz is None else cz[sl]
            d = None if cd is None else cd[sl]
            margin = torch.zeros(p.shape[0], dtype=torch.float64)
            if a is not None:
                margin = margin + (a.abs() * mz[p]).sum(1)
            if d is not None:
                margin = margin + (d.abs() * (mz[p] + mc[p])).sum(1)
            v, lx = self.optimized_backsubstitute(k, a, d, p, optimize)
            # also the interval reading at the output (never looser than needed)
            ob = self.bounds[k]
            iv = torch.zeros_like(v)
            if a is not None:
                iv = iv + (a.clamp(min=0) * ob.zu[p]).sum(1) + (a.clamp(max=0) * ob.zl[p]).sum(1)
            if d is not None:
                iv = iv + (d.clamp(min=0) * ob.du[p]).sum(1) + (d.clamp(max=0) * ob.dl[p]).sum(1)
            best = torch.minimum(v, iv)
            if self.sym is not None:
                sy = self.sym
                acc = torch.zeros((p.shape[0], self.chain.n_in + 1), dtype=torch.float64)
                for coef, lo_s, up_s in ((a, sy.zl, sy.zu), (d, sy.dl, sy.du)):
                    if coef is not None:
                        acc = acc + torch.einsum("rn,rnk->rk", coef.clamp(min=0), up_s[p]) \
                            + torch.einsum("rn,rnk->rk", coef.clamp(max=0), lo_s[p])
                sv = acc[:, -1] + (acc[:, :-1] * self.mid[p]).sum(1) \
                    + (acc[:, :-1].abs() * self.rad[p]).sum(1)
                best = torch.minimum(best, sv)
            vals.append(best + self.chain.eta * margin + self.form_floor()[p])
            coefs.append(lx)
        return torch.cat(vals), torch.cat(coefs)
