"""The typed IR ops of a ReLU-DAG network (docs/path-metrics.md, section 1).

Every op is a frozen value describing one tensor-level operation of a traced network.
Each op family defines, once, the two maps every engine pass is built from:

``forward(inputs, params)``
    the real function, as the network computes it (used to check a trace against the
    eager model and to evaluate a graph).
``magnitude(inputs, params, constants)``
    the op in the *path-magnitude domain*: the non-negative linear map whose entries
    are the absolute values of the op's DAG edge weights, applied to non-negative
    inputs. ``params`` are already non-negative (absolute values, or min/max/difference
    of absolute values); ``constants`` says whether to add the op's fixed bias terms
    (the ``6`` of ReLU6, a scalar added to a tensor). For a parametric op the bias is
    part of ``params`` instead. Feeding all-ones inputs through ``magnitude`` with
    ``|theta|`` computes the l1 path-norm (section 4).

An op is *parametric* (``AffineOp``) when its weights belong to the model and may be
compressed; all other ops carry only fixed weights that are identical in the original
and the compressed network. Fixed weights must be such that ``magnitude`` is exactly
the DAG's absolute-weight map; each adapter that builds an op vouches for it.
"""

from __future__ import annotations

import enum
import functools
import mmap
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "NodeKind",
    "AffineParams",
    "IROp",
    "AffineOp",
    "LinearOp",
    "ConvOp",
    "ChannelAffineOp",
    "ReLUOp",
    "ClampOp",
    "LeakyReLUOp",
    "MaxPoolOp",
    "FixedLinearOp",
    "LinearCombinationOp",
    "IndexOp",
    "CatOp",
    "ActQuantOp",
]


class NodeKind(str, enum.Enum):
    """What an IR node is, in the vocabulary of the path-metric theory."""

    INPUT = "input"
    AFFINE = "affine"  # parametric affine map: Linear, ConvNd, ConvTransposeNd, BatchNorm
    ACTIVATION = "activation"  # ReLU, and piecewise-linear ops rewritten into ReLUs
    POOLING = "pooling"  # max-pooling neurons, fixed non-negative averaging maps
    WIRING = "wiring"  # add, cat, reshape, index maps, identity


class AffineParams:
    """Weight and bias of one parametric op, in the op's own layout.

    ``weight`` is the weight every pass computes with (float64 on a traced graph); it
    is stored as given, unless made by :meth:`widened`: then a compact ``stored``
    tensor (the model's own float32 weight, say) is kept, and ``weight`` is computed
    on each read as ``stored.to(dtype)`` times ``scale``, the per-output-channel factor
    of a folded BatchNorm broadcast to the weight's layout (None: no factor). Widening
    float32 (float16, bfloat16) to float64 is exact and the product is the one the fold
    computes (:meth:`AffineOp.fold_channel_affine`), so ``weight`` has the same bits as
    a float64 copy folded eagerly, at half the memory or less (docs/bounds.md, "Memory").
    Each read of ``weight`` of such parameters returns a new tensor: readers that hold
    it hold a float64 copy; ``weight_shape``, ``dtype``, ``device`` and ``numel`` read
    nothing. ``bias`` is stored as given (float64 on a traced graph).
    """

    __slots__ = ("stored", "bias", "scale", "dtype")
    stored: Tensor
    bias: Tensor | None
    scale: Tensor | None
    dtype: torch.dtype

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        setattr_ = object.__setattr__
        setattr_(self, "stored", weight)
        setattr_(self, "bias", bias)
        setattr_(self, "scale", None)
        setattr_(self, "dtype", weight.dtype)

    @classmethod
    def widened(cls, stored: Tensor, bias: Tensor | None, dtype: torch.dtype,
                scale: Tensor | None = None) -> AffineParams:
        """Parameters whose ``weight`` is ``stored.to(dtype) * scale``, computed where
        read. ``stored`` must widen exactly to ``dtype`` (a floating dtype at most as
        wide), ``scale`` be of ``dtype`` and broadcast to ``stored``'s shape."""
        if not (stored.dtype.is_floating_point and dtype.is_floating_point
                and torch.finfo(stored.dtype).bits <= torch.finfo(dtype).bits
                and torch.promote_types(stored.dtype, dtype) == dtype):
            raise TypeError(f"AffineParams.widened: {stored.dtype} does not widen exactly "
                            f"to {dtype}")
        if scale is not None and (scale.dtype != dtype or torch.broadcast_shapes(
                scale.shape, stored.shape) != stored.shape):
            raise TypeError(f"AffineParams.widened: the scale ({scale.dtype}, shape "
                            f"{tuple(scale.shape)}) must be {dtype} and broadcast to the "
                            f"weight's shape {tuple(stored.shape)}")
        out = cls(stored, bias)
        object.__setattr__(out, "scale", scale)
        object.__setattr__(out, "dtype", dtype)
        return out

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"AffineParams is immutable (cannot set '{name}')")

    def __reduce__(self) -> tuple[object, ...]:  # pickling, copying: the same storage form
        return (_rebuild_params, (self.stored, self.bias, self.scale, self.dtype))

    def __repr__(self) -> str:
        how = "" if not self.is_widened else (
            f", stored {str(self.stored.dtype).removeprefix('torch.')}"
            + ("" if self.scale is None else ", scaled"))
        return (f"AffineParams(weight {str(self.dtype).removeprefix('torch.')} "
                f"{tuple(self.stored.shape)}{how}, bias "
                f"{None if self.bias is None else tuple(self.bias.shape)})")

    @property
    def is_widened(self) -> bool:
        """Whether ``weight`` is computed from ``stored`` on each read."""
        return self.stored.dtype != self.dtype or self.scale is not None

    @property
    def weight(self) -> Tensor:
        """The weight (a new tensor on each read of widened parameters)."""
        w = self.stored
        if not self.is_widened:
            return w
        n = w.numel()
        if w.device.type == "cpu" and n * _itemsize(self.dtype) >= OWN_PAGES_BYTES:
            return self.widen_into(own_pages(n, self.dtype, w.device).view(w.shape))
        out = w.to(self.dtype)
        return out if self.scale is None else out.mul_(self.scale)

    def weight_rows(self, start: int, stop: int) -> Tensor:
        """``weight[start:stop]`` (rows on dimension 0), computed from those rows only."""
        rows = self.stored[start:stop]
        if rows.dtype != self.dtype:
            rows = rows.to(self.dtype)
        scale = self.scale
        if scale is None:
            return rows
        if scale.dim() == rows.dim() and scale.shape[0] != 1:
            scale = scale[start:stop]
        return rows * scale

    def widen_into(self, out: Tensor) -> Tensor:
        """``weight`` written into ``out`` (of the weight's shape and ``dtype``)."""
        out.copy_(self.stored)  # the same widening as ``to``
        return out if self.scale is None else out.mul_(self.scale)

    @property
    def weight_shape(self) -> torch.Size:
        return self.stored.shape

    @property
    def device(self) -> torch.device:
        return self.stored.device

    def map(self, fn: Callable[[Tensor], Tensor]) -> AffineParams:
        """Apply ``fn`` to the weight and the bias (when present)."""
        return AffineParams(fn(self.weight), None if self.bias is None else fn(self.bias))

    def numel(self) -> int:
        return self.stored.numel() + (0 if self.bias is None else self.bias.numel())


#: a widened weight of at least this many bytes is read into pages of its own (below)
OWN_PAGES_BYTES = 1 << 20


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def own_pages(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """An uninitialised flat tensor of ``n`` elements; on the CPU in pages of its own (an
    anonymous ``mmap``), returned to the system as soon as the tensor is freed. A widened
    weight is read, used and freed many times (one layer at a time); from the C heap,
    glibc keeps the freed pages once its dynamic mmap threshold has grown past the
    weight's size, and the holes fragment: the peak RSS of the bounds tier on resnet18
    varied by 250 MB between identical runs (docs/bounds.md, "Memory"). This changes no
    allocator setting."""
    if device.type != "cpu" or n == 0:
        return torch.empty(n, dtype=dtype, device=device)
    return torch.frombuffer(mmap.mmap(-1, n * _itemsize(dtype)), dtype=dtype, count=n)


def _rebuild_params(stored: Tensor, bias: Tensor | None, scale: Tensor | None,
                    dtype: torch.dtype) -> AffineParams:
    if stored.dtype == dtype and scale is None:
        return AffineParams(stored, bias)
    return AffineParams.widened(stored, bias, dtype, scale)


class IROp(ABC):
    """Base of every IR op. Subclasses are frozen dataclasses; see the module docstring.

    Override map: ``forward`` and ``magnitude`` always; ``arity`` when the op takes more
    than one tensor input; ``describe`` for a readable summary.
    """

    kind: ClassVar[NodeKind]
    parametric: ClassVar[bool] = False
    arity: ClassVar[int | None] = 1  # None: any number of tensor inputs

    @abstractmethod
    def forward(self, inputs: Sequence[Tensor], params: AffineParams | None) -> Tensor:
        """The real function of the op."""

    @abstractmethod
    def magnitude(
        self, inputs: Sequence[Tensor], params: AffineParams | None, constants: bool
    ) -> Tensor:
        """The op's absolute-weight map on non-negative inputs (see module docstring)."""

    def describe(self) -> str:
        """A one-line description used in graph summaries and structure checks."""
        return type(self).__name__


# --------------------------------------------------------------------------- affine


class AffineOp(IROp):
    """A parametric affine map ``x -> A_W(x) + b`` (``A_W`` bilinear in ``W`` and ``x``).

    ``apply`` is both the real function and the magnitude map (for non-negative W, b).
    ``fold_channel_affine`` absorbs a following per-channel map ``y*a + c`` (an eval-mode
    BatchNorm) into the parameters: ``W' = W*a`` per output channel, ``b' = a*b + c``.
    """

    kind = NodeKind.AFFINE
    parametric = True

    @abstractmethod
    def apply(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """``A_W(x) + b``."""

    @abstractmethod
    def out_channels(self, params: AffineParams) -> int:
        """Number of output channels (the axis a following BatchNorm scales)."""

    def forward(self, inputs: Sequence[Tensor], params: AffineParams | None) -> Tensor:
        assert params is not None
        return self.apply(inputs[0], params.weight, params.bias)

    def magnitude(
        self, inputs: Sequence[Tensor], params: AffineParams | None, constants: bool
    ) -> Tensor:
        assert params is not None
        return self.apply(inputs[0], params.weight, params.bias)

    def is_batched(self, x: Tensor) -> bool:
        """Whether dimension 0 of ``x`` is a batch dimension the op maps independently."""
        return x.dim() >= 2

    def apply_many(self, xs: Sequence[Tensor], weight: Tensor) -> list[Tensor]:
        """``[A_W(x) for x in xs]`` (no bias), in one batched call when possible."""
        if all(self.is_batched(x) for x in xs):
            sizes = [x.shape[0] for x in xs]
            return list(self.apply(torch.cat(list(xs), 0), weight, None).split(sizes, 0))
        return [self.apply(x, weight, None) for x in xs]

    def add_bias(self, y: Tensor, bias: Tensor) -> Tensor:
        """``y + b`` with ``b`` broadcast over the output channels (dimension 1)."""
        return y + bias.reshape((1, -1) + (1,) * (y.dim() - 2))

    def out_scale_view(self, weight_shape: Sequence[int], a: Tensor) -> Tensor | None:
        """``a`` (one factor per output channel) reshaped to broadcast over a weight of
        ``weight_shape``, so that ``weight * view`` scales each output channel; None
        when no such view exists (the channels are not one dimension of the layout)."""
        return None

    def scale_weight_out(self, weight: Tensor, a: Tensor) -> Tensor:
        """Multiply the weight by ``a[o]`` for every output channel ``o``."""
        view = self.out_scale_view(weight.shape, a)
        assert view is not None, f"{type(self).__name__} must override scale_weight_out"
        return weight * view

    def fold_channel_affine(self, params: AffineParams, a: Tensor, c: Tensor) -> AffineParams:
        bias = c.clone() if params.bias is None else params.bias * a + c
        view = self.out_scale_view(params.weight_shape, a)
        if params.stored.dtype != params.dtype and params.scale is None and view is not None:
            # compact parameters stay compact: ``weight`` computes ``stored.to(dtype) *
            # view`` where read, the product computed here otherwise (same bits)
            return AffineParams.widened(params.stored, bias, params.dtype, view)
        return AffineParams(self.scale_weight_out(params.weight, a), bias)


@dataclass(frozen=True)
class LinearOp(AffineOp):
    """``F.linear``: weight ``(out, in)``, bias ``(out,)``; acts on the last dimension."""

    def apply(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.linear(x, weight, bias)

    def out_channels(self, params: AffineParams) -> int:
        return int(params.weight_shape[0])

    def add_bias(self, y: Tensor, bias: Tensor) -> Tensor:
        return y + bias

    def out_scale_view(self, weight_shape: Sequence[int], a: Tensor) -> Tensor | None:
        return a.reshape(-1, 1)

    def describe(self) -> str:
        return "Linear"


@dataclass(frozen=True)
class ConvOp(AffineOp):
    """N-d convolution or transposed convolution with zero padding.

    ``weight``: ``(out, in/groups, *k)`` for a convolution, ``(in, out/groups, *k)`` for a
    transposed one (PyTorch's layouts). A non-zero padding mode (reflect, replicate,
    circular) is ``pre_pad``: an index map copying input neurons, applied first.
    """

    dim: int
    stride: tuple[int, ...]
    padding: tuple[int, ...] | str
    dilation: tuple[int, ...]
    groups: int
    transposed: bool = False
    output_padding: tuple[int, ...] = ()
    pre_pad: tuple[int, ...] = ()  # F.pad widths for a non-zero padding mode
    pad_mode: str = "zeros"

    def apply(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self.pre_pad:
            x = F.pad(x, self.pre_pad, mode=self.pad_mode)
        if self.transposed:
            fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[self.dim - 1]
            return fn(  # type: ignore[operator]
                x, weight, bias, self.stride, self.padding,  # type: ignore[arg-type]
                self.output_padding, self.groups, self.dilation,
            )
        conv = (F.conv1d, F.conv2d, F.conv3d)[self.dim - 1]
        return conv(x, weight, bias, self.stride, self.padding,  # type: ignore[arg-type]
                    self.dilation, self.groups)

    def is_batched(self, x: Tensor) -> bool:
        return x.dim() == self.dim + 2

    def out_channels(self, params: AffineParams) -> int:
        w = params.weight_shape
        return int(w[1] * self.groups) if self.transposed else int(w[0])

    def out_scale_view(self, weight_shape: Sequence[int], a: Tensor) -> Tensor | None:
        if not self.transposed:
            return a.reshape((-1,) + (1,) * (len(weight_shape) - 1))
        if self.groups == 1:  # (in, out, *k)
            return a.reshape((1, -1) + (1,) * (len(weight_shape) - 2))
        return None

    def scale_weight_out(self, weight: Tensor, a: Tensor) -> Tensor:
        view = self.out_scale_view(weight.shape, a)
        if view is not None:
            return weight * view
        g = self.groups
        in_ch, out_per_g = weight.shape[0], weight.shape[1]
        w = weight.reshape((g, in_ch // g, out_per_g) + tuple(weight.shape[2:]))
        scale = a.reshape((g, 1, out_per_g) + (1,) * (weight.dim() - 2))
        return (w * scale).reshape(weight.shape)

    def describe(self) -> str:
        name = f"ConvTranspose{self.dim}d" if self.transposed else f"Conv{self.dim}d"
        pad = f", pad_mode={self.pad_mode}" if self.pre_pad else ""
        return (
            f"{name}(stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"groups={self.groups}{pad})"
        )


@dataclass(frozen=True)
class ChannelAffineOp(AffineOp):
    """Per-channel affine map ``y[:, c] = x[:, c] * w[c] + b[c]`` (eval-mode BatchNorm).

    Channels are on dimension 1. Used when a BatchNorm cannot be folded into the op
    before it (docs/path-metrics.md, section 1: an identity neuron per channel with weight
    ``gamma/sqrt(var+eps)`` and bias ``beta - mean*gamma/sqrt(var+eps)``).
    """

    def _shape(self, x: Tensor) -> tuple[int, ...]:
        return (1, -1) + (1,) * (x.dim() - 2)

    def apply(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        y = x * weight.reshape(self._shape(x))
        return y if bias is None else y + bias.reshape(self._shape(x))

    def out_channels(self, params: AffineParams) -> int:
        return int(params.weight_shape[0])

    def out_scale_view(self, weight_shape: Sequence[int], a: Tensor) -> Tensor | None:
        return a

    def describe(self) -> str:
        return "ChannelAffine"


# ----------------------------------------------------------------------- activations


@dataclass(frozen=True)
class ReLUOp(IROp):
    """ReLU neurons. In the magnitude domain every input is >= 0, so ReLU is identity."""

    kind: ClassVar[NodeKind] = NodeKind.ACTIVATION

    def forward(self, inputs: Sequence[Tensor], params: AffineParams | None) -> Tensor:
        return torch.relu(inputs[0])

    def magnitude(
        self, inputs: Sequence[Tensor], params: AffineParams | None, constants: bool
    ) -> Tensor:
        return inputs[0]

    def describe(self) -> str:
        return "ReLU"


@dataclass(frozen=True)
class ClampOp(IROp):
    """``clamp(z, lower, upper)`` rewritten exactly into ReLU-DAG form.

    ReLU6 and Hardtanh are clamps. With ``lo < hi`` (docs/path-metrics.md, section 1):
    ``clamp(z, lo, hi) = lo + ReLU(z - lo) - ReLU(z - hi)``: two ReLU neurons fed by
    ``z`` with weight 1 and biases ``-lo``, ``-hi``, and an identity neuron with bias
    ``lo`` and incoming weights ``+1, -1``. Only one bound: ``lo + ReLU(z - lo)`` or
    ``hi - ReLU(hi - z)``. Magnitude: ``2x + 2|lo| + |hi|`` (both bounds),
    ``x + 2|lo|`` or ``x + 2|hi|`` (one bound). Treating ReLU6 as a ReLU would
    under-estimate; this does not.
    """

    kind: ClassVar[NodeKind] = NodeKind.ACTIVATION
    lower: float | None
    upper: float | None

    def forward(self, inputs: Sequence[Tensor], params: AffineParams | None) -> Tensor:
        return torch.clamp(inputs[0], self.lower, self.upper)

    def magnitude(
        self, inputs: Sequence[Tensor], params: AffineParams | None, constants: bool
    ) -> Tensor:
        x = inputs[0]
        lo, hi = self.lower, self.upper
        if lo is not None and hi is not None:
            out = 2.0 * x
            const = 2.0 * abs(lo) + abs(hi)
        else:
            out = x
            const = 2.0 * abs(lo if lo is not None else hi)  # type: ignore[arg-type]
        return out + const if constants and const != 0.0 else out

    def describe(self) -> str:
        return f"Clamp(lower={self.lower}, upper={self.upper})"


@dataclass(frozen=True)
class LeakyReLUOp(IROp):
    """``LeakyReLU(z) = ReLU(z) - s*ReLU(-z)`` as two ReLU neurons; magnitude ``(1+|s|)x``."""

    kind: ClassVar[NodeKind] = NodeKind.ACTIVATION
    negative_slope: float

    def forward(self, inputs: Sequence[Tensor], params: AffineParams | None) -> Tensor:
        return F.leaky_relu(inputs[0], self.negative_slope)

    def magnitude(
        self, inputs: Sequence[Tensor], params: AffineParams | None, constants: bool
    ) -> Tensor:
        return inputs[0] * (1.0 + abs(self.negative_slope))

    def describe(self) -> str:
        return f"LeakyReLU({self.negative_slope})"


# --------------------------------------------------------------------------- pooling


def _sum_pool(x: Tensor, op: MaxPoolOp, out_shape: Sequence[int]) -> Tensor:
    """Sum over exactly the windows ``max_pool`` uses (padding and ``ceil_mode`` too).

    Zero padding contributes nothing, so a ones-kernel convolution over a zero-padded
    input sums each window's real elements. ``ceil_mode`` adds windows on the right;
    extra right padding reproduces the output size ``max_pool`` gives.
    """
    d = op.dim
    spatial_in = x.shape[-d:]
    spatial_out = out_shape[-d:]
    pads: list[int] = []
    for i in reversed(range(d)):
        need = (spatial_out[i] - 1) * op.stride[i] + op.dilation[i] * (op.kernel_size[i] - 1) + 1
        extra = max(0, need - (spatial_in[i] + 2 * op.padding[i]))
        pads.extend([op.padding[i], op.padding[i] + extra])
    xp = F.pad(x, pads)
    xp = xp.reshape((-1, 1) + tuple(xp.shape[-d:]))
    kernel = torch.ones((1, 1) + tuple(op.kernel_size), dtype=x.dtype, device=x.device)
    conv = (F.conv1d, F.conv2d, F.conv3d)[d - 1]
    y = conv(xp, kernel, None, op.stride, 0, op.dilation)
    return y.reshape(tuple(x.shape[:-d]) + tuple(y.shape[-d:]))


@dataclass(frozen=True)
class MaxPoolOp(IROp):
    """Max-pooling neurons (1-max-pool, incoming weights 1); magnitude: window sums."""

    kind: ClassVar[NodeKind] = NodeKind.POOLING
    dim: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    ceil_mode: bool

    def forward(self, inputs: Sequence[Tensor], params: AffineParams | None) -> Tensor:
        fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[self.dim - 1]
        return fn(
            inputs[0], self.kernel_size, self.stride, self.padding, self.dilation,
            ceil_mode=self.ceil_mode,
        )

    def magnitude(
        self, inputs: Sequence[Tensor], params: AffineParams | None, constants: bool
    ) -> Tensor:
        x = inputs[0]
        out_shape = self.forward([torch.empty(x.shape, dtype=x.dtype, device="meta")], None).shape
        return _sum_pool(x, self, out_shape)

    def describe(self) -> str:
        return (
            f"MaxPool{self.dim}d(kernel={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, ceil_mode={self.ceil_mode})"
        )


@dataclass(frozen=True)
class _SelfMagnitudeOp(IROp):
    """A one-input map ``fn`` that is its own magnitude map (non-negative weights or a
    pure index map); ``name(args_repr)`` describes it."""

    name: str
    fn: Callable[[Tensor], Tensor] = field(compare=False)
    args_repr: str = ""

    def forward(self, inputs: Sequence[Tensor], params: AffineParams | None) -> Tensor:
        return self.fn(inputs[0])

    def magnitude(
        self, inputs: Sequence[Tensor], params: AffineParams | None, constants: bool
    ) -> Tensor:
        return self.fn(inputs[0])

    def describe(self) -> str:
        return f"{self.name}({self.args_repr})"


@dataclass(frozen=True)
class FixedLinearOp(_SelfMagnitudeOp):
    """A fixed linear map with non-negative weights (average pooling, adaptive average
    pooling with uneven windows, mean, nearest/bilinear interpolation).

    ``fn(x)`` is both the real function and the magnitude map: for non-negative weights
    the absolute-weight map is the map itself. The adapter that builds one vouches that
    the weights are non-negative (bicubic interpolation, for instance, is refused).
    """

    kind: ClassVar[NodeKind] = NodeKind.POOLING


# ---------------------------------------------------------------------------- wiring


@dataclass(frozen=True)
class LinearCombinationOp(IROp):
    """``sum_i c_i * x_i + const`` with fixed scalar coefficients (add, sub, neg, scalar
    mul/div, scalar add). Broadcasting copies neurons (identity neurons, weight 1).
    Magnitude: ``sum_i |c_i| x_i (+ |const|)``.
    """

    kind: ClassVar[NodeKind] = NodeKind.WIRING
    arity: ClassVar[int | None] = None
    coefficients: tuple[float, ...]
    const: float = 0.0

    def forward(self, inputs: Sequence[Tensor], params: AffineParams | None) -> Tensor:
        out = functools.reduce(
            torch.add, (x * c if c != 1.0 else x for x, c in zip(inputs, self.coefficients))
        )
        return out + self.const if self.const != 0.0 else out

    def magnitude(
        self, inputs: Sequence[Tensor], params: AffineParams | None, constants: bool
    ) -> Tensor:
        out = functools.reduce(
            torch.add,
            (x * abs(c) if abs(c) != 1.0 else x for x, c in zip(inputs, self.coefficients)),
        )
        return out + abs(self.const) if constants and self.const != 0.0 else out

    def describe(self) -> str:
        return f"LinearCombination({self.coefficients}, const={self.const})"


@dataclass(frozen=True)
class IndexOp(_SelfMagnitudeOp):
    """A pure index map: each output element is a copy of one input element, or absent.

    flatten, view, reshape, permute, transpose, getitem slicing, squeeze, unsqueeze,
    contiguous, split outputs, non-zero padding modes, Identity and eval-mode Dropout.
    The same function serves as real function and magnitude map.
    """

    kind: ClassVar[NodeKind] = NodeKind.WIRING


@dataclass(frozen=True)
class CatOp(IROp):
    """Concatenation of neuron sets along ``dim``."""

    kind: ClassVar[NodeKind] = NodeKind.WIRING
    arity: ClassVar[int | None] = None
    dim: int

    def forward(self, inputs: Sequence[Tensor], params: AffineParams | None) -> Tensor:
        return torch.cat(list(inputs), dim=self.dim)

    def magnitude(
        self, inputs: Sequence[Tensor], params: AffineParams | None, constants: bool
    ) -> Tensor:
        return torch.cat(list(inputs), dim=self.dim)

    def describe(self) -> str:
        return f"Cat(dim={self.dim})"


# ------------------------------------------------------------- activation quantization


@dataclass(frozen=True)
class ActQuantOp(IROp):
    """Per-tensor activation quantization (fake quantization), ``Q(x) = (q - zp) * scale``
    with ``q = clamp(round(x / scale) + zp, qmin, qmax)`` (round half to even, as
    onnxruntime's ``QuantizeLinear``).

    In a certified *pair* the node exists in both graphs: ``enabled=False`` in the
    original (identity) and ``enabled=True`` in the compressed one. It is *not* a fixed
    op: the bounds tier models it as the exact clipping ``clamp(x, lo, hi)`` with
    ``lo = (qmin - zp) * scale``, ``hi = (qmax - zp) * scale``, plus a bounded
    perturbation ``|e| <= delta`` (:attr:`delta`: ``scale / 2`` plus ``slack``, which
    covers the floating-point evaluation of the rounding and, for an int8 kernel, its
    requantization; docs/quantization.md, "Activation quantization"). ``magnitude`` is
    the identity for a disabled quantizer and refuses an enabled one: a pass that only
    knows fixed ops must not mistake a quantizer for the identity.
    """

    kind: ClassVar[NodeKind] = NodeKind.ACTIVATION
    scale: float
    zero_point: int
    qmin: int
    qmax: int
    enabled: bool = True
    slack: float = 0.0

    @property
    def lower(self) -> float:
        return (self.qmin - self.zero_point) * self.scale

    @property
    def upper(self) -> float:
        return (self.qmax - self.zero_point) * self.scale

    @property
    def delta(self) -> float:
        """Bound on ``|Q(x) - clamp(x, lower, upper)|`` (rounding plus ``slack``)."""
        return 0.5 * self.scale + self.slack

    def forward(self, inputs: Sequence[Tensor], params: AffineParams | None) -> Tensor:
        x = inputs[0]
        if not self.enabled:
            return x
        q = torch.clamp(torch.round(x / self.scale) + self.zero_point, self.qmin, self.qmax)
        return (q - self.zero_point) * self.scale

    def magnitude(
        self, inputs: Sequence[Tensor], params: AffineParams | None, constants: bool
    ) -> Tensor:
        if self.enabled:
            raise TypeError(
                "an enabled activation quantizer has no absolute-weight map: its rounding "
                "is bounded by the path-metric and bounds tiers explicitly "
                "(certcompress.bounds.pathmetric, lowering)")
        return inputs[0]

    def describe(self) -> str:
        return "ActQuant"
