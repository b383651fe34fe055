"""Symmetric uniform quantizers: round-to-nearest onto a grid that contains zero.

A tensor ``w`` quantized with ``b`` bits gets integer codes ``q`` in ``[-Q, Q]``,
``Q = 2**(b-1) - 1`` (the symmetric "narrow" range, zero point 0), and a scale ``s``
per tensor or per output channel, ``s = max|w| / Q`` computed in float64 and stored in
the tensor's dtype (onnxruntime's convention for symmetric int8/int16 weights, so an
ONNX ``DequantizeLinear`` rebuilds the values bit-exactly). The quantized values are
``q * s`` evaluated in the tensor's dtype: a single correctly rounded product.

Because ``0`` is on the grid and ``round(w/s)`` has the sign of ``w``, quantization never
flips a sign and keeps every zero at zero (docs/path-metrics.md, section 4);
:meth:`QuantizedWeights.verify` checks it on every tensor and raises otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeGuard

import torch
from torch import Tensor, nn

from ...bounds.numerics import opposite_signs
from ...errors import ConfigurationError, SoundnessError

__all__ = ["WEIGHT_BITS", "GRANULARITIES", "QUANTIZABLE_TYPES", "QuantizedWeights", "qmax",
           "affine_layers", "channel_absmax", "channel_axis", "grid_scale", "quantize_tensor",
           "param_name", "weight_of"]

WEIGHT_BITS: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8, 16)
GRANULARITIES: tuple[str, ...] = ("per-channel", "per-tensor")
QUANTIZABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.modules.conv._ConvNd)
_FLOAT_DTYPES = (torch.float32, torch.float64)


def qmax(bits: int) -> int:
    """Largest code of the symmetric ``bits``-bit grid: ``2**(bits-1) - 1``."""
    return 2 ** (bits - 1) - 1


def valid_bits(bits: object) -> TypeGuard[int]:
    """Whether ``bits`` is a supported width (an int in ``WEIGHT_BITS``, not a bool)."""
    return isinstance(bits, int) and not isinstance(bits, bool) and bits in WEIGHT_BITS


def _code_dtype(bits: int) -> torch.dtype:
    return torch.int8 if bits <= 8 else torch.int16


def param_name(layer: str, attr: str) -> str:
    """Qualified parameter name of ``layer``'s ``attr`` (``layer`` may be the root, ``""``)."""
    return f"{layer}.{attr}" if layer else attr


def affine_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every ``nn.Linear``, ``nn.ConvNd`` and ``nn.ConvTransposeNd`` with a weight, by
    qualified module name, in ``named_modules`` order."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, QUANTIZABLE_TYPES) and isinstance(getattr(m, "weight", None), Tensor)}


def weight_of(module: nn.Module) -> Tensor:
    """The ``weight`` tensor of an affine layer (as listed by :func:`affine_layers`)."""
    w = getattr(module, "weight", None)
    if not isinstance(w, Tensor):
        raise ConfigurationError(f"{type(module).__name__} has no weight tensor to quantize")
    return w


def channel_axis(module: nn.Module) -> int:
    """The output-channel axis of a module's weight: 1 for a transposed convolution
    (``(in, out/groups, *k)``, onnxruntime's axis for ConvTranspose), 0 otherwise."""
    return 1 if getattr(module, "transposed", False) else 0


def _broadcast(scale: Tensor, axis: int | None, ndim: int) -> Tensor:
    if axis is None:
        return scale.reshape(())
    shape = [1] * ndim
    shape[axis] = -1
    return scale.reshape(shape)


@dataclass(frozen=True)
class QuantizedWeights:
    """The grid of one tensor: ``values = codes * scale`` (scale broadcast along ``axis``).

    ``param`` is the qualified parameter name (``layer1.0.conv1.weight``), ``layer`` the
    module; ``scale`` is 1-D (one entry per channel along ``axis``, or one entry when
    ``axis`` is None) in the tensor's dtype; ``codes`` are integers in
    ``[-qmax, qmax]`` with the tensor's shape (int8 up to 8 bits, int16 for 16).
    The zero point is always 0. This is what an ONNX exporter needs for QDQ weights.
    """

    param: str
    layer: str
    bits: int
    granularity: str
    axis: int | None
    scale: Tensor
    codes: Tensor

    @property
    def qmax(self) -> int:
        return qmax(self.bits)

    @property
    def zero_point(self) -> int:
        return 0

    def values(self) -> Tensor:
        """The quantized tensor, ``codes * scale`` in the scale's dtype (exactly the
        values the quantized model holds)."""
        return self.codes.to(self.scale.dtype) * _broadcast(self.scale, self.axis,
                                                            self.codes.dim())

    def verify(self, original: Tensor) -> None:
        """Check the grid invariants against the float tensor.

        Raises :class:`SoundnessError` if a sign flipped, a zero moved off zero, a code
        left its range or a scale is not a positive finite number: any of these would be
        a bug, and a certificate built on such values would be wrong.
        """
        problems = []
        v = self.values()
        x = original.detach().to(v.dtype)
        if v.shape != x.shape:
            problems.append(f"shape {tuple(v.shape)} differs from the tensor's {tuple(x.shape)}")
        else:
            n_flip = int(opposite_signs(v, x).sum())
            n_zero = int(((x == 0) & (v != 0)).sum())
            if n_flip:
                problems.append(f"{n_flip} sign flip(s)")
            if n_zero:
                problems.append(f"{n_zero} zero(s) moved off zero")
        if self.codes.numel():
            lo, hi = torch.aminmax(self.codes)
            if max(-int(lo), int(hi)) > self.qmax:
                problems.append(f"codes outside [-{self.qmax}, {self.qmax}]")
        if not bool(torch.isfinite(self.scale).all()) or bool((self.scale <= 0).any()):
            problems.append("a scale that is not a positive finite number")
        if problems:
            raise SoundnessError(
                f"quantizing '{self.param}' to {self.bits} bits broke the grid invariants: "
                f"{', '.join(problems)}. This is a bug in certcompress; please report it.")

    def to_dict(self) -> dict[str, object]:
        """JSON-ready metadata and scales (codes are recovered from the stored values)."""
        return {"layer": self.layer, "bits": self.bits, "granularity": self.granularity,
                "axis": self.axis, "dtype": str(self.scale.dtype).removeprefix("torch."),
                "shape": list(self.codes.shape), "zero_point": 0,
                "scale": [float(s) for s in self.scale.reshape(-1).tolist()]}


def channel_absmax(t: Tensor, granularity: str, axis: int | None
                   ) -> tuple[Tensor, int | None]:
    """``max|t|`` per channel along ``axis`` (``"per-channel"``, tensors of 2+ dims) or
    over the tensor (1 entry), as float64 (exact: a max of magnitudes), and the axis used."""
    x = t.detach()
    if granularity == "per-channel" and x.dim() >= 2:
        assert axis is not None
        dims = [d for d in range(x.dim()) if d != axis]
        return x.abs().amax(dim=dims).double(), axis
    if not x.numel():
        return torch.zeros(1, dtype=torch.float64), None
    return x.abs().max().double().reshape(1), None


def grid_scale(t: Tensor, bits: int, granularity: str, axis: int | None,
               absmax: tuple[Tensor, int | None] | None = None) -> tuple[Tensor, int | None]:
    """The grid step of ``t`` (1-D, in ``t``'s dtype) and the axis it runs along (None
    for one scale): ``max|t| / qmax`` per channel or per tensor, computed in float64 and
    rounded to ``t``'s dtype; 1 where that is below the dtype's smallest normal number.
    A non-finite ``t`` gives a non-finite scale. ``absmax``: :func:`channel_absmax` of
    ``t``, when already known."""
    amax, used_axis = absmax if absmax is not None else channel_absmax(t, granularity, axis)
    scale64 = amax / qmax(bits)
    tiny = torch.finfo(t.dtype).tiny
    scale = torch.where(scale64 < tiny, torch.ones_like(scale64), scale64).to(t.dtype)
    return scale, used_axis


def quantize_tensor(t: Tensor, bits: int, granularity: str, axis: int | None, *,
                    param: str, layer: str) -> QuantizedWeights:
    """Quantize ``t`` to the symmetric ``bits``-bit grid, round-to-nearest (ties to even).

    ``granularity`` is ``"per-channel"`` (one scale per index of ``axis``) or
    ``"per-tensor"``. A channel whose scale would be below the dtype's smallest normal
    number (an all-zero channel) gets scale 1 and all-zero codes (onnxruntime does
    the same). The result is verified (:meth:`QuantizedWeights.verify`).
    """
    if not valid_bits(bits):
        raise ConfigurationError(f"bits of '{param}' must be one of {list(WEIGHT_BITS)}, "
                                 f"got {bits!r}")
    if granularity not in GRANULARITIES:
        raise ConfigurationError(f"granularity of '{param}' must be one of "
                                 f"{list(GRANULARITIES)}, got {granularity!r}")
    x = t.detach()
    if x.dtype not in _FLOAT_DTYPES:
        raise ConfigurationError(
            f"'{param}' has dtype {x.dtype}; quantization needs float32 or float64 weights "
            "(convert the model with model.float() first)")
    grid = raw_grid(x, bits, granularity, axis, param=param, layer=layer)
    grid.verify(x)
    return grid


def raw_grid(x: Tensor, bits: int, granularity: str, axis: int | None, *, param: str,
             layer: str, absmax: tuple[Tensor, int | None] | None = None) -> QuantizedWeights:
    """:func:`quantize_tensor` without the input and invariant checks (for the
    allocator's candidates; every model it returns is re-quantized with the checks).
    ``absmax``: :func:`channel_absmax` of ``x``, when already known."""
    q = qmax(bits)
    scale, used_axis = grid_scale(x, bits, granularity, axis, absmax)
    if not bool(torch.isfinite(scale).all()):  # max|w| is inf or NaN exactly when some w is
        raise ConfigurationError(f"'{param}' contains inf or NaN; it cannot be quantized")
    codes = torch.round_(x.detach() / _broadcast(scale, used_axis, x.dim())).clamp_(-q, q)
    return QuantizedWeights(param=param, layer=layer, bits=bits,
                            granularity=granularity if used_axis is not None else "per-tensor",
                            axis=used_axis, scale=scale, codes=codes.to(_code_dtype(bits)))
