"""Branch-and-bound over ReLU splitting (beta-CROWN's branching without the beta
multipliers) for chain pairs: a sub-domain is the input box of its parent together with
sign constraints on pre-activations of the original (``z_j >= 0`` or ``z_j <= 0``) or of
the compressed network (``c_j``).

Soundness (docs/equivalence.md, "ReLU splitting"):

* a split of a domain on neuron ``j`` gives ``{x: z_j(x) >= 0}`` and ``{x: z_j(x) <= 0}``
  within it; their union is the domain, so proving both proves it;
* within a child, the neuron's pre-activation bounds are clamped to ``[max(l, 0), u]`` or
  ``[l, min(u, 0)]`` (they hold on every input of the child) and every later bound is
  recomputed from there (:class:`~.chain.ChainState` with the clamped bounds as
  ``prior``); the relaxations hold on the child's inputs, and each back-substituted bound
  is concretized over the whole box, a superset of the child: a sound upper bound over
  the child; the parent's other layer bounds are intersected too (they hold on the
  parent, which contains the child);
* a child whose bounds become empty has no input (every interval holds on all of its
  inputs) and is proven vacuously (``ChainState(empty_ok=True)``);
* a domain is bisected along an input dimension instead (the smear heuristic of
  :mod:`.search`), keeping its sign constraints, where that is expected to gain more (a
  quarter of the dimension's ``|coefficient| x width`` over the weighted rows against the
  neuron's intercept score) or no unstable neuron is left: the two halves cover it, and
  the search stays complete;
* a counterexample may be any point of the input box (it need not satisfy the
  constraints): it is re-checked in float64 on the lowered pair, as in :mod:`.search`;
  the attack only proposes points and never proves a region.

The counterexample search of a sub-domain (:meth:`_ReluSearch._aimed_attack`) draws its
random points from a generator seeded by the domain's path (:func:`path_seed`: siblings
sharing a box search different points) and starts sign-gradient steps from the box
corners that maximize the bound's linear rows, with a hinge penalty pulling toward the
domain's sign constraints.

The split neuron maximizes the constant its relaxation adds to the domain's unproven
output rows (:meth:`~.chain.ChainState.relu_intercepts`, BaBSR's intercept score), the
rows weighted by how far each is above what proving needs; where both networks'
pre-activations can switch, the one with the larger triangle (``-l u / (u - l)``) is
split. Runs in the calling process only (see :func:`run_relu_search`).
"""

from __future__ import annotations

import heapq
import math
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .chain import ChainPair, ChainState, affine_backward
from .properties import Judgement, Property
from .search import Bounder, SearchConfig, _Search

__all__ = ["run_relu_search", "SPLITS", "RELU_AUTO_MIN_DIM", "resolve_split", "path_seed"]

#: how the search splits a region: ``"input"`` bisects the input box (:mod:`.search`),
#: ``"relu"`` fixes the sign of an unstable neuron (this module), ``"auto"`` (the default
#: of ``verify_equivalence``) picks ``"relu"`` for chain pairs with at least
#: :data:`RELU_AUTO_MIN_DIM` inputs without an executor or strong branching
#: (:func:`resolve_split`)
SPLITS = ("auto", "input", "relu")
RELU_AUTO_MIN_DIM = 16
#: an input bisection is expected to remove this fraction of a dimension's
#: ``|coefficient| x width`` from the rows (halving its radius removes a quarter of its
#: range's contribution), compared with a ReLU split's intercept score
INPUT_GAIN = 0.25
#: projected gradient steps on the split constraints' multipliers per pass
#: (:func:`beta_bounds`; 0: no multipliers, the constraints only clamp bounds)
BETA_STEPS = 10
#: the sub-domain attack (:meth:`_ReluSearch._aimed_attack`): start from the box corners
#: that maximize the bound's linear rows (False: random starts only), and the weight of
#: the hinge penalty of the domain's sign constraints in its objective (0: none)
CORNER_STARTS = True
PENALTY = 1.0

# the rows of a pre_bounds() tensor (6, n): zl, zu, cl, cu, dl, du
_ROW = {("z", 1): 0, ("z", -1): 1, ("c", 1): 2, ("c", -1): 3}

Pre = list[Tensor | None]
Split = tuple[int, int, str, int]  # (affine layer, neuron, "z"/"c", sign: 1 for >= 0)


def path_seed(seed: int, splits: tuple[Split, ...], lower: Tensor, upper: Tensor) -> int:
    """A generator seed for a sub-domain's counterexample search: a hash (CRC-32, the
    same in every process) of the run's ``seed``, the domain's sign constraints and its
    box, so siblings sharing a box draw different points and a run repeats itself."""
    h = zlib.crc32(repr((seed, splits)).encode())
    h = zlib.crc32(lower.detach().to(torch.float64).contiguous().numpy().tobytes(), h)
    return zlib.crc32(upper.detach().to(torch.float64).contiguous().numpy().tobytes(), h)


def resolve_split(split: str, chain: ChainPair | None, n_in: int,
                  input_options: bool = False) -> str:
    """``"input"`` or ``"relu"`` for ``split`` (:data:`SPLITS`): ``"auto"`` is ``"relu"``
    for a chain pair with at least :data:`RELU_AUTO_MIN_DIM` inputs (``n_in``:
    ``verify_equivalence`` counts those of nonzero width in the box), ``"input"``
    otherwise or with ``input_options`` (an executor or strong branching was asked for:
    ReLU splitting runs in the calling process only and splits one neuron at a time)."""
    if split == "auto":
        return "relu" if chain is not None and n_in >= RELU_AUTO_MIN_DIM \
            and not input_options \
            else "input"
    return split


@dataclass
class _Dom:
    """A sub-domain: the box ``lower``/``upper`` and the sign constraints folded into its
    layer bounds ``pre`` (per layer ``(6, n)`` or None, valid on the sub-domain)."""

    lower: Tensor
    upper: Tensor
    pre: Pre
    score: float
    weight: float  # 2^-depth: its share of the root (each split halves it)
    depth: int
    relu: tuple[int, int, str] | None = None  # (affine layer, neuron, "z"/"c") to split
    dim: int = -1  # input dimension to split when ``relu`` is None
    # its rows' upper bounds (r,) and the rows (cz, cd; (r, m) or None): valid on every
    # child, so a child bounding the same rows keeps the smaller of the two
    ub: Tensor | None = None
    rows: tuple[Tensor | None, Tensor | None] | None = None
    splits: tuple[Split, ...] = ()


def beta_bounds(state: ChainState, cz: Tensor | None, cd: Tensor | None, prob: Tensor,
                splits: list[tuple[Split, ...]], steps: int, lr: float = 0.5) -> Tensor:
    """Upper bounds ``(R,)`` of the output rows ``<cz, f> + <cd, f - f'>`` (row ``r`` over
    problem ``prob[r]``) with the split constraints of each problem added by Lagrange
    multipliers (beta-CROWN): on a sub-domain where ``s q_j(x) >= 0`` (``q`` = ``z`` or
    ``c``), ``g(x) <= g(x) + beta s q_j(x)`` for every ``beta >= 0``, and the right side is
    back-substituted to the input through the sub-domain's relaxations (those of
    :meth:`~.chain.ChainState._choose_backward`, valid on it) and concretized over the
    box. Every ``beta >= 0`` gives a valid bound; ``steps`` projected Adam steps from
    ``beta = 0`` (the plain bound) lower it, each row keeps its smallest. Rounding: the
    output rows' margin of :meth:`~.chain.ChainState.upper_bounds` plus, per multiplier,
    ``beta`` times the margin of a row bounding ``q_j`` (``eta (|z| + |c|)`` magnitude and
    the underflow floor; ``eta (2|z| + |c|)`` for ``q = c``, written ``z - d``)."""
    chain = state.chain
    k = len(chain.layers) - 1
    R = prob.shape[0]
    eta = chain.eta
    floor = state.form_floor()[prob]
    # per split layer: signs of z- and c-constraints per row (R, n), and the magnitudes
    P = len(splits)
    per: dict[int, tuple[Tensor, Tensor]] = {}
    for p in range(P):
        for layer, neuron, q, sign in splits[p]:
            if layer not in per:
                n = int(state.bounds[layer].zl.shape[1])
                per[layer] = (torch.zeros((P, n), dtype=torch.float64),
                              torch.zeros((P, n), dtype=torch.float64))
            per[layer][0 if q == "z" else 1][p, neuron] = float(sign)
    masks = {a: (mz_[prob], mc_[prob]) for a, (mz_, mc_) in per.items()}
    mz, mc = state.mags[k]
    base = torch.zeros(R, dtype=torch.float64)
    if cz is not None:
        base = base + (cz.abs() * mz[prob]).sum(1)
    if cd is not None:
        base = base + (cd.abs() * (mz[prob] + mc[prob])).sum(1)
    base = eta * base + floor
    if not masks or steps <= 0:
        return torch.full((R,), math.inf, dtype=torch.float64)
    betas = {a: torch.zeros_like(m[0], requires_grad=True) for a, m in masks.items()}
    rmargin = {a: eta * (state.mags[a][0] + state.mags[a][1])[prob] + floor[:, None]
               for a in masks}
    # a c-constraint enters as +beta on z and -beta on d (c = z - d): its rows are charged
    # |z| + |d| <= 2|z| + |c| (the margin's own (z, d) accounting), not |z| + |c|
    cmargin = {a: rmargin[a] + eta * state.mags[a][0][prob] for a in masks}

    def value() -> Tensor:
        lz, ld = cz, cd
        const = torch.zeros(R, dtype=torch.float64)
        for j in range(k, -1, -1):
            layer = chain.layers[j]
            if j in betas:
                b = betas[j]  # >= 0: projected after every step (no clamp here: its
                # gradient at 0 is 0, so the multipliers would never leave 0)
                sz, sc = masks[j]
                inj = b * (sz + sc)
                lz = inj if lz is None else lz + inj
                if bool((sc != 0).any()):
                    t = -(b * sc)
                    ld = t if ld is None else ld + t
                const = const + (b * (sz.abs() * rmargin[j] + sc.abs() * cmargin[j])).sum(1)
            if layer.kind == "relu":
                if lz is None and ld is None:
                    break
                lz, ld, c0 = state._choose_backward(j, lz, ld, prob)
                const = const + c0
                continue
            lz, ld, const = affine_backward(layer, lz, ld, const)
        if lz is None:
            return const + base
        return const + (lz * state.mid[prob]).sum(1) + (lz.abs() * state.rad[prob]).sum(1) \
            + base

    best = torch.full((R,), math.inf, dtype=torch.float64)
    params = list(betas.values())
    moments = [(torch.zeros_like(t), torch.zeros_like(t)) for t in params]
    for step in range(1, steps + 2):
        with torch.enable_grad():
            v = value()
            best = torch.minimum(best, v.detach())
            grads = torch.autograd.grad(v.sum(), params, allow_unused=True)
        with torch.no_grad():
            for t, g, m in zip(params, grads, moments):
                if g is not None:
                    _adam_step(t, g, m, step, lr)
                t.clamp_(min=0.0)
    return best


def _adam_step(t: Tensor, g: Tensor, moments: tuple[Tensor, Tensor], step: int, lr: float,
               b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> None:
    """One Adam step on ``t`` in place (torch.optim.Adam's defaults and single-tensor
    arithmetic), written out: constructing ``torch.optim.Adam`` imports torch._dynamo,
    seconds of the first ReLU-split call of a process (every ``equiv`` command)."""
    m, v = moments
    m.lerp_(g, 1.0 - b1)
    v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
    denom = (v.sqrt() / math.sqrt(1.0 - b2 ** step)).add_(eps)
    t.addcdiv_(m, denom, value=-lr / (1.0 - b1 ** step))


def _same(a: Tensor | None, b: Tensor | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None
                                         and a.shape == b.shape and bool(torch.equal(a, b)))


def _stack(pres: list[Pre]) -> Pre | None:
    if not pres:
        return None
    out: Pre = []
    for k in range(len(pres[0])):
        parts = [p[k] for p in pres]
        out.append(None if any(t is None for t in parts) else
                   torch.stack([t for t in parts if t is not None]))
    return out


def _clamp(pre: Pre, layer: int, neuron: int, q: str, sign: int) -> Pre:
    """``pre`` with ``q_neuron >= 0`` (``sign`` 1) or ``<= 0`` (-1) at ``layer``."""
    out = list(pre)
    t = out[layer]
    assert t is not None
    t = t.clone()
    r = _ROW[(q, sign)]
    if sign > 0:
        t[r, neuron] = torch.clamp(t[r, neuron], min=0.0)
    else:
        t[r, neuron] = torch.clamp(t[r, neuron], max=0.0)
    out[layer] = t
    return out


class _ReluSearch(_Search):
    """The search of :mod:`.search` with sub-domains split on ReLUs (its attack and
    counterexample re-check are reused as they are)."""

    def __init__(self, bounder: Bounder, prop: Property, lower: Tensor, upper: Tensor,
                 config: SearchConfig,
                 progress: Callable[[dict[str, Any]], None] | None,
                 beta_steps: int = BETA_STEPS) -> None:
        super().__init__(bounder, prop, lower, upper, config, None, progress)
        assert bounder.chain is not None
        self.chain: ChainPair = bounder.chain
        self.relu_splits = 0
        self.beta_steps = beta_steps
        self.input_splits = 0
        self.infeasible = 0
        # ReLU layers j whose pre-activation is affine layer j - 1 (split candidates)
        self.relu_layers = [j for j, layer in enumerate(self.chain.layers)
                            if layer.kind == "relu" and j > 0
                            and self.chain.layers[j - 1].kind == "affine"]

    # ------------------------------------------------------------------ bounding
    def _pass(self, lo: Tensor, hi: Tensor, pres: list[Pre] | None,
              parents: list[_Dom] | None = None,
              splits: list[tuple[Split, ...]] | None = None
              ) -> tuple[Tensor, Tensor, list[Pre], Tensor, Tensor, Tensor, Judgement,
                         Tensor | None, Tensor | None]:
        """One chain pass over a batch: upper bounds ``(P, r)``, input coefficients
        ``(P, r, n)``, layer bounds per domain, the infeasible mask, the original's
        outputs at the centres, the ReLU-split scores ``(P, L, n_max)``, the judgement
        and the rows ``cz``, ``cd``. ``parents[p]``: the domain that child ``p`` was split
        from; where the child's rows are the parent's, each row's bound is the smaller
        of the two (the parent's holds on the child, a subset)."""
        P = lo.shape[0]
        self.bounded += P
        centre_f = self._centre_outputs(lo, hi)
        cz, cd, r = self.prop.rows(centre_f)
        prior = None if pres is None else _stack(pres)
        with torch.no_grad():
            state = ChainState(self.chain, lo, hi, intermediate=self.b.intermediate,
                               quantities=("z", "d"), prior=prior,
                               relaxation=self.b.relaxation, empty_ok=True,
                               mixed_chords=True)
            prob = torch.arange(P).repeat_interleave(r)
            ub, lx = state.upper_bounds(cz, cd, prob, optimize=self.b.optimize)
        if splits is not None and self.beta_steps > 0 and any(splits):
            ub = torch.minimum(ub, beta_bounds(state, cz, cd, prob, splits,
                                               self.beta_steps))
        ub, lx = ub.reshape(P, r), lx.reshape(P, r, -1)
        if parents is not None:
            for p, par in enumerate(parents):
                if par.ub is None or par.rows is None:
                    continue
                rz = None if cz is None else cz[p * r:(p + 1) * r]
                rd = None if cd is None else cd[p * r:(p + 1) * r]
                if _same(rz, par.rows[0]) and _same(rd, par.rows[1]):
                    ub[p] = torch.minimum(ub[p], par.ub)
        j = self.prop.judge(ub, centre_f)
        weights = self._row_weights(j, P, r)
        scores = self._relu_scores(state, cz, cd, prob, weights, P, r)
        pre = state.pre_bounds()
        cols = [[None] * P if t is None else list(t.unbind(0)) for t in pre]
        per: list[Pre] = [list(q) for q in zip(*cols)]
        return ub, lx, per, state.infeasible.clone(), centre_f, scores, j, cz, cd

    @staticmethod
    def _row_weights(j: Judgement, P: int, r: int) -> Tensor:
        """``(P, r)``: each row's excess over what proving needs (the worst row where
        there is none)."""
        top = torch.zeros((P, r), dtype=torch.float64)
        top[torch.arange(P), j.worst] = 1.0
        if j.excess is None:
            return top
        ex = j.excess.to(torch.float64)
        return torch.where((ex.sum(1) <= 0)[:, None], top, ex)

    def _relu_scores(self, state: ChainState, cz: Tensor | None, cd: Tensor | None,
                     prob: Tensor, weights: Tensor, P: int, r: int) -> Tensor:
        """``(P, L, n_max)``: per ReLU layer of :attr:`relu_layers` and neuron, the
        weighted intercept score where the neuron's ``z`` or ``c`` can switch, -1
        elsewhere."""
        k = len(self.chain.layers) - 1
        ints = state.relu_intercepts(k, cz, cd, prob)
        widths = [state.bounds[j - 1].zl.shape[1] for j in self.relu_layers]
        n_max = max(widths, default=0)
        out = torch.full((P, len(self.relu_layers), n_max), -1.0, dtype=torch.float64)
        for li, jl in enumerate(self.relu_layers):
            b = state.bounds[jl - 1]
            unstable = ((b.zl < 0) & (b.zu > 0)) | ((b.cl < 0) & (b.cu > 0))
            t = ints.get(jl)
            if t is None:
                continue
            s = torch.einsum("pr,prn->pn", weights, t.reshape(P, r, -1))
            s = torch.where(unstable & ~state.infeasible[:, None], s, torch.full_like(s, -1.0))
            out[:, li, :s.shape[1]] = s
        return out

    # ------------------------------------------------------------------- attack
    def _aimed_attack(self, lo: Tensor, hi: Tensor, centre_f: Tensor, lx: Tensor,
                      j: Judgement, splits: list[tuple[Split, ...]] | None) -> bool:
        """The counterexample search of a batch of sub-domains (any point of the box is
        a counterexample candidate, re-checked by :meth:`~.search._Search._check_points`):
        every domain's centre and ``samples`` random points drawn from its own generator
        (:func:`path_seed`: siblings sharing a box search different points, and a run
        repeats itself); then, on the ``pgd_regions`` worst, sign-gradient ascent on the
        property's objective plus the hinge penalty ``sum min(s q_j(x), 0)`` of the
        domain's sign constraints (toward the sub-domain), from three starts: the box
        corner that maximizes the worst row's linear upper bound (the input where the
        relaxation puts the violation), the corner of the rows weighted by their excess,
        and a random point; every iterate is checked."""
        P, n = lo.shape
        spl: list[tuple[Split, ...]] = [()] * P if splits is None else splits
        gens = [torch.Generator().manual_seed(path_seed(self.cfg.seed, spl[p], lo[p], hi[p]))
                for p in range(P)]
        width = hi - lo
        pts = [(lo + hi) * 0.5]
        for _ in range(self.cfg.samples):
            u = torch.stack([torch.rand(n, generator=g, dtype=torch.float64) for g in gens])
            pts.append(lo + width * u)
        if self._check_points(torch.cat(pts)):
            return True
        if self.cfg.pgd_steps <= 0 or self.cfg.pgd_regions <= 0:
            return False
        r = lx.shape[1]
        idx = torch.argsort(j.score, descending=True)[:self.cfg.pgd_regions]
        w = self._row_weights(j, P, r)
        worst_c = lx[torch.arange(P), j.worst]
        smear_c = torch.einsum("pr,prn->pn", w, lx)
        mid = (lo + hi) * 0.5

        def corner(c: Tensor) -> Tensor:
            return torch.where(c > 0, hi, torch.where(c < 0, lo, mid))

        rand = torch.stack([torch.rand(n, generator=gens[p], dtype=torch.float64)
                            for p in idx.tolist()])
        starts = [corner(worst_c)[idx], corner(smear_c)[idx]] if CORNER_STARTS else []
        starts.append(lo[idx] + width[idx] * rand)
        x = torch.cat(starts)
        reg = idx.repeat(len(starts))
        lo_k, hi_k = lo[reg], hi[reg]
        cls = centre_f[reg].argmax(1)
        masks = self._sign_masks([spl[p] for p in reg.tolist()])
        step = width[reg] * 0.25
        seen = [x]
        for _ in range(self.cfg.pgd_steps):
            x = x.detach().requires_grad_(True)
            f, fc, pen = self._forward_penalty(x, masks)
            obj = self._objective(f, fc, cls) + PENALTY * pen
            g, = torch.autograd.grad(obj.sum(), x)
            x = torch.minimum(torch.maximum(x.detach() + step * g.sign(), lo_k), hi_k)
            seen.append(x)
            step = step * 0.6
        return self._check_points(torch.cat(seen))

    def _sign_masks(self, splits: list[tuple[Split, ...]]) -> dict[int, tuple[Tensor, Tensor]]:
        """Per affine layer with a constraint: the signs ``s`` of the ``z`` and the ``c``
        constraints per point ``(N, n)`` (0: none)."""
        out: dict[int, tuple[Tensor, Tensor]] = {}
        for i, sp in enumerate(splits):
            for layer, neuron, q, sign in sp:
                if layer not in out:
                    w = self.chain.layers[layer].w
                    assert w is not None
                    shape = (len(splits), int(w.shape[0]))
                    out[layer] = (torch.zeros(shape, dtype=torch.float64),
                                  torch.zeros(shape, dtype=torch.float64))
                out[layer][0 if q == "z" else 1][i, neuron] = float(sign)
        return out

    def _forward_penalty(self, x: Tensor, masks: dict[int, tuple[Tensor, Tensor]]
                         ) -> tuple[Tensor, Tensor, Tensor]:
        """Both outputs at ``x`` (differentiable) and the hinge penalty ``sum min(s q, 0)``
        (<= 0, 0 exactly where every sign constraint of the point's domain holds)."""
        z = c = x
        pen = torch.zeros(x.shape[0], dtype=torch.float64)
        for a, layer in enumerate(self.chain.layers):
            if layer.kind == "relu":
                z, c = z.clamp(min=0), c.clamp(min=0)
                continue
            assert layer.w is not None and layer.wc is not None
            assert layer.b is not None and layer.bc is not None
            z = z @ layer.w.T + layer.b
            c = c @ layer.wc.T + layer.bc
            if a in masks:
                mz, mc = masks[a]
                pen = pen + (mz * z).clamp(max=0.0).sum(1) + (mc * c).clamp(max=0.0).sum(1)
        return z, c, pen

    def _which(self, pre: Pre, layer: int, neuron: int) -> str:
        """Split ``z`` or ``c`` of the neuron: the one that can switch, or the larger
        triangle where both can."""
        t = pre[layer]
        assert t is not None
        zl, zu, cl, cu = (float(t[i, neuron]) for i in range(4))
        uz, uc = zl < 0 < zu, cl < 0 < cu
        if uz and uc:
            return "z" if -zl * zu / (zu - zl) >= -cl * cu / (cu - cl) else "c"
        return "z" if uz else "c"

    # -------------------------------------------------------------------- judge
    def _judge(self, lo: Tensor, hi: Tensor, weights: list[float], depth: list[int],
               pres: list[Pre] | None, parents: list[_Dom] | None = None,
               splits: list[tuple[Split, ...]] | None = None) -> bool:
        ub, lx, per, infeasible, centre_f, scores, j, cz, cd = self._pass(
            lo, hi, pres, parents, splits)
        r = ub.shape[1]
        P = lo.shape[0]
        self.regions += P
        if self._aimed_attack(lo, hi, centre_f, lx, j, splits):
            return True
        width = hi - lo
        sens = self._sensitivity(j, lx, width)
        rel = width / self.scale
        sens = torch.where(rel > self.cfg.min_width, sens, torch.full_like(sens, -1.0))
        sens = torch.where((sens.amax(1, keepdim=True) <= 0) & (rel > self.cfg.min_width),
                           rel, sens)
        gain_in, dim_t = sens.max(1)
        dims = dim_t.tolist()
        # an input bisection halves the dimension's radius: it removes about a quarter of
        # |coefficient| x width from the rows (gain_in); a ReLU split removes the
        # neuron's intercept from both children (best): the larger expected gain wins
        gains = (INPUT_GAIN * gain_in).tolist()
        wide = (rel.amax(1) > self.cfg.min_width).tolist()
        flat = scores.reshape(P, -1)
        best, arg = flat.max(1) if flat.shape[1] else (torch.full((P,), -1.0),
                                                        torch.zeros(P, dtype=torch.long))
        n_max = scores.shape[2] if scores.dim() == 3 else 1
        verified = j.verified.tolist()
        bounds = None if j.bound is None else j.bound.tolist()
        js = j.score.tolist()
        inf = infeasible.tolist()
        for p in range(P):
            if inf[p]:  # no input satisfies the sub-domain's constraints
                self.infeasible += 1
                self.proven_volume += weights[p]
                continue
            if verified[p]:
                self.proven_volume += weights[p]
                if bounds is not None:
                    self.bound = max(self.bound, bounds[p])
                continue
            d = _Dom(lo[p], hi[p], per[p], js[p], weights[p], depth[p], ub=ub[p].clone(),
                     rows=(None if cz is None else cz[p * r:(p + 1) * r],
                           None if cd is None else cd[p * r:(p + 1) * r]),
                     splits=() if splits is None else splits[p])
            if float(best[p]) > 0 and (float(best[p]) > gains[p] or not wide[p]):
                li, neuron = divmod(int(arg[p]), n_max)
                layer = self.relu_layers[li] - 1
                d.relu = (layer, neuron, self._which(per[p], layer, neuron))
            elif wide[p]:
                d.dim = dims[p]
            else:
                self.stuck.append(d)  # type: ignore[arg-type]
                continue
            self._push(d)  # type: ignore[arg-type]
        return False

    def _children(self, d: _Dom) -> list[tuple[Tensor, Tensor, Pre, tuple[Split, ...]]]:
        if d.relu is not None:
            layer, neuron, q = d.relu
            self.relu_splits += 1
            return [(d.lower, d.upper, _clamp(d.pre, layer, neuron, q, s),
                     d.splits + ((layer, neuron, q, s),)) for s in (1, -1)]
        self.input_splits += 1
        m = (d.lower[d.dim] + d.upper[d.dim]) * 0.5
        a_hi, b_lo = d.upper.clone(), d.lower.clone()
        a_hi[d.dim] = m
        b_lo[d.dim] = m
        return [(d.lower, a_hi, d.pre, d.splits), (b_lo, d.upper, d.pre, d.splits)]

    # ---------------------------------------------------------------------- run
    def run(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        deadline = t0 + self.cfg.timeout
        self._judge(self.dom_lo[None], self.dom_hi[None], [1.0], [0], None)
        while self.counterexample is None and self.heap:
            if time.perf_counter() >= deadline or self.regions >= self.cfg.max_regions:
                break
            npar = max(1, min(self.cfg.batch // 2, len(self.heap),
                              (self.cfg.max_regions - self.regions + 1) // 2))
            parents: list[_Dom] = [heapq.heappop(self.heap)[2]  # type: ignore[misc]
                                   for _ in range(npar)]
            self.rounds += 1
            los, his, pres, ws, depth, owner = [], [], [], [], [], []
            spl: list[tuple[Split, ...]] = []
            for d in parents:
                for lo, hi, pre, sp in self._children(d):
                    spl.append(sp)
                    los.append(lo)
                    his.append(hi)
                    pres.append(pre)
                    ws.append(d.weight * 0.5)
                    depth.append(d.depth + 1)
                    owner.append(d)
            if self._judge(torch.stack(los), torch.stack(his), ws, depth, pres, owner, spl):
                break
            if self.progress is not None:
                self.progress(self.snapshot(time.perf_counter() - t0))
        status = ("falsified" if self.counterexample is not None else
                  "verified" if not self.heap and not self.stuck else "unknown")
        out = self.snapshot(time.perf_counter() - t0)
        out.update(status=status, relu_splits=self.relu_splits,
                   input_splits=self.input_splits, infeasible=self.infeasible)
        return out


def run_relu_search(bounder: Bounder, prop: Property, lower: Tensor, upper: Tensor,
                    config: SearchConfig,
                    progress: Callable[[dict[str, Any]], None] | None = None,
                    beta_steps: int = BETA_STEPS) -> dict[str, Any]:
    """Branch-and-bound over ReLU splits of the box ``lower``/``upper`` (flat, float64)
    for a chain pair (``bounder.chain``), in the calling process: the rounds, verdict and
    counterexample depend on ``config`` alone. ``proven_fraction`` is the proven share
    of the split tree (each split halves a domain's share), not a volume. The result
    has :func:`~.search.run_search`'s keys and ``relu_splits``, ``input_splits``,
    ``infeasible`` (children proven vacuously)."""
    if bounder.chain is None:
        raise ValueError("ReLU splitting needs a chain pair (an MLP or a plain CNN)")
    return _ReluSearch(bounder, prop, lower, upper, config, progress, beta_steps).run()
