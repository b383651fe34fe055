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
                       ReLU(z - hi)`` in one that does: a ``PSelect`` selects), then a
                       ``PPerturb`` of ``|e| <= scale / 2 + slack`` (the rounding)
=====================  ==========================================================

The table is a :class:`LoweringRegistry` looked up along the op type's MRO: the built-in
lowerings above, plus those plugins register in their ``register_lowerings(registry)``
hook (:func:`default_lowerings`). A graph with op kinds that have no lowering is refused
with every such node listed. A new lowering is one function (``fn(node, op, inputs,
builder) -> index``, see :class:`Builder`) and one ``registry.register(OpType, fn)``.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from ..._attribution import Attributed
from ...capture.plugins import PluginManager, plugin_manager
from ...errors import PluginError, RefusalKind, UnsupportedModelError, UnsupportedNode
from ...ir.graph import Graph, IRNode
from ...ir.ops import (
    ActQuantOp,
    AffineOp,
    AffineParams,
    CatOp,
    ChannelAffineOp,
    ClampOp,
    ConvOp,
    FixedLinearOp,
    IndexOp,
    IROp,
    LeakyReLUOp,
    LinearCombinationOp,
    LinearOp,
    MaxPoolOp,
    ReLUOp,
)
from .primitives import (
    PAffine,
    PairNet,
    PInput,
    PLinear,
    PNode,
    PPerturb,
    PReLU,
    PSelect,
    WeightScratch,
)

__all__ = ["lower_pair", "LoweringRegistry", "LoweringEntry", "Lowering", "Builder",
           "default_lowerings", "lowerings_for", "register_builtin_lowerings",
           "maxpool_window_index"]


def _scaled_sum(coeffs: tuple[float, ...]) -> Callable[..., Tensor]:
    def f(*xs: Tensor) -> Tensor:
        return functools.reduce(torch.add, (x * c if c != 1.0 else x
                                            for x, c in zip(xs, coeffs)))
    return f


class Builder:
    """Collects the primitive nodes a lowering emits; every method returns the new
    node's index. ``graph``/``other`` are the original and compressed IR graphs
    (``graph.params[node.name]`` holds a parametric node's weights).

    ``relu(i, source)``: ``max(x_i, 0)``; ``combination(inputs, coeffs, source, const)``:
    ``sum_k coeffs[k] x_{inputs[k]} + const``; ``linear(inputs, fn, abs_fn, source,
    const)``: any fixed linear map ``fn`` (``abs_fn`` the same map with absolute
    weights) plus a constant; ``add(node)``: a primitive node built by hand."""

    def __init__(self, graph: Graph, other: Graph) -> None:
        self.graph = graph
        self.other = other
        self.nodes: list[PNode] = []
        #: the pair's affine nodes widen compact weights into these shared buffers
        self.scratch = WeightScratch()

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

    def combination(self, inputs: Sequence[int], coeffs: tuple[float, ...], source: str,
                    const: float = 0.0) -> int:
        return self.linear(inputs, _scaled_sum(coeffs),
                           _scaled_sum(tuple(abs(c) for c in coeffs)), source,
                           const if const != 0.0 else None)


Lowering = Callable[[IRNode, IROp, list[int], Builder], int]


# ----------------------------------------------------------------------- per op kind
#: ops whose output on a zero input is ``add_bias(zeros, bias)`` (a plugin's affine op is
#: applied to zeros with a zero weight instead)
_BIAS_BY_ADDITION = (LinearOp, ConvOp, ChannelAffineOp)


#: compact weights (``AffineParams.widened``) below this many bytes once widened are
#: widened once, at lowering, and held: a small layer's weights cost little memory, and
#: the many propagations of branch-and-bound then read them without widening again
RESIDENT_BYTES = 1 << 20


def _resident(params: AffineParams) -> AffineParams:
    if not params.is_widened:
        return params
    n = params.weight_shape.numel() * torch.empty((), dtype=params.dtype).element_size()
    return AffineParams(params.weight, params.bias) if n < RESIDENT_BYTES else params


def _lower_affine(node: IRNode, op: IROp, ins: list[int], b: Builder) -> int:
    assert isinstance(op, AffineOp)
    p, q = b.graph.params[node.name], b.other.params[node.name]
    # a network paired with itself keeps one set of weights
    p, q = (_resident(p),) * 2 if q is p else (_resident(p), _resident(q))
    in_shape = b.shape(ins[0])

    def bias_out(params_bias: Tensor | None, params: AffineParams) -> Tensor:
        """The op applied to zeros: its bias broadcast over the output (for the built-in
        ops without a zero weight tensor of the layer's size)."""
        if type(op) in _BIAS_BY_ADDITION:
            out = torch.zeros(tuple(node.shape), dtype=params.dtype, device=params.device)
            return out if params_bias is None else op.add_bias(out, params_bias)
        w0 = torch.zeros(params.weight_shape, dtype=params.dtype, device=params.device)
        return op.apply(torch.zeros(in_shape, dtype=torch.float64), w0, params_bias)

    return b.add(PAffine(inputs=(ins[0],), shape=tuple(node.shape), source=node.name, op=op,
                         in_shape=in_shape, params=p, params_c=q, scratch=b.scratch,
                         bias=bias_out(p.bias, p), bias_c=bias_out(q.bias, q)))


def _lower_relu(node: IRNode, op: IROp, ins: list[int], b: Builder) -> int:
    return b.relu(ins[0], node.name)


def _lower_leaky(node: IRNode, op: IROp, ins: list[int], b: Builder) -> int:
    assert isinstance(op, LeakyReLUOp)
    s = float(op.negative_slope)
    r = b.relu(ins[0], node.name)
    return b.combination([ins[0], r], (s, 1.0 - s), node.name)


def _lower_clamp(node: IRNode, op: IROp, ins: list[int], b: Builder) -> int:
    assert isinstance(op, ClampOp)
    x = ins[0]
    lo, hi = op.lower, op.upper
    if lo is not None and hi is not None:
        if lo > hi:  # torch.clamp returns hi everywhere
            return b.linear([x], lambda t: t * 0.0, lambda t: t * 0.0, node.name, float(hi))
        ra = b.relu(b.combination([x], (1.0,), node.name, -float(lo)), node.name)
        rb = b.relu(b.combination([x], (1.0,), node.name, -float(hi)), node.name)
        return b.combination([ra, rb], (1.0, -1.0), node.name, float(lo))
    if lo is not None:
        r = b.relu(b.combination([x], (1.0,), node.name, -float(lo)), node.name)
        return b.combination([r], (1.0,), node.name, float(lo))
    if hi is not None:
        r = b.relu(b.combination([x], (-1.0,), node.name, float(hi)), node.name)
        return b.combination([r], (-1.0,), node.name, float(hi))
    return b.combination([x], (1.0,), node.name)


def _lower_fixed(node: IRNode, op: IROp, ins: list[int], b: Builder) -> int:
    def fn(*xs: Tensor) -> Tensor:
        return op.forward(list(xs), None)

    def abs_fn(*xs: Tensor) -> Tensor:
        return op.magnitude(list(xs), None, False)

    return b.linear(ins, fn, abs_fn, node.name)


def _lower_combination(node: IRNode, op: IROp, ins: list[int], b: Builder) -> int:
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


def _lower_maxpool(node: IRNode, op: IROp, ins: list[int], b: Builder) -> int:
    assert isinstance(op, MaxPoolOp)
    in_shape = b.shape(ins[0])
    idx = maxpool_window_index(op, in_shape)
    # self-check against the op's own forward on random data (the lowering must be exact)
    # drawn on the CPU (its generator's device), then put where the lowering runs
    probe = torch.randn(in_shape, dtype=torch.float64, device="cpu",
                        generator=torch.Generator().manual_seed(0)).to(idx.device)
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
def _select(b: Builder, ins: list[int], source: str, shape: tuple[int, ...],
            keep: list[float], clip: list[float], clip_a: bool, clip_c: bool) -> int:
    """``sum_i w_i ins[i]`` with ``w = clip`` in a network that clips, ``keep`` in one
    that does not (a ``PSelect`` over the stacked inputs: the two networks' weights
    differ)."""
    stacked = b.linear(ins, lambda *us: torch.stack(list(us)),
                       lambda *us: torch.stack(list(us)), source)
    wk = torch.tensor(keep, dtype=torch.float64)
    wc = torch.tensor(clip, dtype=torch.float64)
    return b.add(PSelect(inputs=(stacked,), shape=shape, source=source,
                         w=wc if clip_a else wk, wc=wc if clip_c else wk))


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


def _lower_actquant(node: IRNode, op: IROp, ins: list[int], b: Builder) -> int:
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
    r_hi = b.relu(b.combination([x], (1.0,), node.name, -hi), node.name)
    if lo <= 0.0 and _nonnegative(b.graph, node.inputs[0]) and \
            _nonnegative(b.other, node.inputs[0]):
        # x >= 0 >= lo in both networks: clipping below never happens (exactly), so
        # clamp(x) = x - ReLU(x - hi) and no ReLU at lo is needed
        if both:
            clipped = b.combination([x, r_hi], (1.0, -1.0), node.name)
        else:
            sel = _select(b, [r_hi], node.name, shape, [0.0], [-1.0], qa.enabled, qc.enabled)
            clipped = b.combination([x, sel], (1.0, 1.0), node.name)
    else:
        r_lo = b.relu(b.combination([x], (1.0,), node.name, -lo), node.name)
        if both:
            clipped = b.combination([r_lo, r_hi], (1.0, -1.0), node.name, lo)
        else:
            # the network that does not quantize: z = lo + ReLU(z - lo) - ReLU(lo - z)
            r_neg = b.relu(b.combination([x], (-1.0,), node.name, lo), node.name)
            sel = _select(b, [r_neg, r_hi], node.name, shape, [-1.0, 0.0], [0.0, -1.0],
                          qa.enabled, qc.enabled)
            clipped = b.combination([r_lo, sel], (1.0, 1.0), node.name, lo)
    full = torch.ones(shape, dtype=torch.float64)
    return b.add(PPerturb(inputs=(clipped,), shape=shape, source=node.name,
                          delta_z=full * (qa.delta if qa.enabled else 0.0),
                          delta_c=full * (qc.delta if qc.enabled else 0.0),
                          near_zero_z=_near_zero(qa), near_zero_c=_near_zero(qc)))


def _near_zero(q: ActQuantOp) -> Tensor | None:
    """The margin of the per-element rounding bound ``|e| <= |clamp(x)| + 2 max(slack,
    0)`` of an enabled quantizer with an integer zero point (docs/quantization.md,
    "Per-element rounding bound"); None otherwise (``delta`` alone)."""
    if not q.enabled or not float(q.zero_point).is_integer():
        return None
    return torch.tensor(2.0 * max(float(q.slack), 0.0), dtype=torch.float64)



@dataclass(frozen=True)
class LoweringEntry:
    """One registered lowering: the op type, the function and who registered it."""

    op_type: type[IROp]
    fn: Lowering
    source: str


class LoweringRegistry(Attributed):
    """IR op type -> lowering function (looked up along the op type's MRO).

    A lowering is ``fn(node, op, inputs, builder) -> index``: it appends primitive nodes
    with ``builder.add``/``linear``/``relu`` (``inputs`` are the primitive indices of the
    IR node's inputs) and returns the index of the node holding the op's output, whose
    shape must be the IR node's. It must be *exact*: the primitives compute the op's
    ``forward`` for every input (``lower_pair`` checks the shape;
    ``evaluate.pair_outputs`` against the models checks the values in the tests).
    A new lowering is one function and one ``register`` call; a plugin registers its
    own in its ``register_lowerings(registry)`` hook (docs/plugins.md).
    """

    def __init__(self) -> None:
        self._table: dict[type[IROp], LoweringEntry] = {}
        self._source = "certcompress"

    def register(self, op_type: type[IROp], fn: Lowering, *, replace: bool = False) -> None:
        """Lower every node whose op is an ``op_type`` (or a subclass without a lowering
        of its own) with ``fn``. Registering a type another source already lowers is
        refused unless ``replace=True``."""
        src = self._source
        if not (isinstance(op_type, type) and issubclass(op_type, IROp)) or op_type is IROp:
            raise PluginError(f"{src}: cannot register a lowering for {op_type!r}: not an "
                              "IROp subclass (certcompress.ir.ops.IROp)")
        if not callable(fn):
            raise PluginError(f"{src}: the lowering for {op_type.__name__} is not callable "
                              f"({fn!r})")
        old = self._table.get(op_type)
        if old is not None and not replace and old.source != src:
            raise PluginError(f"{src}: {op_type.__name__} already has a lowering from "
                              f"{old.source}; pass replace=True to override it")
        self._table[op_type] = LoweringEntry(op_type, fn, src)

    def lookup(self, op: IROp | type[IROp]) -> Lowering | None:
        """The lowering of ``op`` (an op or an op type), or None."""
        entry = self.entry(op)
        return None if entry is None else entry.fn

    def entry(self, op: IROp | type[IROp]) -> LoweringEntry | None:
        cls = op if isinstance(op, type) else type(op)
        for klass in cls.__mro__:
            entry = self._table.get(klass)
            if entry is not None:
                return entry
        return None

    def __contains__(self, op: object) -> bool:
        return isinstance(op, (IROp, type)) and self.entry(op) is not None  # type: ignore[arg-type]

    def entries(self) -> list[LoweringEntry]:
        return list(self._table.values())

    def copy(self) -> LoweringRegistry:
        new = LoweringRegistry()
        new._table = dict(self._table)
        return new

    def check(self, graph: Graph) -> None:
        """Refuse ``graph`` when some op kind has no lowering, every such node listed."""
        missing = [UnsupportedNode(n.name, type(n.op).__name__, n.source,
                                   f"no bound-propagation lowering for {type(n.op).__name__}",
                                   kind=RefusalKind.NO_LOWERING, group=type(n.op).__name__)
                   for n in graph.nodes[1:] if n.op is not None and n.op not in self]
        if missing:
            kinds = sorted({o.op for o in missing})
            raise UnsupportedModelError(
                f"the bound-propagation tier has no lowering for {', '.join(kinds)} (the "
                "path-metric tier still applies); register one with "
                "LoweringRegistry.register(op_type, fn), from a plugin's "
                "register_lowerings(registry) hook", missing)


def register_builtin_lowerings(registry: LoweringRegistry) -> None:
    """The lowerings of the core's op kinds (the table in the module docstring)."""
    for op_type, fn in ((AffineOp, _lower_affine), (ReLUOp, _lower_relu),
                        (LeakyReLUOp, _lower_leaky), (ClampOp, _lower_clamp),
                        (MaxPoolOp, _lower_maxpool), (FixedLinearOp, _lower_fixed),
                        (IndexOp, _lower_fixed), (CatOp, _lower_fixed),
                        (LinearCombinationOp, _lower_combination),
                        (ActQuantOp, _lower_actquant)):
        registry.register(op_type, fn)


_BUILTIN = LoweringRegistry()
register_builtin_lowerings(_BUILTIN)


def lowerings_for(manager: PluginManager) -> LoweringRegistry:
    """The built-in lowerings plus those of every plugin loaded in ``manager`` (each
    plugin's ``register_lowerings`` hook, its registrations attributed to it)."""
    registry = _BUILTIN.copy()
    for lp in manager.plugins:
        try:
            with registry.attributed_to(lp.plugin.name):
                lp.plugin.register_lowerings(registry)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(f"plugin '{lp.plugin.name}' ({lp.source}) failed in "
                              f"register_lowerings: {type(exc).__name__}: {exc}") from exc
    return registry


_lock = threading.Lock()
# (manager, its plugins, their lowerings): held strongly, so that a manager or plugin freed
# since cannot pass for the cached one by a reused id
_cache: tuple[PluginManager, tuple[object, ...], LoweringRegistry] | None = None


def default_lowerings() -> LoweringRegistry:
    """:func:`lowerings_for` the process-wide plugin manager (rebuilt when a plugin is
    loaded or removed, or the manager replaced)."""
    global _cache
    manager = plugin_manager()
    plugins = tuple(lp.plugin for lp in manager.plugins)
    with _lock:
        if _cache is None or _cache[0] is not manager or len(_cache[1]) != len(plugins) \
                or any(a is not b for a, b in zip(_cache[1], plugins)):
            _cache = (manager, plugins, lowerings_for(manager))
        return _cache[2]


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


def lower_pair(graph: Graph, other: Graph,
               lowerings: LoweringRegistry | None = None) -> PairNet:
    """The primitive pair network of ``graph`` (original) and ``other`` (compressed);
    the two must have the same structure. ``lowerings``: default
    :func:`default_lowerings` (built-ins plus the loaded plugins')."""
    graph.check_same_structure(other)
    table = default_lowerings() if lowerings is None else lowerings
    table.check(graph)
    b = Builder(graph, other)
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
            entry = table.entry(n.op)
            assert entry is not None
            start = len(b.nodes)
            out = entry.fn(n, n.op, ins, b)
            what = f"the lowering of node '{n.name}' ({n.op.describe()}, from {entry.source})"
            if not isinstance(out, int) or isinstance(out, bool) or \
                    not (start <= out < len(b.nodes) or out in ins):
                raise RuntimeError(f"{what} returned {out!r}, not the index of a primitive "
                                   "node it added (or of one of its inputs)")
            if b.shape(out) != tuple(n.shape):
                raise RuntimeError(f"{what} gave shape {b.shape(out)}, the graph says "
                                   f"{tuple(n.shape)}")
            if isinstance(n.op, MaxPoolOp) and n.inputs[0] in deferred:
                out = b.relu(out, n.name)
            where[n.name] = out
    return PairNet(nodes=tuple(b.nodes), outputs=tuple(where[o] for o in graph.outputs),
                   input_shape=tuple(graph.input_shape), model_name=graph.model_name)
