"""Lowering: every IR op kind, once, rewritten exactly into primitive nodes.

=====================  ==========================================================
IR op                  primitives
=====================  ==========================================================
``AffineOp``           one ``PAffine`` (original and compressed parameters)
``ReLUOp``             one ``PReLU``
``LeakyReLUOp(s)``     ``s z + (1 - s) ReLU(z)`` (exact for every slope ``s``)
``ClampOp(lo, hi)``    ``lo + ReLU(z - lo) - ReLU(z - hi)``; ``lo + ReLU(z - lo)``;
                       ``hi - ReLU(hi - z)`` (ReLU6, Hardtanh)
``MaxPoolOp``          a gather of every window (``PLinear``, padding and ``ceil_mode``
                       as ``max_pool`` uses them), then ``max(a, b) = b + ReLU(a - b)``
                       over pairs, level by level
``FixedLinearOp``      one ``PLinear`` (average pooling, means, interpolation)
``IndexOp``            one ``PLinear`` (reshapes, slices, padding copies)
``LinearCombinationOp``  one ``PLinear`` with its constant
``CatOp``              one ``PLinear``
``ActQuantOp``         clipping exactly (``lo + ReLU(z - lo) - ReLU(lo - z)`` in a
                       network that does not quantize, ``lo + ReLU(z - lo) -
                       ReLU(z - hi)`` in one that does: a ``PAffine`` selects), then a
                       ``PPerturb`` of ``|e| <= scale / 2 + slack`` (the rounding)
=====================  ==========================================================

The table is an explicit dict (:data:`LOWERINGS`) looked up along the op type's MRO; an
op kind without an entry (from a plugin) is refused with every such node listed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import UnsupportedModelError, UnsupportedNode
from ...ir.graph import Graph, IRNode
from ...ir.ops import (
    ActQuantOp,
    AffineOp,
    AffineParams,
    CatOp,
    ClampOp,
    FixedLinearOp,
    IndexOp,
    IROp,
    LeakyReLUOp,
    LinearCombinationOp,
    MaxPoolOp,
    ReLUOp,
)
from .primitives import PAffine, PairNet, PInput, PLinear, PNode, PPerturb, PReLU

__all__ = ["lower_pair", "LOWERINGS", "maxpool_window_index"]


class _Builder:
    """Collects primitive nodes; ``add`` returns the new node's index."""

    def __init__(self, graph: Graph, other: Graph) -> None:
        self.graph = graph
        self.other = other
        self.nodes: list[PNode] = []

    def add(self, node: PNode) -> int:
        self.nodes.append(node)
        return len(self.nodes) - 1

    def shape(self, i: int) -> tuple[int, ...]:
        return self.nodes[i].shape

    def linear(self, inputs: Sequence[int], fn: Callable[..., Tensor],
               abs_fn: Callable[..., Tensor], source: str,
               const: Tensor | float | None = None,
               envelope: tuple[int, Tensor] | None = None) -> int:
        in_shapes = tuple(self.shape(i) for i in inputs)
        zeros = [torch.zeros(s, dtype=torch.float64) for s in in_shapes]
        with torch.no_grad():
            shape = tuple(fn(*zeros).shape)
        c = None if const is None else torch.as_tensor(const, dtype=torch.float64)
        if c is not None and not bool(c.any()):
            c = None
        return self.add(PLinear(inputs=tuple(inputs), shape=shape, source=source, fn=fn,
                                abs_fn=abs_fn, in_shapes=in_shapes, const=c,
                                envelope=envelope))

    def relu(self, i: int, source: str) -> int:
        return self.add(PReLU(inputs=(i,), shape=self.shape(i), source=source))


Lowering = Callable[[IRNode, IROp, list[int], _Builder], int]


# ----------------------------------------------------------------------- per op kind
def _lower_affine(node: IRNode, op: IROp, ins: list[int], b: _Builder) -> int:
    assert isinstance(op, AffineOp)
    p, q = b.graph.params[node.name], b.other.params[node.name]
    in_shape = b.shape(ins[0])
    zeros = torch.zeros(in_shape, dtype=torch.float64)

    def bias_out(params_bias: Tensor | None, w: Tensor) -> Tensor:
        return op.apply(zeros, torch.zeros_like(w), params_bias)

    return b.add(PAffine(inputs=(ins[0],), shape=tuple(node.shape), source=node.name, op=op,
                         in_shape=in_shape, w=p.weight, wc=q.weight,
                         bias=bias_out(p.bias, p.weight), bias_c=bias_out(q.bias, q.weight)))


def _lower_relu(node: IRNode, op: IROp, ins: list[int], b: _Builder) -> int:
    return b.relu(ins[0], node.name)


def _scaled_sum(coeffs: tuple[float, ...]) -> Callable[..., Tensor]:
    def f(*xs: Tensor) -> Tensor:
        return functools.reduce(torch.add, (x * c if c != 1.0 else x
                                            for x, c in zip(xs, coeffs)))
    return f


def _combination(b: _Builder, inputs: Sequence[int], coeffs: tuple[float, ...], source: str,
                 const: float = 0.0) -> int:
    return b.linear(inputs, _scaled_sum(coeffs), _scaled_sum(tuple(abs(c) for c in coeffs)),
                    source, const if const != 0.0 else None)


def _lower_leaky(node: IRNode, op: IROp, ins: list[int], b: _Builder) -> int:
    assert isinstance(op, LeakyReLUOp)
    s = float(op.negative_slope)
    r = b.relu(ins[0], node.name)
    return _combination(b, [ins[0], r], (s, 1.0 - s), node.name)


def _lower_clamp(node: IRNode, op: IROp, ins: list[int], b: _Builder) -> int:
    assert isinstance(op, ClampOp)
    x = ins[0]
    lo, hi = op.lower, op.upper
    if lo is not None and hi is not None:
        if lo > hi:  # torch.clamp returns hi everywhere
            return b.linear([x], lambda t: t * 0.0, lambda t: t * 0.0, node.name, float(hi))
        ra = b.relu(_combination(b, [x], (1.0,), node.name, -float(lo)), node.name)
        rb = b.relu(_combination(b, [x], (1.0,), node.name, -float(hi)), node.name)
        return _combination(b, [ra, rb], (1.0, -1.0), node.name, float(lo))
    if lo is not None:
        r = b.relu(_combination(b, [x], (1.0,), node.name, -float(lo)), node.name)
        return _combination(b, [r], (1.0,), node.name, float(lo))
    if hi is not None:
        r = b.relu(_combination(b, [x], (-1.0,), node.name, float(hi)), node.name)
        return _combination(b, [r], (-1.0,), node.name, float(hi))
    return _combination(b, [x], (1.0,), node.name)


def _lower_fixed(node: IRNode, op: IROp, ins: list[int], b: _Builder) -> int:
    def fn(*xs: Tensor) -> Tensor:
        return op.forward(list(xs), None)

    def abs_fn(*xs: Tensor) -> Tensor:
        return op.magnitude(list(xs), None, False)

    return b.linear(ins, fn, abs_fn, node.name)


def _lower_combination(node: IRNode, op: IROp, ins: list[int], b: _Builder) -> int:
    assert isinstance(op, LinearCombinationOp)
    linear = replace(op, const=0.0)

    def fn(*xs: Tensor) -> Tensor:
        return linear.forward(list(xs), None)

    def abs_fn(*xs: Tensor) -> Tensor:
        return linear.magnitude(list(xs), None, False)

    return b.linear(ins, fn, abs_fn, node.name, op.const if op.const != 0.0 else None)


def maxpool_window_index(op: MaxPoolOp, in_shape: tuple[int, ...]) -> Tensor:
    """``idx`` of shape ``out_shape + (K,)``: the flat input index of every element of
    every pooling window (``K`` = kernel volume). Padding and, with ``ceil_mode``, the
    positions past the input's end are not input elements; such a slot repeats the
    window's first real element (``max`` is idempotent, so the maximum is unchanged)."""
    d = op.dim
    n_in = 1
    for s in in_shape:
        n_in *= s
    ids = (torch.arange(n_in, dtype=torch.float64) + 1.0).reshape(in_shape)
    out_shape = op.forward([torch.empty(in_shape, dtype=torch.float64, device="meta")],
                           None).shape
    spatial_in, spatial_out = in_shape[-d:], out_shape[-d:]
    pads: list[int] = []
    for i in reversed(range(d)):
        need = (spatial_out[i] - 1) * op.stride[i] + op.dilation[i] * (op.kernel_size[i] - 1) + 1
        extra = max(0, need - (spatial_in[i] + 2 * op.padding[i]))
        pads.extend([op.padding[i], op.padding[i] + extra])
    padded = F.pad(ids, pads)  # zeros mark slots that are not input elements
    slots = []
    for offset in torch.cartesian_prod(*[torch.arange(k) for k in op.kernel_size]).reshape(
            -1, d).tolist():
        index: list[slice] = [slice(None)] * (len(in_shape) - d)
        for i in range(d):
            start = offset[i] * op.dilation[i]
            stop = start + (spatial_out[i] - 1) * op.stride[i] + 1
            index.append(slice(start, stop, op.stride[i]))
        slots.append(padded[tuple(index)])
    win = torch.stack(slots, dim=-1)  # out_shape + (K,), 1-based ids, 0 = not an element
    valid = win > 0
    first = torch.gather(win, -1, valid.to(torch.int64).argmax(-1, keepdim=True))
    if not bool((first > 0).all()):
        raise RuntimeError("a max-pooling window without input elements")
    win = torch.where(valid, win, first)
    return (win - 1.0).to(torch.int64)


def _gather(idx: Tensor) -> Callable[[Tensor], Tensor]:
    flat = idx.reshape(-1)
    shape = tuple(idx.shape)

    def g(x: Tensor) -> Tensor:
        return x.reshape(-1).index_select(0, flat).reshape(shape)

    return g


def _pair_diff(k: int) -> Callable[[Tensor], Tensor]:
    p = k // 2

    def f(w: Tensor) -> Tensor:
        return w[..., 0:2 * p:2] - w[..., 1:2 * p:2]

    return f


def _pair_diff_abs(k: int) -> Callable[[Tensor], Tensor]:
    p = k // 2

    def f(w: Tensor) -> Tensor:
        return w[..., 0:2 * p:2] + w[..., 1:2 * p:2]

    return f


def _pair_max(k: int, last: bool) -> Callable[[Tensor, Tensor], Tensor]:
    p = k // 2

    def f(w: Tensor, r: Tensor) -> Tensor:
        m = w[..., 1:2 * p:2] + r
        out = torch.cat([m, w[..., 2 * p:]], dim=-1) if k % 2 else m
        return out.squeeze(-1) if last else out

    return f


def _lower_maxpool(node: IRNode, op: IROp, ins: list[int], b: _Builder) -> int:
    assert isinstance(op, MaxPoolOp)
    in_shape = b.shape(ins[0])
    idx = maxpool_window_index(op, in_shape)
    # self-check against the op's own forward on random data (the lowering must be exact)
    probe = torch.randn(in_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    if not torch.equal(_gather(idx)(probe).amax(-1), op.forward([probe], None)):
        raise RuntimeError(f"max-pooling window gather disagrees with {op.describe()}")
    g = _gather(idx)
    cur = b.linear([ins[0]], g, g, node.name)
    k = int(idx.shape[-1])
    if k == 1:
        return b.linear([cur], lambda w: w.squeeze(-1), lambda w: w.squeeze(-1), node.name)
    groups = [idx[..., j:j + 1] for j in range(k)]  # window slots each level element maxes
    while k > 1:
        diff = b.linear([cur], _pair_diff(k), _pair_diff_abs(k), node.name)
        r = b.relu(diff, node.name)
        nxt = (k + 1) // 2
        groups = [_union(groups[2 * j], groups[2 * j + 1]) for j in range(k // 2)] + \
            ([groups[-1]] if k % 2 else [])
        width = max(t.shape[-1] for t in groups)
        env = torch.stack([_pad_group(t, width) for t in groups], dim=-2)  # (..., nxt, G)
        if nxt == 1:
            env = env.squeeze(-2)
        f = _pair_max(k, nxt == 1)
        cur = b.linear([cur, r], f, f, node.name, envelope=(ins[0], env))
        k = nxt
    return cur


def _union(a: Tensor, b: Tensor) -> Tensor:
    return torch.cat([a, b], dim=-1)


def _pad_group(t: Tensor, width: int) -> Tensor:
    """Repeat the first element up to ``width`` (max and min ignore duplicates)."""
    if t.shape[-1] == width:
        return t
    return torch.cat([t, t[..., :1].expand(t.shape[:-1] + (width - t.shape[-1],))], dim=-1)


# ------------------------------------------------------------ activation quantization
@dataclass(frozen=True)
class _SelectOp(AffineOp):
    """``sum_i w[i] x[i]`` over ``k`` stacked tensors ``x`` (bilinear in ``w`` and ``x``):
    lets the two networks of a pair take different branches (lowering only)."""

    k: int = 2

    def apply(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        w = weight.reshape((self.k,) + (1,) * (x.dim() - 1))
        y = (x * w).sum(0)
        return y if bias is None else y + bias

    def out_channels(self, params: AffineParams) -> int:  # pragma: no cover - unused
        return 1

    def scale_weight_out(self, weight: Tensor, a: Tensor) -> Tensor:  # pragma: no cover
        return weight * a

    def describe(self) -> str:
        return "Select"


def _select(b: _Builder, ins: list[int], source: str, shape: tuple[int, ...],
            keep: list[float], clip: list[float], clip_a: bool, clip_c: bool) -> int:
    """``sum_i w_i ins[i]`` with ``w = clip`` in a network that clips, ``keep`` in one
    that does not (a ``PAffine``: the two networks' weights differ)."""
    k = len(ins)
    stacked = b.linear(ins, lambda *us: torch.stack(list(us)),
                       lambda *us: torch.stack(list(us)), source)
    wk = torch.tensor(keep, dtype=torch.float64)
    wc = torch.tensor(clip, dtype=torch.float64)
    zeros = torch.zeros(shape, dtype=torch.float64)
    return b.add(PAffine(inputs=(stacked,), shape=shape, source=source, op=_SelectOp(k),
                         in_shape=b.shape(stacked), w=wc if clip_a else wk,
                         wc=wc if clip_c else wk, bias=zeros, bias_c=zeros))


def _nonnegative(graph: Graph, name: str) -> bool:
    """Whether node ``name`` is >= 0 for every input, by structure (a ReLU, or a
    max-pooling, copy, non-negative average or lower-bounded quantizer of one)."""
    for _ in range(64):
        op = graph.node(name).op
        if isinstance(op, ReLUOp):
            return True
        if isinstance(op, ClampOp) and op.lower is not None:
            return op.lower >= 0.0
        if isinstance(op, ActQuantOp) and op.enabled:
            return op.lower >= 0.0
        if not isinstance(op, (MaxPoolOp, IndexOp, FixedLinearOp, ActQuantOp)):
            return False
        name = graph.node(name).inputs[0]
    return False


def _lower_actquant(node: IRNode, op: IROp, ins: list[int], b: _Builder) -> int:
    """Original and compressed quantizer of one node (docs/quantization.md, "Activation
    quantization"): exact clipping in each network that quantizes, then the rounding as a
    bounded perturbation. Supported: neither, one, or both with the same grid."""
    qa, qc = b.graph.node(node.name).op, b.other.node(node.name).op
    assert isinstance(qa, ActQuantOp) and isinstance(qc, ActQuantOp)
    x = ins[0]
    shape = b.shape(x)
    if not qa.enabled and not qc.enabled:
        return b.linear([x], lambda t: t, lambda t: t, node.name)
    both = qa.enabled and qc.enabled
    if both and (qa.lower, qa.upper) != (qc.lower, qc.upper):
        raise UnsupportedModelError(
            f"node '{node.name}': both networks quantize this activation, with different "
            f"ranges ({qa.lower:.6g}..{qa.upper:.6g} and {qc.lower:.6g}..{qc.upper:.6g}); "
            "the bounds tier supports one quantizing network, or the same range in both",
            [UnsupportedNode(node.name, "ActQuantOp", node.source, "different ranges")])
    q = qc if qc.enabled else qa
    lo, hi = float(q.lower), float(q.upper)
    if not lo < hi:
        raise UnsupportedModelError(
            f"node '{node.name}': activation range [{lo}, {hi}] is empty",
            [UnsupportedNode(node.name, "ActQuantOp", node.source, "empty range")])
    r_hi = b.relu(_combination(b, [x], (1.0,), node.name, -hi), node.name)
    if lo <= 0.0 and _nonnegative(b.graph, node.inputs[0]) and \
            _nonnegative(b.other, node.inputs[0]):
        # x >= 0 >= lo in both networks: clipping below never happens (exactly), so
        # clamp(x) = x - ReLU(x - hi) and no ReLU at lo is needed
        if both:
            clipped = _combination(b, [x, r_hi], (1.0, -1.0), node.name)
        else:
            sel = _select(b, [r_hi], node.name, shape, [0.0], [-1.0], qa.enabled, qc.enabled)
            clipped = _combination(b, [x, sel], (1.0, 1.0), node.name)
    else:
        r_lo = b.relu(_combination(b, [x], (1.0,), node.name, -lo), node.name)
        if both:
            clipped = _combination(b, [r_lo, r_hi], (1.0, -1.0), node.name, lo)
        else:
            # the network that does not quantize: z = lo + ReLU(z - lo) - ReLU(lo - z)
            r_neg = b.relu(_combination(b, [x], (-1.0,), node.name, lo), node.name)
            sel = _select(b, [r_neg, r_hi], node.name, shape, [-1.0, 0.0], [0.0, -1.0],
                          qa.enabled, qc.enabled)
            clipped = _combination(b, [r_lo, sel], (1.0, 1.0), node.name, lo)
    full = torch.ones(shape, dtype=torch.float64)
    return b.add(PPerturb(inputs=(clipped,), shape=shape, source=node.name,
                          delta_z=full * (qa.delta if qa.enabled else 0.0),
                          delta_c=full * (qc.delta if qc.enabled else 0.0)))


LOWERINGS: dict[type, Lowering] = {
    ActQuantOp: _lower_actquant,
    AffineOp: _lower_affine,
    ReLUOp: _lower_relu,
    LeakyReLUOp: _lower_leaky,
    ClampOp: _lower_clamp,
    MaxPoolOp: _lower_maxpool,
    FixedLinearOp: _lower_fixed,
    IndexOp: _lower_fixed,
    CatOp: _lower_fixed,
    LinearCombinationOp: _lower_combination,
}


def _lowering(op: IROp) -> Lowering | None:
    for cls in type(op).__mro__:
        if cls in LOWERINGS:
            return LOWERINGS[cls]
    return None


def _relus_before_maxpool(graph: Graph) -> set[str]:
    """ReLU nodes whose only user is a max-pooling node (and that are no output): since
    ``maxpool(ReLU(x)) = ReLU(maxpool(x))`` (both monotone), the pool is lowered first and
    one ReLU per pooled value follows, which needs fewer relaxed ReLUs."""
    users: dict[str, list[IRNode]] = {}
    for n in graph.nodes:
        for i in n.inputs:
            users.setdefault(i, []).append(n)
    out = set()
    for n in graph.nodes:
        us = users.get(n.name, [])
        if (isinstance(n.op, ReLUOp) and n.name not in graph.outputs and len(us) == 1
                and isinstance(us[0].op, MaxPoolOp) and us[0].inputs == (n.name,)):
            out.add(n.name)
    return out


def lower_pair(graph: Graph, other: Graph) -> PairNet:
    """The primitive pair network of ``graph`` (original) and ``other`` (compressed);
    the two must have the same structure."""
    graph.check_same_structure(other)
    missing = [UnsupportedNode(n.name, type(n.op).__name__, n.source,
                               "no bound-propagation lowering for this op kind")
               for n in graph.nodes[1:] if n.op is not None and _lowering(n.op) is None]
    if missing:
        raise UnsupportedModelError(
            "the bound-propagation tier has no rule for some op kinds (the path-metric tier "
            "still applies); add one to certcompress.bounds.propagation.lowering.LOWERINGS",
            missing)
    b = _Builder(graph, other)
    where: dict[str, int] = {graph.input.name: b.add(PInput(
        inputs=(), shape=tuple(graph.input_shape), source=graph.input.name))}
    deferred = _relus_before_maxpool(graph)
    with torch.no_grad():
        for n in graph.nodes[1:]:
            assert n.op is not None
            ins = [where[i] for i in n.inputs]
            if n.name in deferred:  # ReLU then max-pool = max-pool then ReLU
                where[n.name] = ins[0]
                continue
            if isinstance(n.op, MaxPoolOp) and n.inputs[0] in deferred:
                pooled = _lower_maxpool(n, n.op, ins, b)
                where[n.name] = b.relu(pooled, n.name)
                continue
            lowering = _lowering(n.op)
            assert lowering is not None
            out = lowering(n, n.op, ins, b)
            if b.shape(out) != tuple(n.shape):
                raise RuntimeError(f"lowering of node '{n.name}' ({n.op.describe()}) gave shape "
                                   f"{b.shape(out)}, the graph says {tuple(n.shape)}")
            where[n.name] = out
    return PairNet(nodes=tuple(b.nodes), outputs=tuple(where[o] for o in graph.outputs),
                   input_shape=tuple(graph.input_shape), model_name=graph.model_name)
