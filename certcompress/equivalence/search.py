"""Branch-and-bound over input splitting: prove a property of the pair region by region,
or find an input where it fails.

The frontier holds the open regions, worst first (by how far the region's certified
bound is from proving the property). Each round takes up to ``batch`` regions (half as
many parents, each split in two), bounds all of them in one differential pass
(:mod:`.chain` for chain networks, the general engine otherwise), and looks for a
counterexample in each: its centre, random points, and a few projected sign-gradient
steps on the worst ones (while the next round is bounded, so a parallel worker does not
wait for it). A violation, re-checked in float64 on the lowered pair and
inside the domain, ends the search ("falsified"); an empty frontier proves the
property ("verified"); the region or time budget ends it with "unknown".

The split dimension of a region maximizes ``|coefficient of x_i| * width_i`` (a form's
sensitivity to that input times the input's range) summed over the bounded forms, each
weighted by how far its bound is above what proving the region needs (smear over the
unproven outputs; ``split="worst"``: the worst form alone; the widest normalized
dimension when the pass gives no coefficients).

Parallel: the rounds are the same whatever runs them; only the bounding of a round's
regions is handed out, in chunks whose sizes depend on the round's size and ``chunk``
alone (:func:`chunk_size`), so the verdict and the proven regions do not depend on the
number of workers.
"""

from __future__ import annotations

import functools
import heapq
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..bounds.propagation.engine import PropagationOptions, output_upper_bounds, propagate
from ..bounds.propagation.evaluate import pair_outputs
from ..bounds.propagation.primitives import PairNet
from .chain import ChainPair, ChainState, chain_from_pair
from .properties import ConfidenceProperty, Judgement, Property, Top1Property

__all__ = ["SearchConfig", "Bounder", "run_search", "bound_chunk", "chunk_size"]


@dataclass(frozen=True)
class SearchConfig:
    timeout: float = 60.0
    max_regions: int = 200_000
    batch: int = 256
    chunk: int = 128
    samples: int = 2
    pgd_regions: int = 8
    pgd_steps: int = 6
    seed: int = 0
    min_width: float = 1e-9
    intermediate: str = "crown"
    # intersect each region's layer bounds with its parent's (valid: the parent's box
    # contains the child's): neurons the parent proved stable get no back-substitution
    # rows. With the padded row layout (chain.LAYOUTS) measured on the ACAS-like table
    # pairs: 1.5x the regions per CPU second at the same bound per region
    # (docs/equivalence.md)
    reuse_bounds: bool = True
    # split candidates per region (the most sensitive dimensions): above 1, strong
    # branching bounds both halves for each and splits where the worse half is best
    strong_dims: int = 1
    # split heuristic (see _Search._sensitivity): "smear" (rows weighted by their excess)
    # or "worst" (the worst row only); measured on the ACAS-like benchmark, smear needs
    # up to 70x fewer regions on hard instances
    split: str = "smear"


# a round is cut in at least SPLIT_ROUND chunks of at least MIN_CHUNK regions (at most
# ``chunk``): the first rounds (2, 4, ... 128 regions) are otherwise one chunk each, which
# one worker bounds while the others wait. A function of the round's size only, never of
# the number of workers, so the chunks, and the verdict, are the same on every executor
SPLIT_ROUND = 4
MIN_CHUNK = 16


def chunk_size(regions: int, chunk: int) -> int:
    """Regions per chunk in a round of ``regions`` (see :data:`SPLIT_ROUND`)."""
    return max(1, min(chunk, max(MIN_CHUNK, -(-regions // SPLIT_ROUND))))


Pre = list[Tensor | None]
Result = tuple[Tensor, Tensor | None, Pre | None]
Job = tuple[Tensor, Tensor, Tensor | None, Tensor | None, int, Pre | None]


def bound_chunk(chain: ChainPair, lower: Tensor, upper: Tensor, cz: Tensor | None,
                cd: Tensor | None, r: int, prior: Pre | None = None,
                intermediate: str = "crown", optimize: int = 0, relaxation: str = "choose"
                ) -> tuple[Tensor, Tensor, Pre]:
    """Upper bounds ``(P, r)`` of the rows and their input coefficients ``(P, r, n)``
    for the regions ``lower``/``upper`` (``(P, n)``), one chain pass (a worker's task).
    ``intermediate``: see :class:`~.chain.ChainState` (the compressed network's own
    pre-activation bounds come from ``c = z - d``, not from rows of their own). ``prior``:
    the parents' layer bounds (valid on these sub-boxes, intersected); the layer bounds
    are returned for the children. ``optimize``: gradient steps on the output rows' ReLU
    slopes (:meth:`~.chain.ChainState.optimized_backsubstitute`; 0: default slopes).
    ``relaxation``: of the ReLU pairs (:data:`~.chain.RELAXATIONS`)."""
    with torch.no_grad():
        P = lower.shape[0]
        state = ChainState(chain, lower, upper, intermediate=intermediate,
                           quantities=("z", "d"), prior=prior, relaxation=relaxation)
        prob = torch.arange(P).repeat_interleave(r)
        ub, lx = state.upper_bounds(cz, cd, prob, optimize=optimize)
    return ub.reshape(P, r), lx.reshape(P, r, -1), state.pre_bounds()


class Bounder:
    """Bounds rows of the pair's outputs over many regions at once."""

    def __init__(self, pair: PairNet, options: PropagationOptions | None = None,
                 intermediate: str = "crown", optimize: int = 0, relaxation: str = "choose"
                 ) -> None:
        self.pair = pair
        self.intermediate = intermediate
        self.optimize = optimize
        self.relaxation = relaxation
        self.chain = chain_from_pair(pair)
        self.options = options or PropagationOptions(intermediate="interval")
        self.input_shape = tuple(pair.input_shape)

    @property
    def method(self) -> str:
        opt = f", {self.optimize} slope-optimization steps" if self.optimize else ""
        return (f"chain ({self.intermediate} intermediate bounds, output back-substitution"
                f"{opt})"
                if self.chain is not None else f"engine ({self.options.intermediate})")

    def bound(self, lower: Tensor, upper: Tensor, cz: Tensor | None, cd: Tensor | None,
              r: int, prior: Pre | None = None) -> Result:
        if self.chain is not None:
            return bound_chunk(self.chain, lower, upper, cz, cd, r, prior, self.intermediate,
                               self.optimize, self.relaxation)
        P = lower.shape[0]
        shape = (P,) + self.input_shape
        state = propagate(self.pair, lower.reshape(shape), upper.reshape(shape), self.options)
        coef: dict[str, Tensor] = {}
        if cz is not None:
            coef["z"] = cz
        if cd is not None:
            coef["d"] = cd
        prob = torch.arange(P).repeat_interleave(r)
        return output_upper_bounds(state, coef, prob).reshape(P, r), None, None

    def outputs(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Both networks' outputs in float64 at flat inputs ``(N, n)``."""
        if self.chain is not None:
            return self.chain.forward(x)
        return pair_outputs(self.pair, x.reshape((x.shape[0],) + self.input_shape))


@dataclass
class _Region:
    lower: Tensor
    upper: Tensor
    score: float
    volume: float
    depth: int
    split_dim: int = -1
    pre: Pre | None = None
    candidates: list[int] = field(default_factory=list)
    halves: tuple[Tensor, Tensor | None, list[Pre | None], Tensor] | None = None


# bounds a round's jobs, results in the jobs' order; ``side`` (when given) runs in the
# calling process meanwhile (the previous round's counterexample search)
BoundFn = Callable[[list[Job], Callable[[], object] | None], Iterator[Result]]


def _serial_map(bounder: Bounder) -> BoundFn:
    def run(jobs: list[Job], side: Callable[[], object] | None = None) -> Iterator[Result]:
        if side is not None:
            side()
        for lo, hi, cz, cd, r, prior in jobs:
            yield bounder.bound(lo, hi, cz, cd, r, prior)
    return run


def _stack_pre(pres: list[Pre | None]) -> Pre | None:
    if not pres or any(p is None for p in pres):
        return None
    out: Pre = []
    for k in range(len(pres[0] or [])):
        parts = [p[k] for p in pres if p is not None]
        out.append(None if any(t is None for t in parts) else
                   torch.stack([t for t in parts if t is not None]))
    return out


class _Search:
    def __init__(self, bounder: Bounder, prop: Property, lower: Tensor, upper: Tensor,
                 config: SearchConfig, bound_map: BoundFn | None,
                 progress: Callable[[dict[str, Any]], None] | None) -> None:
        self.b = bounder
        self.prop = prop
        self.dom_lo = lower
        self.dom_hi = upper
        self.cfg = config
        self.map = bound_map or _serial_map(bounder)
        self.progress = progress
        width = upper - lower
        self.active = width > 0
        self.scale = torch.where(self.active, width, torch.ones_like(width))
        self.gen = torch.Generator().manual_seed(config.seed)
        self.heap: list[tuple[float, int, _Region]] = []
        self.tick = 0
        self.regions = 0
        self.bounded = 0
        self.proven_volume = 0.0
        self.bound = -math.inf  # max certified bound over proven leaves
        self.found: float | None = None
        self.stuck: list[_Region] = []
        self.counterexample: Tensor | None = None
        # the last judged batch's counterexample search, run alongside the next bounding
        self.pending: Callable[[], object] | None = None
        self.rounds = 0

    # ------------------------------------------------------------------ helpers
    def _push(self, reg: _Region) -> None:
        self.tick += 1
        heapq.heappush(self.heap, (-reg.score, self.tick, reg))

    def _centre_outputs(self, lo: Tensor, hi: Tensor) -> Tensor:
        f, _ = self.b.outputs((lo + hi) * 0.5)
        return f

    def _check_points(self, x: Tensor) -> bool:
        """Evaluate candidate inputs; a float64-confirmed violation inside the domain
        ends the search."""
        if x.shape[0] == 0:
            return False
        x = torch.minimum(torch.maximum(x, self.dom_lo), self.dom_hi)
        with torch.no_grad():
            f, fc = self.b.outputs(x)
            dev = self.prop.deviation(f, fc)
            if dev is not None:
                v = float(dev.max())
                self.found = v if self.found is None else max(self.found, v)
            viol = self.prop.violation(f, fc)
        if bool((viol > 0).any()):
            k = int(viol.argmax())
            cand = x[k:k + 1]
            # re-check on the lowered pair (exact float64 evaluation of both models)
            zf, zc = pair_outputs(self.b.pair, cand.reshape((1,) + self.b.input_shape))
            if float(self.prop.violation(zf, zc)[0]) > 0 and \
                    bool(((cand >= self.dom_lo) & (cand <= self.dom_hi)).all()):
                self.counterexample = cand[0].clone()
                return True
        return False

    def _attack(self, lo: Tensor, hi: Tensor, centre_f: Tensor) -> bool:
        """Centre, random points, then sign-gradient ascent on the worst regions."""
        P, n = lo.shape
        pts = [(lo + hi) * 0.5]
        for _ in range(self.cfg.samples):
            u = torch.rand((P, n), generator=self.gen, dtype=torch.float64)
            pts.append(lo + (hi - lo) * u)
        if self._check_points(torch.cat(pts)):
            return True
        if self.b.chain is None or self.cfg.pgd_steps <= 0:
            return False
        k = min(self.cfg.pgd_regions, P)
        lo_k, hi_k = lo[:k], hi[:k]
        cls = centre_f[:k].argmax(1)
        u = torch.rand((k, n), generator=self.gen, dtype=torch.float64)
        x = lo_k + (hi_k - lo_k) * u
        step = (hi_k - lo_k) * 0.25
        chain = self.b.chain
        for _ in range(self.cfg.pgd_steps):
            x = x.detach().requires_grad_(True)
            f, fc = chain.forward(x)
            obj = self._objective(f, fc, cls)
            g, = torch.autograd.grad(obj.sum(), x)
            x = torch.minimum(torch.maximum(x.detach() + step * g.sign(), lo_k), hi_k)
            step = step * 0.6
        return self._check_points(x.detach())

    def _objective(self, f: Tensor, fc: Tensor, cls: Tensor) -> Tensor:
        """The attack's smooth objective per point (positive at violations): the
        property's own (top-1: the margin of the class ``cls`` the region's centre
        predicts), else its violation."""
        if isinstance(self.prop, (Top1Property, ConfidenceProperty)):
            return self.prop.objective(f, fc, cls)
        return self.prop.violation(f, fc)

    def _bound(self, lo: Tensor, hi: Tensor, pres: list[Pre | None] | None = None
               ) -> tuple[Tensor, Tensor | None, list[Pre | None], Tensor]:
        """One differential pass over a batch: ``(ub (P, r), input coefficients or None,
        the regions' layer bounds, the original's output at the centres)``."""
        P = lo.shape[0]
        self.bounded += P
        centre_f = self._centre_outputs(lo, hi)
        cz, cd, r = self.prop.rows(centre_f)
        jobs = []
        size = chunk_size(P, self.cfg.chunk)
        for s in range(0, P, size):
            sl = slice(s, s + size)
            rs = slice(s * r, min(P, s + size) * r)
            prior = None if pres is None or not self.cfg.reuse_bounds else \
                _stack_pre(pres[sl])
            jobs.append((lo[sl], hi[sl], None if cz is None else cz[rs],
                         None if cd is None else cd[rs], r, prior))
        ubs, lxs = [], []
        child_pre: list[Pre | None] = []
        side, self.pending = self.pending, None
        for ub, lx, pre in self.map(jobs, side):
            ubs.append(ub)
            lxs.append(lx)
            n = ub.shape[0]
            if pre is None:
                child_pre += [None] * n
            else:  # per region views (unbind: one call per layer, not per region)
                cols = [[None] * n if t is None else t.unbind(0) for t in pre]
                child_pre += [list(q) for q in zip(*cols)] if cols else [[] for _ in range(n)]
        ub = torch.cat(ubs)
        lx = None if any(t is None for t in lxs) else torch.cat(lxs)  # type: ignore[arg-type]
        return ub, lx, child_pre, centre_f

    def _evaluate(self, lo: Tensor, hi: Tensor, depth: list[int],
                  pres: list[Pre | None] | None = None,
                  bounded: tuple[Tensor, Tensor | None, list[Pre | None], Tensor] | None = None
                  ) -> bool:
        """Bound (unless ``bounded`` already holds :meth:`_bound`'s result) and judge a
        batch, push what stays open, and leave its counterexample search in
        :attr:`pending`: the next bounding runs it alongside (in the calling process while
        parallel workers bound), :meth:`run` runs the last one. True when falsified (by
        the previous batch's search, run while this batch was bounded)."""
        P = lo.shape[0]
        ub, lx, child_pre, centre_f = bounded if bounded is not None else \
            self._bound(lo, hi, pres)
        if self.counterexample is not None:
            return True
        self.regions += P
        j = self.prop.judge(ub, centre_f)
        order = torch.argsort(j.score, descending=True)
        self.pending = functools.partial(self._attack, lo[order], hi[order], centre_f[order])
        sens_all = None if lx is None else self._sensitivity(j, lx, hi - lo)
        # per region, as whole-batch tensor operations (this runs in the caller while
        # parallel workers wait for the next round)
        width = (hi - lo) / self.scale
        act = width[:, self.active]
        vols = act.prod(1).tolist() if act.shape[1] else [1.0] * P
        wide = (width.amax(1) > self.cfg.min_width).tolist()
        sens = width if sens_all is None else \
            torch.where(sens_all.amax(1, keepdim=True) <= 0, width, sens_all)
        # candidates for the split: splittable dimensions, most sensitive first
        sens = torch.where(width > self.cfg.min_width, sens, torch.full_like(sens, -1.0))
        ks = (sens >= 0).sum(1).clamp(min=1, max=self.cfg.strong_dims).tolist()
        top = torch.argsort(sens, dim=1, descending=True, stable=True)[
            :, :self.cfg.strong_dims].tolist()
        verified = j.verified.tolist()
        scores = j.score.tolist()
        bounds = None if j.bound is None else j.bound.tolist()
        for p in range(P):
            if verified[p]:
                self.proven_volume += vols[p]
                if bounds is not None:
                    self.bound = max(self.bound, bounds[p])
                continue
            reg = _Region(lo[p], hi[p], scores[p], vols[p], depth[p], pre=child_pre[p])
            if not wide[p]:
                self.stuck.append(reg)
                continue
            reg.candidates = top[p][:ks[p]]
            reg.split_dim = reg.candidates[0]
            self._push(reg)
        return False

    def _sensitivity(self, j: Judgement, lx: Tensor, width: Tensor) -> Tensor:
        """``(P, n)``: the split score of each input dimension of each region, ``|input
        coefficient| * width`` of the bounded rows; ``"smear"`` sums it over the rows
        weighted by how far each is above what proving needs (``j.excess``), so a
        dimension that several unproven outputs depend on wins; ``"worst"`` (or a
        property without row weights) reads the worst row alone."""
        P = lx.shape[0]
        if self.cfg.split == "smear" and j.excess is not None:
            ex = j.excess
            # a proven-looking region still open (rounding): weigh its worst row
            none = ex.sum(1) <= 0
            if bool(none.any()):
                top = torch.zeros_like(ex)
                top[torch.arange(P), j.worst] = 1.0
                ex = torch.where(none[:, None], top, ex)
            return torch.einsum("pr,prn->pn", ex, lx.abs()) * width
        return lx[torch.arange(P), j.worst].abs() * width

    @staticmethod
    def _halves(reg: _Region, d: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        m = (reg.lower[d] + reg.upper[d]) * 0.5
        a_hi = reg.upper.clone()
        a_hi[d] = m
        b_lo = reg.lower.clone()
        b_lo[d] = m
        return reg.lower, a_hi, b_lo, reg.upper

    def _choose_splits(self, parents: list[_Region]) -> None:
        """Strong branching: bound both halves for every candidate dimension of every
        parent (one batch) and set each parent's ``split_dim`` to the candidate whose
        worse half has the smallest score (ties: the smaller sum); the chosen halves'
        bounds are kept in ``parent.halves`` so they are not bounded again."""
        los, his, owners = [], [], []
        for i, reg in enumerate(parents):
            if len(reg.candidates) < 2:
                continue
            for d in reg.candidates:
                a_lo, a_hi, b_lo, b_hi = self._halves(reg, d)
                los += [a_lo, b_lo]
                his += [a_hi, b_hi]
                owners.append((i, d))
        if not owners:
            return
        lo, hi = torch.stack(los), torch.stack(his)
        pres: list[Pre | None] = []
        for i, _ in owners:
            pres += [parents[i].pre, parents[i].pre]
        ub, lx, pre, centre_f = self._bound(lo, hi, pres)
        score = self.prop.judge(ub, centre_f).score.reshape(-1, 2)
        key = score.amax(1)
        best: dict[int, tuple[float, float, int]] = {}
        for q, (i, _) in enumerate(owners):
            cand = (float(key[q]), float(score[q].sum()), q)
            if i not in best or cand[:2] < best[i][:2]:
                best[i] = cand
        for i, (_, _, q) in best.items():
            reg = parents[i]
            reg.split_dim = owners[q][1]
            sl = slice(2 * q, 2 * q + 2)
            reg.halves = (ub[sl], None if lx is None else lx[sl], pre[2 * q:2 * q + 2],
                          centre_f[sl])

    def _open_bound(self) -> float:
        """The largest certified bound over open regions (``-inf`` when none)."""
        vals = [-s for s, _, _ in self.heap] + [r.score for r in self.stuck]
        return max(vals) if vals else -math.inf

    # ---------------------------------------------------------------------- run
    def run(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        deadline = t0 + self.cfg.timeout
        lo0, hi0 = self.dom_lo[None], self.dom_hi[None]
        self._evaluate(lo0, hi0, [0])
        while self.counterexample is None and self.heap:
            if time.perf_counter() >= deadline or self.regions >= self.cfg.max_regions:
                break
            npar = max(1, min(self.cfg.batch // 2, len(self.heap),
                              (self.cfg.max_regions - self.regions + 1) // 2))
            parents = [heapq.heappop(self.heap)[2] for _ in range(npar)]
            if self.cfg.strong_dims > 1:
                self._choose_splits(parents)
            self.rounds += 1
            # parents whose halves were bounded while choosing the split, then the others
            for pre_bounded in (True, False):
                group = [reg for reg in parents if (reg.halves is not None) == pre_bounded]
                if not group:
                    continue
                los, his, depth = [], [], []
                pres: list[Pre | None] = []
                for reg in group:
                    a_lo, a_hi, b_lo, b_hi = self._halves(reg, reg.split_dim)
                    los += [a_lo, b_lo]
                    his += [a_hi, b_hi]
                    depth += [reg.depth + 1] * 2
                    pres += [reg.pre, reg.pre]
                bounded = None
                if pre_bounded:
                    hv = [reg.halves for reg in group if reg.halves is not None]
                    lxs = [h[1] for h in hv]
                    bounded = (torch.cat([h[0] for h in hv]),
                               None if any(t is None for t in lxs)
                               else torch.cat(lxs),  # type: ignore[arg-type]
                               [p for h in hv for p in h[2]],
                               torch.cat([h[3] for h in hv]))
                if self._evaluate(torch.stack(los), torch.stack(his), depth, pres,
                                  bounded):
                    break
            if self.progress is not None:
                self.progress(self.snapshot(time.perf_counter() - t0))
        if self.counterexample is None and self.pending is not None:
            side, self.pending = self.pending, None  # the last batch's search
            side()
        status = ("falsified" if self.counterexample is not None else
                  "verified" if not self.heap and not self.stuck else "unknown")
        seconds = time.perf_counter() - t0
        out = self.snapshot(seconds)
        out["status"] = status
        return out

    def snapshot(self, seconds: float) -> dict[str, Any]:
        open_b = self._open_bound()
        return {"regions": self.regions, "open": len(self.heap) + len(self.stuck),
                "proven_fraction": min(1.0, self.proven_volume), "seconds": seconds,
                "bound_proven": self.bound, "score_open": open_b, "found": self.found,
                "counterexample": self.counterexample, "rounds": self.rounds, "bounded": self.bounded,
                "stuck": len(self.stuck)}


def run_search(bounder: Bounder, prop: Property, lower: Tensor, upper: Tensor,
               config: SearchConfig, bound_map: BoundFn | None = None,
               progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run the branch-and-bound over the box ``lower``/``upper`` (flat, float64)."""
    return _Search(bounder, prop, lower, upper, config, bound_map, progress).run()
