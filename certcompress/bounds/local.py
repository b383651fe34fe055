"""Local certificates: the deviation and the decision around given points.

For each point ``x_i`` and radius ``eps`` the certificate speaks about the box
``B_i = {x : ||x - x_i||_inf <= eps, domain_lower <= x <= domain_upper}`` and states,
for the exact-arithmetic functions ``f`` (original) and ``f'`` (compressed):

* ``deviation_bound[i] >= max_{x in B_i} ||f(x) - f'(x)||_1`` and per output
  ``deviation_lower[i, j] <= f_j(x) - f'_j(x) <= deviation_upper[i, j]``;
* ``decision_unchanged[i]``: for every ``x`` in ``B_i`` the compressed network's top-1
  class is ``c_i = argmax f(x_i)``, the original's class at the point (strictly: the
  certified lower bound of ``min_{j != c} f'_c(x) - f'_j(x)`` over ``B_i``, recorded as
  ``margin_lower[i]``, is positive);
* ``original_robust[i]``: the same for the original network; where both hold, the two
  networks agree on every input of ``B_i``.

Three bound-propagation runs per box (``certcompress.bounds.propagation``): the pair
``(f, f')`` propagating the difference ``d = f - f'`` (tight when the compression is
small), and each network alone (``f`` with itself, ``f'`` with itself; tight when the
ball is small, whatever the size of the compression). Every stated bound is the
tighter of the sound bounds these give; each run's bounds include the engine's
float64 rounding margin, and the combinations here are widened by a further stated
relative margin. The class at the point and the deviation at the point are evaluated
in float64 on the models themselves, and a deviation at the point above the bound
raises :class:`~certcompress.errors.SoundnessError` (naming the likely cause) instead of returning a
wrong certificate.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from .._frozen import FrozenMap, freeze
from .._io import JsonRecord, parse_json
from .._schema import validate
from .._version import provenance
from ..domain import InputDomain
from ..errors import SOUNDNESS_CAUSES, CertificateError, ConfigurationError, SoundnessError
from .numerics import UNIT_ROUNDOFF
from .propagation.device import graph_elements, graph_on, resolve_device, run_on
from .propagation.engine import capped_row_max, rows_per_chunk, sign_vector_order
from .propagation.signs import resolve_sign_rows, sign_vector_search

if TYPE_CHECKING:
    import pandas as pd

    from .propagation.engine import PairState, PropagationOptions

__all__ = ["LocalCertificate", "certify_local", "LOCAL_SCHEMA"]

LOCAL_SCHEMA = "certcompress.local-certificate/1"
#: without ``propagation``, a pair with more node elements than this gets interval
#: bounds at every ReLU input (``crown_rows_per_node=0``): CROWN rows there cost about one
#: back-substitution through the prefix each, and a few per node tighten little
#: (docs/bounds.md, "Cost at scale"); smaller pairs (MLPs, the digits CNN) get CROWN
#: bounds for every unstable neuron
LOCAL_CROWN_ELEMENTS = 100_000
#: ``sign_rows="auto"`` in a local certificate: a sign row's cost relative to the bounds
#: tier's (:func:`~.propagation.signs.resolve_sign_rows`)
LOCAL_SIGN_COST = 6



def _combine_rel(m: int) -> float:
    """Relative widening of the (already sound) engine bounds combined here: a float64
    sum of at most ``m`` terms (``m`` outputs) errs by at most ``m u / (1 - m u)`` of the
    sum of the terms' magnitudes (``u`` the unit roundoff); doubled."""
    k = m + 2
    return 2.0 * k * UNIT_ROUNDOFF / (1.0 - k * UNIT_ROUNDOFF)


@dataclass(frozen=True)
class LocalCertificate(JsonRecord):
    """Per-point certified deviation and decision around ``points`` (see the module doc).

    Arrays are tuples (one entry per point; per-output ones are tuples of tuples) so the
    certificate is an immutable, JSON-serializable value.
    """

    eps: float
    domain: str
    input_shape: tuple[int, ...]
    top_class: tuple[int, ...]
    deviation_bound: tuple[float, ...]
    deviation_lower: tuple[tuple[float, ...], ...]
    deviation_upper: tuple[tuple[float, ...], ...]
    compressed_lower: tuple[tuple[float, ...], ...]
    compressed_upper: tuple[tuple[float, ...], ...]
    margin_lower: tuple[float, ...]
    decision_unchanged: tuple[bool, ...]
    original_margin_lower: tuple[float, ...]
    original_robust: tuple[bool, ...]
    deviation_at_point: tuple[float, ...]
    output_scale: tuple[float, ...]
    method: str
    rounding: str
    seconds: float
    model_name: str = "model"
    original_digest: str = ""
    compressed_digest: str = ""
    scope: str = ""
    working_dtype: str = "float64"
    #: the versions that determined the result (read-only; ``provenance()``)
    versions: Mapping[str, str] = field(default_factory=FrozenMap)
    created_utc: str = ""
    schema: str = LOCAL_SCHEMA

    def __post_init__(self) -> None:
        object.__setattr__(self, "versions", freeze(self.versions))

    # ------------------------------------------------------------ derived
    @property
    def n_points(self) -> int:
        return len(self.deviation_bound)

    @property
    def fraction_certified(self) -> float:
        """Fraction of points whose top-1 decision is certified unchanged on the ball."""
        return float(np.mean(self.decision_unchanged)) if self.n_points else 0.0

    @property
    def vacuous(self) -> tuple[bool, ...]:
        """Per point: the deviation bound exceeds ``||f(x_i)||_1`` (the output's own l1
        size at the point), so it says nothing useful about the deviation there."""
        return tuple(b > s for b, s in zip(self.deviation_bound, self.output_scale))

    def table(self) -> pd.DataFrame:
        """One row per point."""
        import pandas as pd

        return pd.DataFrame({
            "point": np.arange(self.n_points),
            "top_class": np.asarray(self.top_class, dtype=np.int64),
            "decision_unchanged": np.asarray(self.decision_unchanged, dtype=bool),
            "margin_lower": np.asarray(self.margin_lower, dtype=np.float64),
            "original_robust": np.asarray(self.original_robust, dtype=bool),
            "deviation_bound": np.asarray(self.deviation_bound, dtype=np.float64),
            "deviation_at_point": np.asarray(self.deviation_at_point, dtype=np.float64),
            "output_scale": np.asarray(self.output_scale, dtype=np.float64),
            "vacuous": np.asarray(self.vacuous, dtype=bool),
        })

    def summary(self) -> str:
        n = self.n_points
        dev = np.asarray(self.deviation_bound)
        at = np.asarray(self.deviation_at_point)
        lines = [
            f"certcompress local certificate for {self.model_name} (input {self.input_shape}, "
            f"{n} points, l_inf radius eps = {self.eps:.6g}, domain: {self.domain})",
            f"  decision unchanged   {sum(self.decision_unchanged)}/{n} points "
            f"({100 * self.fraction_certified:.1f}%): the compressed network's top-1 class is "
            "the original's class at the point on the whole ball",
            f"  original robust      {sum(self.original_robust)}/{n} points; both (the two "
            f"networks agree on the whole ball): "
            f"{sum(a and b for a, b in zip(self.decision_unchanged, self.original_robust))}/{n}",
        ]
        if n and at.size != n:
            lines.append(f"  WARNING: {n} certified points but {at.size} measured deviations "
                         "(an inconsistent certificate file)")
        if n and at.size == n:
            lines += [
                f"  certified l1 deviation on the ball: median {np.median(dev):.4g}, max "
                f"{dev.max():.4g}; measured at the points: median {np.median(at):.4g}, max "
                f"{at.max():.4g}",
                f"  vacuous (bound > ||f(x_i)||_1): {sum(self.vacuous)}/{n} points",
            ]
        lines += [f"  method               {self.method}",
                  f"  rounding             {self.rounding}",
                  f"  time                 {self.seconds:.3g} s "
                  f"({self.seconds / max(n, 1):.3g} s per point)",
                  f"  scope                {self.scope}"]
        return "\n".join(lines)

    # ------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["versions"] = dict(self.versions)
        return d

    @classmethod
    def from_json(cls, text: str) -> LocalCertificate:
        data = parse_json(text, "the local certificate", CertificateError)
        validate(data, "local-certificate", "local certificate", CertificateError,
                 extra_fields=[f.name for f in fields(cls)])
        kw: dict[str, Any] = {}
        for k, v in data.items():
            if isinstance(v, list):
                v = tuple(tuple(e) if isinstance(e, list) else e for e in v)
            kw[k] = v
        return cls(**kw)


# ------------------------------------------------------------------ helpers
def _as_tensor(x: Any, what: str) -> Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor):
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ConfigurationError(f"{what} must be a tensor or array: {exc}") from None
    return x.detach().to(torch.float64).cpu()


def _bound_tensor(v: float | Tensor | np.ndarray | None, default: float, per: tuple[int, ...],
                  what: str) -> Tensor:
    if v is None:
        return torch.full(per, default, dtype=torch.float64)
    t = _as_tensor(v, what)
    try:
        return torch.broadcast_to(t, per).clone()
    except RuntimeError:
        raise ConfigurationError(f"{what} has shape {tuple(t.shape)}, which does not broadcast "
                                 f"to one point's shape {per}") from None


def _domain_text(lo: Tensor, hi: Tensor) -> str:
    if not (torch.isfinite(lo).any() or torch.isfinite(hi).any()):
        return "unbounded (the ball alone)"
    if bool((lo == lo.reshape(-1)[0]).all()) and bool((hi == hi.reshape(-1)[0]).all()):
        return f"box [{float(lo.reshape(-1)[0]):.6g}, {float(hi.reshape(-1)[0]):.6g}] per feature"
    return (f"per-feature box (lower in [{float(lo.min()):.6g}, {float(lo.max()):.6g}], upper "
            f"in [{float(hi.min()):.6g}, {float(hi.max()):.6g}])")


def _up(t: Tensor, mag: Tensor, rel: float) -> Tensor:
    """``t`` pushed up by the combination margin (``mag`` bounds the summed terms)."""
    return t + rel * mag + 1e-300


def _sign_rows(m: int) -> Tensor:
    """All ``2^m`` sign vectors ``(2^m, m)``."""
    k = torch.arange(2 ** m).unsqueeze(1)
    bits = (k >> torch.arange(m)) & 1
    return (1.0 - 2.0 * bits).to(torch.float64)


@dataclass
class _Runs:
    """The propagation states of one batch: the pair and each network alone."""

    pair: PairState
    orig: PairState
    comp: PairState


def _ub(state: PairState, coef: dict[str, Tensor], prob: Tensor) -> Tensor:
    from .propagation.engine import output_upper_bounds

    return output_upper_bounds(state, coef, prob)


def _sign_vector_l1(runs: _Runs, l1: Tensor, dl: Tensor, du: Tensor, m: int,
                    rel: float, budget: int | None) -> tuple[Tensor, int, bool]:
    """``min(l1, max_s ub_pair(s), max_s ub_sep(s))`` per point over the ``2^m`` sign
    vectors ``s`` (``<s, f - f'>`` bounded on the pair, and as ``f`` alone plus ``-f'``
    alone), with the rows used and whether every search was exhaustive. ``budget`` None
    or at least ``2^m``: every sign vector, and each maximum stops early once it reaches
    the bound it would tighten (``capped_row_max``: the minimum is the same), the likely
    largest rows first. Otherwise, per point, the best-first branch-and-bound over partial
    sign vectors (``sign_vector_search``, sound at any stop) within ``budget`` rows, for
    the pair and then for the separate bound (each row of which costs two)."""
    P = l1.shape[0]

    def pair_ub(r: Tensor, prob: Tensor) -> Tensor:
        return _ub(runs.pair, {"d": r}, prob)

    def sep_ub(r: Tensor, prob: Tensor) -> Tensor:
        uo, uc = _ub(runs.orig, {"z": r}, prob), _ub(runs.comp, {"z": -r}, prob)
        return _up(uo + uc, uo.abs() + uc.abs(), rel)

    def at_point(ub: Callable[[Tensor, Tensor], Tensor], r: Tensor, p: int) -> Tensor:
        return ub(r, torch.full((r.shape[0],), p))

    if budget is not None and 2 ** m > budget:
        per = torch.maximum(du, -dl).clamp(min=0.0)
        out = l1.clone()
        rows, exhaustive = 0, True
        for p in range(P):
            a = sign_vector_search(functools.partial(at_point, pair_ub, p=p), per[p],
                                   float(l1[p]), budget)
            b = sign_vector_search(functools.partial(at_point, sep_ub, p=p), per[p],
                                   min(float(l1[p]), a.value), budget)
            out[p] = min(float(l1[p]), a.value, b.value)
            rows += a.rows + 2 * b.rows
            exhaustive = exhaustive and a.exhaustive and b.exhaustive
        return out, rows, exhaustive
    s = _sign_rows(m)
    S = s.shape[0]
    srows = torch.cat([s[sign_vector_order(s, du[p], -dl[p])] for p in range(P)])
    sprob = torch.arange(P).repeat_interleave(S)
    chunk = rows_per_chunk(runs.pair.pair, runs.pair.options)
    l1_pair = capped_row_max(lambda i: pair_ub(srows[i], sprob[i]), sprob, l1, chunk)
    cap = torch.minimum(l1, l1_pair)
    l1_sep = capped_row_max(lambda i: sep_ub(srows[i], sprob[i]), sprob, cap, chunk)
    return torch.minimum(cap, l1_sep), 3 * S * P, True


def _batch(runs: _Runs, top: Tensor, m: int, sign_vectors: bool,
           sign_budget: int | None = None) -> dict[str, Tensor]:
    """Every per-point bound of one batch of ``P`` boxes (see the module doc)."""
    from .propagation.engine import output_bounds

    P = top.shape[0]
    rel = _combine_rel(m)
    eye = torch.eye(m, dtype=torch.float64)
    pm = torch.cat([eye, -eye])  # rows +e_j then -e_j
    rows = pm.repeat(P, 1)
    prob = torch.arange(P).repeat_interleave(2 * m)

    def pm_bounds(state: PairState, q: str) -> tuple[Tensor, Tensor]:
        u = _ub(state, {q: rows}, prob).reshape(P, 2, m)
        return -u[:, 1], u[:, 0]  # lower, upper

    # the pair: d directly (and its interval bounds)
    dl_p, du_p = pm_bounds(runs.pair, "d")
    ob = output_bounds(runs.pair)
    dl_p, du_p = torch.maximum(dl_p, ob.dl), torch.minimum(du_p, ob.du)
    # each network alone (a pair with itself: z is the network, d = 0)
    zl, zu = pm_bounds(runs.orig, "z")
    cl, cu = pm_bounds(runs.comp, "z")
    cl, cu = torch.maximum(cl, ob.cl), torch.minimum(cu, ob.cu)
    sep_u = _up(zu - cl, zu.abs() + cl.abs(), rel)
    sep_l = -_up(cu - zl, cu.abs() + zl.abs(), rel)
    dl, du = torch.maximum(dl_p, sep_l), torch.minimum(du_p, sep_u)
    dev_abs = torch.maximum(du, -dl).clamp(min=0.0)
    l1 = _up(dev_abs.sum(1), dev_abs.sum(1), rel)
    sign_rows, sign_exhaustive = 0, True
    if sign_vectors:
        l1, sign_rows, sign_exhaustive = _sign_vector_l1(runs, l1, dl, du, m, rel,
                                                         sign_budget)

    # decision forms: lower bounds of f'_c - f'_j and f_c - f_j, j != c
    others = torch.tensor([j for _ in range(P) for j in range(m - 1)], dtype=torch.int64)
    cls = top.repeat_interleave(m - 1)
    others = others + (others >= cls).to(torch.int64)  # skip c
    v = torch.zeros(P * (m - 1), m, dtype=torch.float64)
    ar = torch.arange(P * (m - 1))
    v[ar, cls] = 1.0
    v[ar, others] = -1.0
    dprob = torch.arange(P).repeat_interleave(m - 1)
    # compressed = z - d: upper bound of -(c_c - c_j) = <-v, z> + <v, d>
    mc_pair = -_ub(runs.pair, {"z": -v, "d": v}, dprob)
    mc_alone = -_ub(runs.comp, {"z": -v}, dprob)
    mc_int = cl[dprob, cls] - cu[dprob, others]
    margin_c = torch.maximum(torch.maximum(mc_pair, mc_alone),
                             mc_int - rel * (cl[dprob, cls].abs()
                                                      + cu[dprob, others].abs()))
    mo_pair = -_ub(runs.pair, {"z": -v}, dprob)
    mo_alone = -_ub(runs.orig, {"z": -v}, dprob)
    margin_o = torch.maximum(mo_pair, mo_alone)
    return {
        "l1": l1, "dl": dl, "du": du, "cl": cl, "cu": cu,
        "margin_c": margin_c.reshape(P, m - 1).min(1).values,
        "margin_o": margin_o.reshape(P, m - 1).min(1).values,
        "sign_rows": torch.tensor([sign_rows]),
        "sign_exhaustive": torch.tensor([sign_exhaustive]),
    }


# ------------------------------------------------------------------ entry point
def certify_local(model: nn.Module, compressed: nn.Module, points: Tensor | np.ndarray,
                  eps: float, *, domain_lower: float | Tensor | np.ndarray | None = None,
                  domain_upper: float | Tensor | np.ndarray | None = None,
                  options: PropagationOptions | None = None, batch_size: int = 16,
                  progress: bool = True, domain: InputDomain | None = None,
                  propagation: PropagationOptions | None = None) -> LocalCertificate:
    """Certify the deviation and the top-1 decision on the l_inf ball of radius ``eps``
    around each of ``points`` (``(N, *sample_shape)``; the models are traced on
    ``(1, *sample_shape)``), intersected with the box ``domain_lower <= x <=
    domain_upper`` (scalars or tensors broadcastable to one sample; None: unbounded), or
    with ``domain`` (an :class:`~certcompress.InputDomain` of shape
    ``(1, *sample_shape)``, the vocabulary of :func:`certcompress.certify`).

    ``propagation`` (or its older name ``options``) tunes the propagation (default: CROWN
    back-substitution at every ReLU, or interval bounds there for a pair with more than
    ``LOCAL_CROWN_ELEMENTS`` node elements; ``sign_vectors_up_to`` decides whether the l1
    bound also maximizes over the ``2^m`` sign vectors, ``sign_rows`` the row budget of
    that maximum, ``"auto"`` counting the three runs each sign row costs, at half the
    bounds tier's work: ``LOCAL_SIGN_COST``). ``batch_size`` boxes are propagated at
    once. The decision needs a classifier output (at least two outputs).
    """
    from ..api import trace
    from ..digest import parameter_digest
    from ..measure import float64_function
    from .propagation.engine import PropagationOptions, propagate, rounding_eta
    from .propagation.lowering import lower_pair

    eps_f = float(eps)
    if not math.isfinite(eps_f) or eps_f < 0:
        raise ConfigurationError(f"eps must be a finite number >= 0, got {eps!r}")
    if batch_size < 1:
        raise ConfigurationError(f"batch_size must be >= 1, got {batch_size}")
    for what, mod in (("model", model), ("compressed", compressed)):
        if not isinstance(mod, nn.Module):
            raise ConfigurationError(f"{what} must be a torch nn.Module, got "
                                     f"{type(mod).__name__}")
    x = _as_tensor(points, "points")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ConfigurationError(f"points must be a non-empty batch (N, *sample_shape), got "
                                 f"shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ConfigurationError("points contain NaN or infinite values")
    per = tuple(int(s) for s in x.shape[1:])
    if propagation is not None:
        if options is not None:
            raise ConfigurationError("pass either propagation or options (its older name), "
                                     "not both")
        options = propagation
    if domain is not None:
        if domain_lower is not None or domain_upper is not None:
            raise ConfigurationError("pass either domain or domain_lower/domain_upper, not both")
        if not isinstance(domain, InputDomain) or domain.shape != (1,) + per:
            raise ConfigurationError(f"domain must be an InputDomain of shape {(1,) + per} "
                                     f"(one point, batch first), got "
                                     f"{getattr(domain, 'shape', type(domain).__name__)}")
        domain_lower, domain_upper = domain.lower_tensor()[0], domain.upper_tensor()[0]
    lo_dom = _bound_tensor(domain_lower, -math.inf, per, "domain_lower")
    hi_dom = _bound_tensor(domain_upper, math.inf, per, "domain_upper")
    if bool((lo_dom > hi_dom).any()):
        raise ConfigurationError("domain_lower exceeds domain_upper for some feature")
    outside = ((x < lo_dom) | (x > hi_dom)).reshape(x.shape[0], -1).any(1).nonzero()
    if outside.numel():
        idx = outside.reshape(-1)[:5].tolist()
        raise ConfigurationError(f"{outside.numel()} point(s) lie outside the domain box "
                                 f"(first indices {idx}); clip them or widen the domain")
    shape = (1,) + per
    t0 = time.perf_counter()
    # the trace check probes the box around all points' balls (inside the domain)
    box = (torch.maximum(lo_dom, x.double().amin(0) - eps_f).unsqueeze(0),
           torch.minimum(hi_dom, x.double().amax(0) + eps_f).unsqueeze(0))
    g, g2 = trace(model, shape, domain=box), trace(compressed, shape, domain=box)
    spec = options.device if options is not None else "auto"
    dev = resolve_device(spec, graph_elements(g))
    m = g.output_size
    if m < 2:
        raise ConfigurationError("certify_local needs a classifier output (at least 2 "
                                 f"outputs), the model has {m}")
    f, fc = float64_function(model), float64_function(compressed)
    with torch.no_grad():
        fx, fcx = f(x), fc(x)
    top = fx.argmax(1)
    at_point = (fx - fcx).abs().sum(1)
    from tqdm.auto import tqdm

    def bound_all(d: torch.device) -> tuple[dict[str, Tensor], PropagationOptions, float,
                                            int | None]:
        """Every point's bounds on device ``d`` (:func:`.propagation.device.run_on`)."""
        gd, g2d = graph_on(g, d), graph_on(g2, d)
        pair, alone_o, alone_c = lower_pair(gd, g2d), lower_pair(gd, gd), lower_pair(g2d, g2d)
        elements = sum(n.numel for n in pair.nodes)
        opts = options or PropagationOptions(
            crown_rows_per_node=0 if elements > LOCAL_CROWN_ELEMENTS else None)
        # "auto": three runs per sign row (the pair, and each network alone for the
        # separate bound), at half the bounds tier's work (the per-output and decision
        # rows take the rest of a point's time): 33 rows for resnet18 at 32x32, every row
        # for the digits CNN
        budget = resolve_sign_rows(opts.sign_rows, elements, m, cost=LOCAL_SIGN_COST)
        out: dict[str, list[Tensor]] = {}
        starts = range(0, x.shape[0], batch_size)
        bar = tqdm(starts, desc=f"local certificates (eps={eps_f:g})", disable=not progress,
                   leave=False, total=len(starts), unit="batch")
        for s in bar:
            xb = x[s:s + batch_size]
            lo = torch.maximum(xb - eps_f, lo_dom).unsqueeze(1).to(d)  # (P, 1, *per)
            hi = torch.minimum(xb + eps_f, hi_dom).unsqueeze(1).to(d)
            runs = _Runs(propagate(pair, lo, hi, opts), propagate(alone_o, lo, hi, opts),
                         propagate(alone_c, lo, hi, opts))
            for k, v in _batch(runs, top[s:s + batch_size].to(d), m,
                               m <= opts.sign_vectors_up_to, budget).items():
                out.setdefault(k, []).append(v.cpu())
        return {k: torch.cat(v) for k, v in out.items()}, opts, rounding_eta(pair), budget

    (res, opts, eta, sign_budget), dev = run_on(spec, dev, bound_all)
    sign_vectors = m <= opts.sign_vectors_up_to
    seconds = time.perf_counter() - t0
    decided = res["margin_c"] > 0
    # self-checks at the points themselves (inside every ball): a failure is a bug
    # relative only (to the bound and to the outputs at the point, whose float64 rounding
    # the measurement carries): a violation of any size is caught
    rel = 1e-9
    size = fx.abs() + fcx.abs()
    bad = at_point > res["l1"] + rel * (res["l1"].abs() + size.sum(1))
    bad |= decided & (fcx.argmax(1) != top)
    bad |= ((fx - fcx) > res["du"] + rel * (res["du"].abs() + size)).any(1)
    bad |= ((fx - fcx) < res["dl"] - rel * (res["dl"].abs() + size)).any(1)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise SoundnessError(
            f"local certificate contradicted at point {i} itself (deviation "
            f"{float(at_point[i]):.17g}, bound {float(res['l1'][i]):.17g}, class "
            f"{int(top[i])}, compressed class {int(fcx[i].argmax())}). {SOUNDNESS_CAUSES}")
    dom = _domain_text(lo_dom, hi_dom)
    scope = (f"for each point x_i separately: every x with ||x - x_i||_inf <= {eps_f:.6g}"
             + ("" if dom.startswith("unbounded") else f" inside the {dom}")
             + "; exact-arithmetic outputs of the two models whose digests are recorded; "
             "worst case over that ball, nothing outside it")
    if not sign_vectors:
        l1_text = "; l1 as the sum of per-output bounds"
    elif sign_budget is None or 2 ** m <= sign_budget:
        l1_text = "; l1 also over all 2^m sign vectors"
    else:
        l1_text = (f"; l1 also by branch-and-bound over partial sign vectors, at most "
                   f"{sign_budget} rows per point and search ("
                   + ("exhaustive" if bool(res["sign_exhaustive"].all()) else "stopped by "
                      "the budget on some points: sound, looser than exhaustive") + ")")
    crown = opts.crown_rows_per_node
    budget_text = ("" if opts.intermediate != "crown" or crown is None else
                   f", at most {crown} back-substituted neurons per ReLU input and "
                   "quantity, the others with interval bounds")
    method = (f"differential bound propagation ({opts.intermediate} intermediate "
              f"bounds{budget_text}), the tighter of: the pair (f, f') with the difference "
              "propagated, and each network alone" + l1_text)
    rounding = (f"float64 (computed on {dev}); engine margin eta = {eta:.3g} x magnitude on every bound, "
                f"combinations widened by {_combine_rel(m):.3g} relative")

    def tup(t: Tensor) -> tuple[float, ...]:
        return tuple(float(v) for v in t.tolist())

    def tup2(t: Tensor) -> tuple[tuple[float, ...], ...]:
        return tuple(tuple(float(v) for v in row) for row in t.tolist())

    return LocalCertificate(
        eps=eps_f, domain=dom, input_shape=shape, top_class=tuple(int(c) for c in top),
        deviation_bound=tup(res["l1"]), deviation_lower=tup2(res["dl"]),
        deviation_upper=tup2(res["du"]), compressed_lower=tup2(res["cl"]),
        compressed_upper=tup2(res["cu"]), margin_lower=tup(res["margin_c"]),
        decision_unchanged=tuple(bool(b) for b in decided),
        original_margin_lower=tup(res["margin_o"]),
        original_robust=tuple(bool(b) for b in res["margin_o"] > 0),
        deviation_at_point=tup(at_point), output_scale=tup(fx.abs().sum(1)),
        method=method, rounding=rounding, seconds=seconds, model_name=g.model_name,
        original_digest=parameter_digest(model), compressed_digest=parameter_digest(compressed),
        scope=scope,
        **provenance(),
    )
