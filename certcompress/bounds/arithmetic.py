"""Deployed float32 arithmetic: a bound on the rounding error of a float32 evaluation.

A certificate in ``"exact"`` arithmetic bounds ``||f(x) - f'(x)||_1`` for the models
evaluated exactly. A model deployed in IEEE-754 float32 (PyTorch on CPU, onnxruntime)
computes ``F(x)`` instead. :func:`float32_error` bounds ``|F(x) - f(x)|`` elementwise over
the domain, for each model, so that ``||F(x) - F'(x)||_1 <= bound_exact + sum_o (e_o +
e'_o)`` (see docs/bounds.md, section "Arithmetic").

Error model (forward error analysis, Higham ch. 3). Every elementary float32 operation
gives ``fl(a op b) = (a op b)(1 + delta) + eta`` with ``|delta| <= u = 2^-24`` and
``|eta| <= 2^-126`` (gradual underflow, or flush-to-zero; denormals-are-zero operands are
covered too). A sum of ``n`` products computed in any order, blocked or not, with or
without fused multiply-add (which only removes roundings), is within
``gamma_n * sum |terms|`` of the exact sum, ``gamma_n = n u / (1 - n u)``. So, with
``x_hat`` the float32 input of a layer and ``e_in`` its error bound,

* affine (Linear, Conv, ConvTranspose): ``e_out = |W| e_in + gamma_n (|W| |x_hat| + |b|)
  + underflow``, ``n`` = non-zero products per output + 1 (the bias), plus 12 when a
  per-channel or scalar affine map follows (an eval-mode BatchNorm, a scalar multiply:
  the exporter or the runtime may fold it into the layer, rounding the folded weights);
* eval-mode BatchNorm: ``gamma_12 (|a| |x_hat| + |beta| + |mean| |a| + |c|)`` on top of
  ``|a| e_in`` (``a = gamma/sqrt(var+eps)``, ``c = beta - mean*a``, computed by the runtime
  in float32 in any of the usual ways);
* average pooling, means and sums: ``gamma_(K+2) L |x_hat|`` with ``K`` the window size;
  nearest interpolation and index maps are copies (no rounding); adds and scalar
  multiples: ``gamma_(2k+1) (sum |c_i| |x_hat_i| + |const|)``;
* ReLU, max-pooling, clamp: 1-Lipschitz and exact (a clamp bound that float32 cannot
  represent moves by its rounding), so the error passes through (zero where the
  pre-activation is certainly negative).

``|x_hat| <= M + e_in`` where ``M`` bounds the exact value over the domain: the interval
bounds of the bound-propagation tier (:mod:`certcompress.bounds.propagation`). If the
domain's bounds are not float32 numbers, the input cast adds ``u |x|``. A layer whose
float32 values could exceed float32's range raises :class:`NumericalRangeError`. The
error vector itself is computed in float64 and rounded upward at every node.

Not covered: Winograd or FFT convolution, TF32 or reduced-precision GPU kernels, int8
kernels, ``-ffast-math`` style reassociation of anything but sums, linear/bilinear
interpolation (refused: its weights are computed in float32 from indices).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import vmap

from ..certificate import MethodBound
from ..domain import InputDomain
from ..errors import (
    ConfigurationError,
    NumericalRangeError,
    UnsupportedModelError,
    UnsupportedNode,
)
from ..ir.graph import Graph, IRNode
from ..ir.ops import (
    AffineOp,
    CatOp,
    ChannelAffineOp,
    ClampOp,
    FixedLinearOp,
    IndexOp,
    LeakyReLUOp,
    LinearCombinationOp,
    LinearOp,
    MaxPoolOp,
    ReLUOp,
)
from .propagation.engine import PropagationOptions, propagate
from .propagation.interval import PairBounds
from .propagation.lowering import lower_pair
from .propagation.primitives import PAffine, PNode

__all__ = ["ARITHMETICS", "Float32Error", "float32_error", "check_arithmetic", "U32",
           "FLT_MAX", "gamma32", "gamma32_t", "ERROR_MODEL", "with_float32"]

ARITHMETICS = ("exact", "float32")
U32 = 2.0 ** -24
FLT_MAX = float(torch.finfo(torch.float32).max)
_ETA = 2.0 ** -126  # absolute error of one float32 operation near underflow (FTZ/DAZ too)
_BN_EXTRA = 12  # roundings a runtime may spend on a BatchNorm's a, c or on folding them
_U64 = 2.0 ** -53
ERROR_MODEL = ("IEEE float32 forward error analysis: each sum of n products in any order "
               "(FMA allowed) within gamma_n (|W||x| + |b|), gamma_n = n u/(1-n u), "
               "u = 2^-24, plus 2^-126 per operation for underflow; magnitudes |x| from "
               "interval bounds over the domain; errors propagated through |W|, ReLU and "
               "max-pooling (1-Lipschitz); direct or GEMM kernels (no Winograd/FFT, no TF32)")


def check_arithmetic(arithmetic: object) -> str:
    """A validated arithmetic name."""
    if arithmetic not in ARITHMETICS:
        raise ConfigurationError(f"arithmetic must be one of {', '.join(ARITHMETICS)}, got "
                                 f"{arithmetic!r}")
    return str(arithmetic)


def gamma32(n: float) -> float:
    """``gamma_n = n u / (1 - n u)`` for float32 (``u = 2^-24``), rounded up."""
    nu = float(n) * U32
    if nu >= 0.5:
        raise NumericalRangeError(f"a float32 sum of {n} terms: its rounding cannot be "
                                  "bounded (n u >= 1/2)")
    return nu / (1.0 - nu) * (1.0 + 4 * _U64)


def gamma32_t(n: Tensor) -> Tensor:
    """:func:`gamma32` elementwise."""
    gamma32(float(n.max()) if n.numel() else 0.0)  # range check
    nu = n.to(torch.float64) * U32
    return nu / (1.0 - nu) * (1.0 + 4 * _U64)


@dataclass(frozen=True)
class Float32Error:
    """Elementwise bounds on ``|F(x) - f(x)|`` over the domain for the original
    (``original``) and the compressed model (``compressed``), flattened outputs; ``total``
    rounds ``sum(original + compressed)`` up; ``details``: JSON scalars for the
    certificate."""

    original: tuple[float, ...]
    compressed: tuple[float, ...]
    total: float
    details: dict[str, Any] = field(default_factory=dict)

    def per_output(self) -> tuple[float, ...]:
        return tuple(_up(a + b) for a, b in zip(self.original, self.compressed))


def _up(v: float) -> float:
    return math.nextafter(v, math.inf) if v > 0 else 0.0


def _round_up(t: Tensor, terms: int) -> Tensor:
    """``t`` (non-negative, a float64 sum of at most ``terms`` non-negative products)
    pushed up past its float64 rounding."""
    k = max(1, terms) + 4
    return t * (1.0 + 2.0 * k * _U64 / (1.0 - k * _U64))


def _representable(t: Tensor) -> Tensor:
    return t.to(torch.float32).to(torch.float64) == t


def _pair_index(graph: Graph, pair_sources: list[str]) -> dict[str, int]:
    """IR node name -> index of the primitive node holding its value (the last one
    lowered from it; a ReLU folded past a max-pool shares its input's)."""
    last: dict[str, int] = {}
    for i, s in enumerate(pair_sources):
        last[s] = i
    out: dict[str, int] = {graph.input.name: 0}
    for n in graph.nodes[1:]:
        if n.name in last:
            out[n.name] = last[n.name]
        elif isinstance(n.op, ReLUOp):  # ReLU moved after the max-pool it feeds
            out[n.name] = out[n.inputs[0]]
        else:
            raise RuntimeError(f"node '{n.name}' has no lowered value")
    return out


def _nonzero_count(op: AffineOp, in_shape: tuple[int, ...], weight: Tensor) -> Tensor:
    if isinstance(op, LinearOp):  # one pass over a (possibly huge) weight matrix
        per_out = (weight != 0).sum(-1).to(torch.float64)
        return op.apply(torch.zeros(in_shape, dtype=torch.float64),
                        torch.zeros((weight.shape[0], in_shape[-1]), dtype=torch.float64),
                        per_out)
    ones = torch.ones(in_shape, dtype=torch.float64)
    return op.apply(ones, (weight != 0).to(torch.float64), None)


_COUNT_LIMIT = 1 << 16


def _window_count(op: FixedLinearOp, in_shape: tuple[int, ...], out_shape: tuple[int, ...]
                  ) -> Tensor:
    """Non-zero weights per output of a fixed linear map (its Jacobian's row counts);
    the input size when that is too large to enumerate (an upper bound)."""
    n_in = math.prod(in_shape)
    if n_in > _COUNT_LIMIT:
        return torch.full(out_shape, float(n_in), dtype=torch.float64)
    fn = vmap(lambda t: op.forward([t], None))
    count = torch.zeros(out_shape, dtype=torch.float64)
    step = max(1, (1 << 22) // n_in)
    for s in range(0, n_in, step):
        k = min(step, n_in - s)
        basis = torch.zeros((k, n_in), dtype=torch.float64)
        basis[torch.arange(k), torch.arange(s, s + k)] = 1.0
        count += (fn(basis.reshape((k,) + in_shape)) != 0).to(torch.float64).sum(0)
    return count


def _is_copy_map(op: FixedLinearOp, in_shape: tuple[int, ...]) -> bool:
    """Whether every output is a copy of one input element (nearest interpolation):
    weights summing to one per output, and outputs that are input values on a probe
    with distinct values."""
    probe = torch.rand(in_shape, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(0)) + 1.0
    ones = torch.ones(in_shape, dtype=torch.float64)
    with torch.no_grad():
        if not torch.equal(op.forward([ones], None), torch.ones_like(op.forward([ones], None))):
            return False
        out = op.forward([probe], None).reshape(-1)
    vals = torch.sort(probe.reshape(-1)).values
    pos = torch.searchsorted(vals, out).clamp(max=vals.numel() - 1)
    return bool((vals[pos] == out).all())


def _is_pooling(op: FixedLinearOp) -> bool:
    name = op.name.lower()
    return any(k in name for k in ("avgpool", "avg_pool", "adaptiveavg", "adaptive_avg",
                                   "mean", "sum"))


def _batchnorm(model: nn.Module | None, node: IRNode) -> nn.Module | None:
    if model is None or node.module is None:
        return None
    try:
        m = model.get_submodule(node.module)
    except (AttributeError, TypeError):
        return None
    return m if isinstance(m, nn.modules.batchnorm._BatchNorm) else None


def _foldable(node: IRNode) -> bool:
    """A per-channel or scalar affine map a runtime may fold into the layer before it,
    rounding the folded weights (onnxruntime's Conv+BatchNorm, Conv+Mul and MatMul+scale
    fusions, an exporter's BatchNorm folding)."""
    return isinstance(node.op, ChannelAffineOp) or (
        isinstance(node.op, LinearCombinationOp) and len(node.inputs) == 1)


def _looks_like_batchnorm(node: IRNode) -> bool:
    s = node.source.lower()
    return "batch_norm" in s or "batchnorm" in s


@dataclass
class _Walk:
    graph: Graph
    model: nn.Module | None
    bounds: list[PairBounds]
    where: dict[str, int]
    which: str  # "z" (original) or "c" (compressed)
    users: dict[str, list[IRNode]]
    nodes: tuple[PNode, ...] = ()
    #: the model's parameters are float32 already (no rounding when it is deployed)
    float32_params: bool = False
    details: dict[str, float] = field(default_factory=dict)

    def magnitude(self, name: str) -> Tensor:
        b = self.bounds[self.where[name]]
        lo, hi = (b.zl, b.zu) if self.which == "z" else (b.cl, b.cu)
        return torch.maximum(lo.abs(), hi.abs())[0]

    def interval(self, name: str) -> tuple[Tensor, Tensor]:
        b = self.bounds[self.where[name]]
        lo, hi = (b.zl, b.zu) if self.which == "z" else (b.cl, b.cu)
        return lo[0], hi[0]


def _check_range(n: IRNode, absolute: Tensor) -> None:
    m = float(absolute.max()) if absolute.numel() else 0.0
    if not m <= FLT_MAX * (1.0 - 1e-6):
        raise NumericalRangeError(
            f"float32 arithmetic: at node '{n.name}' ({n.source}) the sums of absolute terms "
            f"reach {m:.3g} over the domain, beyond float32's range ({FLT_MAX:.3g}): the "
            "float32 model may overflow to inf there; certify a smaller domain or use "
            "arithmetic='exact'")


def _affine_error(w: _Walk, n: IRNode, e_in: Tensor, m_in: Tensor) -> Tensor:
    op = n.op
    assert isinstance(op, AffineOp)
    bias = w.graph.params[n.name].bias
    pnode = w.nodes[w.where[n.name]] if w.nodes else None
    if isinstance(pnode, PAffine):  # the lowered layer holds the weights and |weights|
        weight, wabs = (pnode.w, pnode.w_abs) if w.which == "z" else (pnode.wc, pnode.wc_abs)
    else:
        weight = w.graph.params[n.name].weight
        wabs = weight.abs()
    babs = torch.zeros(n.shape, dtype=torch.float64) if bias is None else \
        op.add_bias(torch.zeros(n.shape, dtype=torch.float64), bias.abs())
    x_hat = m_in + e_in
    bn = _batchnorm(w.model, n) if isinstance(op, ChannelAffineOp) else None
    if isinstance(op, ChannelAffineOp) and bn is None and _looks_like_batchnorm(n):
        raise UnsupportedModelError(
            "float32 arithmetic: the rounding of a functional batch_norm is not modelled "
            "(its running statistics are not an nn.BatchNorm module's); use nn.BatchNorm* "
            "modules or arithmetic='exact'",
            [UnsupportedNode(n.name, type(op).__name__, n.source,
                             "functional batch_norm in float32 mode")])
    # one pass over the weights: |W| e_in, |W| |x_hat| and the row sums of |W|
    prop, absolute, row_sums = op.apply_many([e_in, x_hat, torch.ones_like(x_hat)], wabs)
    absolute = absolute + babs
    _check_range(n, absolute)
    if bn is not None:
        assert bn.running_mean is not None
        mean = torch.as_tensor(bn.running_mean).detach().to(torch.float64).abs()
        beta = torch.zeros_like(mean) if bn.bias is None else \
            torch.as_tensor(bn.bias).detach().to(torch.float64).abs()
        extra = op.add_bias(torch.zeros(n.shape, dtype=torch.float64), beta + mean * wabs)
        g = gamma32(float(_BN_EXTRA))
        rounding = g * (absolute + extra)
        count = torch.full(n.shape, 2.0, dtype=torch.float64)
    else:
        count = _nonzero_count(op, tuple(x_hat.shape), weight) + (0.0 if bias is None else 1.0)
        if not w.float32_params and not (
                bool(_representable(weight).all())
                and (bias is None or bool(_representable(bias).all()))):
            count = count + 2.0  # the runtime rounds the parameters to float32 first
        if any(_foldable(u) for u in w.users.get(n.name, [])):
            count = count + _BN_EXTRA  # a runtime may fold that map into this layer
        rounding = gamma32_t(count) * absolute
    # underflow: 2^-126 per operation, and denormals-are-zero on weights and inputs
    under = _ETA * (4.0 * (count + 1.0) + row_sums)
    sub = (wabs > 0) & (wabs < 2.0 ** -126)
    if bool(sub.any()):
        under = under + op.apply(x_hat, wabs * sub, None)
    grow = 1.0 + gamma32(float(count.max()) + 1.0)
    w.details["max_terms"] = max(w.details.get("max_terms", 0.0), float(count.max()))
    return _round_up(prop + rounding + under * grow, int(count.max()) + 4)


def _node_error(w: _Walk, n: IRNode, errs: dict[str, Tensor], mags: dict[str, Tensor]
                ) -> Tensor:
    op = n.op
    e_ins = [errs[i] for i in n.inputs]
    m_ins = [mags[i] for i in n.inputs]
    if isinstance(op, AffineOp):
        return _affine_error(w, n, e_ins[0], m_ins[0])
    if isinstance(op, ReLUOp):
        # exact in float32 and 1-Lipschitz; where the input is certainly negative (even
        # with its error) the float32 output is exactly 0 too
        _, hi = w.interval(n.inputs[0])
        dead = (hi + e_ins[0]) < 0
        return torch.where(dead, torch.zeros_like(e_ins[0]), e_ins[0])
    if isinstance(op, MaxPoolOp):
        return op.forward([e_ins[0]], None)
    if isinstance(op, (IndexOp, CatOp)):
        return op.forward(e_ins, None)
    if isinstance(op, ClampOp):
        shift = 0.0
        for v in (op.lower, op.upper):
            if v is not None:
                shift = max(shift, abs(float(torch.tensor(v, dtype=torch.float32)) - v))
        return _round_up(e_ins[0] + shift, 2)
    if isinstance(op, LeakyReLUOp):
        s = abs(float(op.negative_slope))
        x_hat = m_ins[0] + e_ins[0]
        out = max(1.0, s) * e_ins[0] + gamma32(2.0) * s * x_hat + 2 * _ETA
        return _round_up(out, 3)
    if isinstance(op, LinearCombinationOp):
        k = len(op.coefficients) + (1 if op.const != 0.0 else 0)
        absolute = op.magnitude([m + e for m, e in zip(m_ins, e_ins)], None, True)
        _check_range(n, absolute)
        prop = op.magnitude(e_ins, None, False)
        return _round_up(prop + gamma32(2.0 * k + 1.0) * absolute + _ETA * (4 * k + 4),
                         2 * k + 2)
    if isinstance(op, FixedLinearOp):
        in_shape = tuple(e_ins[0].shape)
        if _is_copy_map(op, in_shape):
            return op.forward([e_ins[0]], None)
        if not _is_pooling(op):
            raise UnsupportedModelError(
                "float32 arithmetic: the rounding of this fixed linear map is not modelled "
                "(interpolation weights are computed in float32 from indices); use "
                "nearest interpolation or arithmetic='exact'",
                [UnsupportedNode(n.name, op.describe(), n.source, "float32 rounding not "
                                                                   "modelled")])
        count = _window_count(op, in_shape, tuple(n.shape))
        x_hat = m_ins[0] + e_ins[0]
        absolute = op.forward([x_hat], None)
        _check_range(n, absolute)
        prop = op.forward([e_ins[0]], None)
        out = prop + gamma32_t(count + 2.0) * absolute + _ETA * (4.0 * count + 8.0)
        return _round_up(out, int(count.max()) + 2)
    raise UnsupportedModelError(
        "float32 arithmetic: no rounding model for this op kind; use arithmetic='exact'",
        [UnsupportedNode(n.name, type(op).__name__, n.source, "float32 rounding not "
                                                             "modelled")])


def _graph_error(w: _Walk, e0: Tensor) -> Tensor:
    g = w.graph
    errs: dict[str, Tensor] = {g.input.name: e0}
    mags: dict[str, Tensor] = {g.input.name: w.magnitude(g.input.name)}
    with torch.no_grad():
        for n in g.nodes[1:]:
            e = _node_error(w, n, errs, mags)
            if not bool(torch.isfinite(e).all()):
                raise NumericalRangeError(f"float32 arithmetic: the error bound at node "
                                          f"'{n.name}' overflows float64")
            errs[n.name] = e
            mags[n.name] = w.magnitude(n.name)
            _check_range(n, mags[n.name] + e)
    # the bounds tier's output order: each output node flattened, concatenated
    return torch.cat([errs[o].reshape(-1) for o in g.outputs])


def _users(graph: Graph) -> dict[str, list[IRNode]]:
    out: dict[str, list[IRNode]] = {}
    for n in graph.nodes:
        for i in n.inputs:
            out.setdefault(i, []).append(n)
    return out


def float32_error(graph: Graph, other: Graph, domain: InputDomain, *,
                  model: nn.Module | None = None, compressed: nn.Module | None = None,
                  options: PropagationOptions | None = None) -> Float32Error:
    """Elementwise bounds on the float32 evaluation error of both models over ``domain``.

    ``graph`` and ``other`` are traced **without** BatchNorm folding
    (``trace(..., fold_bn=False)``: the layers as the runtime executes them); ``model`` and
    ``compressed`` are the modules (for BatchNorm statistics). Interval bounds come from
    the bound-propagation tier (``options``; default interval propagation, cheap);
    a model it cannot lower raises :class:`UnsupportedModelError` (float32 mode needs
    them: there is no magnitude to bound the rounding with otherwise).
    """
    opts = options or PropagationOptions(intermediate="interval")
    try:
        pair = lower_pair(graph, other)
    except UnsupportedModelError as exc:
        raise UnsupportedModelError(
            "float32 arithmetic needs the bound-propagation tier's interval bounds on every "
            "node, and it cannot lower this model; use arithmetic='exact'",
            exc.offenders) from exc
    lower = domain.lower_tensor().unsqueeze(0).to(torch.float64)
    upper = domain.upper_tensor().unsqueeze(0).to(torch.float64)
    state = propagate(pair, lower, upper, opts)
    where = _pair_index(graph, [p.source for p in pair.nodes])
    users = _users(graph)
    lo, hi = lower[0], upper[0]
    exact_in = _representable(lo) & _representable(hi)
    mag_in = torch.maximum(lo.abs(), hi.abs())
    e0 = torch.where(exact_in, torch.zeros_like(mag_in), mag_in * U32 + 2.0 ** -149)
    _check_range(graph.input, mag_in + e0)
    out: list[tuple[float, ...]] = []
    details: dict[str, Any] = {}
    for g, m, which in ((graph, model, "z"), (other, compressed, "c")):
        f32 = m is not None and all(t.dtype == torch.float32 for t in
                                    [*m.parameters(), *m.buffers()] if t.is_floating_point())
        w = _Walk(g, m, state.bounds, where, which, users, pair.nodes, f32)
        e = _graph_error(w, e0)
        out.append(tuple(float(v) for v in e))
        details["max_terms"] = max(details.get("max_terms", 0.0),
                                   w.details.get("max_terms", 0.0))
    total = 0.0
    for a, b in zip(*out):
        total += a + b
    n_out = len(out[0])
    total = _up(total * (1.0 + 2.0 * (2 * n_out + 4) * _U64))
    details.update(error_original=_up(sum(out[0])), error_compressed=_up(sum(out[1])),
                   input_cast=not bool(exact_in.all()), intervals=opts.intermediate,
                   model=ERROR_MODEL)
    return Float32Error(original=out[0], compressed=out[1], total=total, details=details)


def with_float32(tier: MethodBound, err: Float32Error) -> MethodBound:
    """``tier``'s bound for the models evaluated in float32: the exact bound plus both
    models' rounding errors (per output, and summed for the l1 bound), rounded up."""
    per = tuple(_up(p + e) for p, e in zip(tier.per_output, err.per_output()))
    details = dict(tier.details)
    details.update(arithmetic="float32", bound_exact=tier.bound,
                   float32_error=err.total, float32_error_original=err.details.get(
                       "error_original"), float32_error_compressed=err.details.get(
                       "error_compressed"))
    return replace(tier, bound=_up(tier.bound + err.total), per_output=per, exact=False,
                   details=details)
