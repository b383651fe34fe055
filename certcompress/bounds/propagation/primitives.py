"""The primitive pair network the bound propagation runs on.

The IR graph of the original network and that of the compressed one (same structure,
other parameters) are lowered into one list of primitive nodes of these kinds, each
acting on the *per-problem* tensor shape (the traced input shape, batch included):

``PAffine``
    a parametric affine map, ``z -> A_W z + b`` in the original network and
    ``z' -> A_W' z' + b'`` in the compressed one;
``PLinear``
    a fixed linear map plus a constant, identical in both networks (index maps,
    average pooling, sums, concatenation, the window gathers of max-pooling);
``PReLU``
    ``max(., 0)`` element-wise;
``PSelect``
    ``sum_i w_i x_i`` over ``k`` stacked tensors, with other weights ``w`` in each
    network (so that the two networks can take different branches: an activation
    quantizer that clips in one network only);
``PPerturb``
    ``x + e`` for any ``e`` of bounded size (an activation quantizer's rounding).

Every piecewise-linear IR op is rewritten exactly into these (``lowering.py``), so bound
propagation needs rules for these node kinds only (``rules.py``: one rule class per
kind, owning its interval, magnitude, relaxation, evaluation and backward rules).

Tensors handed to a node carry one leading dimension: *problems* (one input box per
problem: one for a global certificate, one per point for local ones) in the forward
interval pass, *rows* (one linear form per row) during back-substitution. Both are
mapped with :func:`torch.func.vmap`, so an op always sees exactly the per-problem shape
it was traced with, even one that hard-codes the traced batch size (``x.view(1, -1)``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.func import vjp, vmap

from ...ir.ops import AffineOp, AffineParams, own_pages

__all__ = ["PNode", "PInput", "PAffine", "WeightScratch", "PLinear", "PReLU", "PPerturb", "PSelect", "PairNet",
           "Transpose", "linear_transpose"]

Transpose = Callable[[Tensor], tuple[Tensor, ...]]


def numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def linear_transpose(fn: Callable[..., Tensor], in_shapes: Sequence[tuple[int, ...]]
                     ) -> Transpose:
    """``rows -> (L^T rows per input)`` for a linear ``fn``, rows on a leading dimension:
    the vector-Jacobian product of ``fn`` at zero (exact for a linear map), mapped over
    the rows."""
    zeros = [torch.zeros(s, dtype=torch.float64) for s in in_shapes]
    pullback = vjp(fn, *zeros)[1]
    batched = vmap(pullback)

    def transpose(rows: Tensor) -> tuple[Tensor, ...]:
        return tuple(batched(rows))

    return transpose


@dataclass(frozen=True, eq=False, kw_only=True)
class PNode:
    """A primitive node: ``inputs`` are indices of earlier nodes; ``shape`` is the
    per-problem output shape; ``source`` names the IR node it was lowered from."""

    inputs: tuple[int, ...]
    shape: tuple[int, ...]
    source: str

    @property
    def numel(self) -> int:
        return numel(self.shape)

    @property
    def relaxed_inputs(self) -> tuple[int, ...]:
        """Earlier nodes whose bounds this node's relaxation or envelope reads (their
        bounds are tightened by back-substitution): none for an exact node."""
        return ()


@dataclass(frozen=True, eq=False, kw_only=True)
class PInput(PNode):
    """The network input: ``z = z' = x`` and ``d = 0``."""


@dataclass(frozen=True, eq=False, kw_only=True)
class PReLU(PNode):
    """``max(x, 0)`` element-wise."""

    @property
    def relaxed_inputs(self) -> tuple[int, ...]:
        return (self.inputs[0],)


@dataclass(frozen=True, eq=False, kw_only=True)
class PPerturb(PNode):
    """A bounded perturbation: ``z_out = z + e_z`` and ``c_out = c + e_c`` with
    ``|e_z| <= delta_z`` and ``|e_c| <= delta_c`` elementwise, for *any* such ``e`` (the
    rounding of an activation quantizer: its exact value is not modelled, only its
    size). ``delta_*`` are non-negative float64, broadcastable to ``shape``.

    ``near_zero_z`` / ``near_zero_c`` (optional, non-negative, broadcastable): where
    given, the rounding is also at most the size of the node's input plus this margin,
    ``|e_z| <= |x_z| + near_zero_z`` with ``x_z`` the input's value in the original
    network (``c`` alike). True for a quantizer whose grid contains 0: the nearest grid
    point is never farther than 0 is (docs/quantization.md, "Per-element rounding
    bound"). The rules then use ``min(delta, max(|l|, |u|) + near_zero)`` per element
    and per input box, from the input's bounds ``[l, u]`` (0 where the input is 0: the
    quantizer of a dead ReLU rounds nothing)."""

    delta_z: Tensor
    delta_c: Tensor
    near_zero_z: Tensor | None = None
    near_zero_c: Tensor | None = None


@dataclass(frozen=True, eq=False, kw_only=True)
class PSelect(PNode):
    """``y = sum_i w[i] x[i]`` over the ``k`` tensors stacked on the first dimension of
    its one input (per-problem shape ``(k, *shape)``), with weights ``w`` in the original
    network and ``wc`` in the compressed one (float64, shape ``(k,)``): it lets the two
    networks of a pair take different branches. Derived: ``dw = w - wc``, the absolute
    weights, and ``changed`` (whether the two networks' weights differ)."""

    w: Tensor
    wc: Tensor
    dw: Tensor = field(init=False, repr=False)
    w_abs: Tensor = field(init=False, repr=False)
    wc_abs: Tensor = field(init=False, repr=False)
    dw_abs: Tensor = field(init=False, repr=False)
    changed: bool = field(init=False)

    def __post_init__(self) -> None:
        if self.w.shape != self.wc.shape or self.w.dim() != 1:
            raise ValueError(f"PSelect at '{self.source}': w and wc must be vectors of the "
                             f"same length, got shapes {tuple(self.w.shape)} and "
                             f"{tuple(self.wc.shape)}")
        dw = self.w - self.wc
        setattr_ = object.__setattr__
        setattr_(self, "dw", dw)
        setattr_(self, "w_abs", self.w.abs())
        setattr_(self, "wc_abs", self.wc.abs())
        setattr_(self, "dw_abs", dw.abs())
        setattr_(self, "changed", bool(dw.any()))

    @property
    def k(self) -> int:
        """The number of stacked tensors selected from."""
        return int(self.w.shape[0])

    @property
    def in_shape(self) -> tuple[int, ...]:
        """The per-problem input shape, ``(k, *shape)``."""
        return (self.k,) + tuple(self.shape)

    def _weights(self, weight: Tensor, dims: int) -> Tensor:
        return weight.reshape((1, self.k) + (1,) * (dims - 2))

    def apply(self, x: Tensor, weight: Tensor) -> Tensor:
        """``sum_i weight[i] x[:, i]`` for each problem or row on dimension 0 of ``x``
        (``(P, k, *shape)`` -> ``(P, *shape)``)."""
        return (x * self._weights(weight, x.dim())).sum(1)

    def transpose(self, rows: Tensor, weight: Tensor) -> Tensor:
        """The transposed map: ``rows`` ``(R, *shape)`` -> ``(R, k, *shape)``, ``weight[i]
        rows`` in slot ``i``."""
        return rows.unsqueeze(1) * self._weights(weight, rows.dim() + 1)


#: elements per block when a second weight is combined with one in the scratch
_BLOCK_ELEMENTS = 1 << 18


class WeightScratch:
    """A reusable buffer, per thread, into which :class:`PAffine` widens compact weights
    for its transposed maps (the back-substitution reads every layer's weights once per
    chunk of rows): one flat float64 buffer as large as the largest weight read so far,
    in pages of its own; ``w - wc`` is formed in it with ``wc`` widened a block of rows
    at a time. One per lowered pair (``lower_pair``), freed with it. A widened weight
    read through ``PAffine.w`` is a new tensor instead: a reader may hold it."""

    def __init__(self) -> None:
        self._local = threading.local()

    def widen(self, params: AffineParams) -> Tensor:
        """``params.weight`` written into the buffer: valid until the next use of the
        scratch on this thread."""
        shape, n = params.weight_shape, params.weight_shape.numel()
        buf: Tensor | None = getattr(self._local, "buf", None)
        if buf is None or buf.numel() < n or buf.dtype != params.dtype \
                or buf.device != params.device:
            self._local.buf = None  # free the old buffer first
            buf = own_pages(n, params.dtype, params.device)
            self._local.buf = buf
        return params.widen_into(buf[:n].view(shape))

    @staticmethod
    def blocks(params: AffineParams) -> list[tuple[int, int]]:
        """Row ranges (dimension 0) of about :data:`_BLOCK_ELEMENTS` elements."""
        shape = params.weight_shape
        rows = int(shape[0]) if len(shape) else 1
        step = max(1, _BLOCK_ELEMENTS // max(1, shape.numel() // max(rows, 1)))
        return [(i, min(i + step, rows)) for i in range(0, rows, step)]


@dataclass(frozen=True, eq=False, kw_only=True)
class PAffine(PNode):
    """A parametric node. ``params``/``params_c`` are the original's and the compressed
    network's parameters (the graphs' own :class:`~certcompress.ir.AffineParams`, not
    copies); ``w``/``wc`` their float64 weights in the op's layout; ``bias``/``bias_c``
    the biases broadcast to the output shape (zeros when the op has none). Derived:
    ``dw = w - wc`` (a zero view when the weights are equal), the three transposed maps
    ``t_w``, ``t_wc``, ``t_dw``, and the absolute weights. ``dw``, its transposed map and
    the absolute weights are computed where used, not stored; so are ``w``, ``wc`` and
    their transposed maps when the graph holds the weights compact (a traced float32
    model: :meth:`~certcompress.ir.AffineParams.widened`, one layer's float64 weights at a
    time). The arithmetic is the same, so the bounds are bit-identical (memory at scale:
    docs/bounds.md "Cost at scale")."""

    op: AffineOp
    in_shape: tuple[int, ...]
    params: AffineParams
    params_c: AffineParams
    bias: Tensor
    bias_c: Tensor
    #: where compact weights are widened for the transposed maps: one per lowered pair
    #: (``lower_pair`` shares it between the pair's affine nodes)
    scratch: WeightScratch = field(default_factory=WeightScratch, repr=False)
    dbias: Tensor = field(init=False, repr=False)
    changed: bool = field(init=False)
    same: bool = field(init=False, repr=False)
    t_w: Transpose = field(init=False, repr=False)
    t_wc: Transpose = field(init=False, repr=False)

    def __post_init__(self) -> None:
        p, q = self.params, self.params_c
        same, changed = q is p, True
        if not same and q.weight_shape == p.weight_shape:
            if p.is_widened and q.is_widened:
                w = self.scratch.widen(p)
                same = all(bool(torch.equal(w[i:j], q.weight_rows(i, j)))
                           for i, j in WeightScratch.blocks(q))
                changed = not same and bool(self._sub_into(w).any())
            else:
                w, wc = p.weight, q.weight
                same = bool(torch.equal(w, wc))
                changed = not same and bool((w - wc).any())
        setattr_ = object.__setattr__
        setattr_(self, "same", same)
        setattr_(self, "dbias", self.bias - self.bias_c)
        setattr_(self, "changed", (not same and changed) or bool(self.dbias.any()))
        t_w = self._transpose(p)
        setattr_(self, "t_w", t_w)
        # equal weights (a network paired with itself): one transposed map for both
        setattr_(self, "t_wc", t_w if same else self._transpose(q))

    def _sub_into(self, w: Tensor) -> Tensor:
        """``w - wc`` in place into ``w`` (the scratch), ``wc`` widened by blocks."""
        q = self.params_c
        for i, j in WeightScratch.blocks(q):
            w[i:j].sub_(q.weight_rows(i, j))
        return w

    def _transpose(self, params: AffineParams) -> Transpose:
        """The transposed map of ``params``' weight: built once over the stored weight,
        or, for compact parameters, over the weight widened (into the scratch) where the
        map is used."""
        if not params.is_widened:
            return linear_transpose(self._map(params.stored), [self.in_shape])
        in_shape = [self.in_shape]
        scratch = self.scratch

        def transpose(rows: Tensor) -> tuple[Tensor, ...]:
            return linear_transpose(self._map(scratch.widen(params)), in_shape)(rows)

        return transpose

    @property
    def w(self) -> Tensor:
        """The original's float64 weight (a new tensor per read for compact parameters)."""
        return self.params.weight

    @property
    def wc(self) -> Tensor:
        """The compressed network's float64 weight (as ``w``)."""
        return self.params_c.weight

    @property
    def weight_shape(self) -> torch.Size:
        return self.params.weight_shape

    @property
    def dw(self) -> Tensor:
        """``w - wc``, computed where used (a zero view, no copy, for equal weights)."""
        if self.same:
            p = self.params
            return torch.zeros((), dtype=p.dtype, device=p.device).expand(p.weight_shape)
        w = self.w
        # a widened weight is a new tensor: subtract in place (the same values)
        return w.sub_(self.wc) if self.params.is_widened else w - self.wc

    def t_dw(self, rows: Tensor) -> tuple[Tensor, ...]:
        """``dw^T rows``: the transposed map of ``dw``, built where used (zero rows for
        equal weights); the same vector-Jacobian product as a stored map."""
        if self.same:
            return self._zero_transpose(rows)
        if not (self.params.is_widened and self.params_c.is_widened):
            return linear_transpose(self._map(self.dw), [self.in_shape])(rows)
        dw = self._sub_into(self.scratch.widen(self.params))  # w - wc, in the scratch
        return linear_transpose(self._map(dw), [self.in_shape])(rows)

    def _zero_transpose(self, rows: Tensor) -> tuple[Tensor, ...]:
        return (torch.zeros((rows.shape[0],) + tuple(self.in_shape), dtype=rows.dtype,
                            device=rows.device),)

    # the absolute weights are computed where used, not stored: three fewer float64
    # copies of every weight tensor (memory at scale, docs/bounds.md "Cost at scale");
    # a weight read anew (compact parameters) or ``dw`` is a new tensor: abs in place
    @property
    def w_abs(self) -> Tensor:
        return _abs(self.w, self.params.is_widened)

    @property
    def wc_abs(self) -> Tensor:
        return self.w_abs if self.same else _abs(self.wc, self.params_c.is_widened)

    @property
    def dw_abs(self) -> Tensor:
        return self.dw.abs() if self.same else self.dw.abs_()

    def _map(self, weight: Tensor) -> Callable[[Tensor], Tensor]:
        op = self.op

        def f(x: Tensor) -> Tensor:
            return op.apply(x, weight, None)

        return f

    def apply(self, x: Tensor, weight: Tensor) -> Tensor:
        """``A_weight x`` (no bias) for each problem or row on dimension 0."""
        return vmap(self._map(weight))(x)


def _abs(t: Tensor, fresh: bool) -> Tensor:
    """``|t|``, in place when ``t`` is a tensor nobody else holds (``fresh``)."""
    return t.abs_() if fresh else t.abs()


@dataclass(frozen=True, eq=False, kw_only=True)
class PLinear(PNode):
    """A fixed map ``L(x_1, ..., x_k) + const`` with ``L`` linear, the same in both
    networks. ``fn`` is ``L`` on per-problem tensors, ``abs_fn`` is ``|L|`` (the same map
    with absolute weights, for radii and magnitudes), ``const`` is broadcastable to
    ``shape`` (None when zero). ``envelope = (j, groups)`` says that each output element
    is the maximum of node ``j``'s elements ``groups[..., :]`` (flat indices, shape
    ``shape + (G,)``), in both networks: a max-pooling level, whose bounds are then
    intersected with the group's envelope."""

    fn: Callable[..., Tensor]
    abs_fn: Callable[..., Tensor]
    in_shapes: tuple[tuple[int, ...], ...]
    const: Tensor | None = None
    envelope: tuple[int, Tensor] | None = None
    transpose: Transpose = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "transpose", linear_transpose(self.fn, self.in_shapes))

    @property
    def relaxed_inputs(self) -> tuple[int, ...]:
        return () if self.envelope is None else (self.envelope[0],)

    def apply(self, xs: Sequence[Tensor]) -> Tensor:
        return vmap(self.fn)(*xs)

    def apply_abs(self, xs: Sequence[Tensor]) -> Tensor:
        return vmap(self.abs_fn)(*xs)

    def const_out(self) -> Tensor:
        """The constant broadcast to the output shape (zeros when there is none)."""
        z = torch.zeros(self.shape, dtype=torch.float64)
        return z if self.const is None else z + self.const


@dataclass(frozen=True)
class PairNet:
    """The lowered pair: ``nodes`` in topological order (``nodes[0]`` the input);
    ``outputs`` are the nodes whose flattened values, concatenated in this order, form
    the network output (as :meth:`certcompress.ir.Graph.flatten_outputs` orders them)."""

    nodes: tuple[PNode, ...]
    outputs: tuple[int, ...]
    input_shape: tuple[int, ...]
    model_name: str = "model"

    @property
    def output_size(self) -> int:
        return sum(self.nodes[i].numel for i in self.outputs)

    @property
    def device(self) -> torch.device:
        """The device of the pair's parameters (the CPU for a pair without any)."""
        for n in self.nodes:
            if isinstance(n, PAffine):
                return n.params.device
        return torch.device("cpu")

    @property
    def relu_count(self) -> int:
        return sum(isinstance(n, PReLU) for n in self.nodes)

    def pre_activations(self) -> list[int]:
        """Nodes whose bounds a relaxation needs (the inputs of ReLU nodes and the nodes
        max-pooling envelopes read), in order."""
        return sorted({j for n in self.nodes for j in n.relaxed_inputs})
