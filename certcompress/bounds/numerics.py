"""Floating-point policy of the bound engine: float64, power-of-two rescaling against
overflow, outward rounding on underflow, and the relative slack a certificate adds.

What a certificate claims (recorded in it): every quantity the engine computes is a sum
of non-negative products. Under IEEE-754 round-to-nearest, a dot product of ``k``
non-negative terms computed in any order is within a factor ``(1 + gamma_k)`` of the
exact value, ``gamma_k = k*u/(1 - k*u)``, ``u = 2^-53``; relative errors compound along
the graph. The engine multiplies its float64 result by ``1 + slack`` with
``slack = (1 + gamma_K)^D / (1 - ((1 + gamma_K)^D - 1)) - 1`` (``K``: the largest number
of terms any node sums, doubled for the difference pass; ``D``: number of nodes) and
adds ``abs_slack`` for values flushed to zero by underflow. This assumes the float64
kernels compute plain sums of products (true for PyTorch's CPU float64 convolution and
GEMM, which use no Winograd or FFT transforms).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import NumericalRangeError

__all__ = ["Scaled", "renormalize", "rescale_exponent", "align", "scale_down", "float_slack",
           "to_float", "opposite_signs", "same_strict_signs", "UNIT_ROUNDOFF", "ABS_SLACK"]

UNIT_ROUNDOFF = 2.0 ** -53
ABS_SLACK = 2.0 ** -1000  # covers positive values flushed to zero (<= 2^-1022 each)
_HIGH = 2.0 ** 512
_TINY = torch.finfo(torch.float64).smallest_normal * 2.0 ** -52  # smallest subnormal


@dataclass(frozen=True)
class Scaled:
    """A non-negative tensor ``t * 2**exp`` (``exp`` an integer): values beyond float64's
    range stay representable."""

    t: Tensor
    exp: int = 0


def scale_down(t: Tensor, k: int) -> Tensor:
    """``t * 2**-k`` for ``k >= 0``, rounding positive values that underflow up to the
    smallest subnormal (outward rounding: a bound never loses mass)."""
    if k <= 0:
        return t if k == 0 else t * 2.0 ** (-k)
    out = t
    kk = k
    while kk > 0:  # 2**-k itself underflows for k > 1074
        step = min(kk, 1000)
        out = out * 2.0 ** (-step)
        kk -= step
    return torch.where((t > 0) & (out == 0), torch.full_like(out, _TINY), out)


def rescale_exponent(*ts: Tensor, where: str) -> int:
    """How many powers of two to take out of ``ts`` so their maximum stays below
    ``2**512`` (0 usually); :class:`NumericalRangeError` on a non-finite value."""
    m = max((float(t.detach().max()) for t in ts if t.numel()), default=0.0)
    if not math.isfinite(m):
        raise NumericalRangeError(
            f"a non-finite value appeared at node '{where}': the model's parameters contain "
            "inf or NaN (certcompress never propagates them)"
        )
    return int(math.floor(math.log2(m))) if m > _HIGH else 0


def renormalize(x: Scaled, where: str) -> Scaled:
    """Keep the tensor part below ``2**512``; raise on a non-finite value."""
    k = rescale_exponent(x.t, where=where)
    return Scaled(scale_down(x.t, k), x.exp + k) if k else x


def align(xs: list[Scaled]) -> tuple[list[Tensor], int]:
    """Tensors of ``xs`` on a common exponent (the largest), and that exponent."""
    e = max(x.exp for x in xs)
    return [scale_down(x.t, e - x.exp) for x in xs], e


def to_float(total: float, exp: int, what: str) -> float:
    """``total * 2**exp`` as a float, or :class:`NumericalRangeError` with its log10."""
    if total == 0.0:
        return 0.0
    try:
        value = math.ldexp(total, exp)
    except OverflowError:
        value = math.inf
    if not math.isfinite(value):
        log10 = math.log10(total) + exp * math.log10(2.0)
        raise NumericalRangeError(
            f"{what} is about 10^{log10:.1f}, beyond float64's range (10^308): the bound "
            "is astronomically vacuous; it is reported, not rounded"
        )
    return value


def float_slack(max_terms: int, depth: int) -> float:
    """Relative slack covering float64 rounding (see the module docstring)."""
    k = max(1, int(max_terms))
    gamma = k * UNIT_ROUNDOFF / (1.0 - k * UNIT_ROUNDOFF)
    grow = math.expm1(max(1, depth) * math.log1p(gamma))  # (1+gamma)^D - 1
    if grow >= 1.0:
        raise NumericalRangeError("float64 rounding cannot be bounded for this graph size")
    slack = (1.0 + grow) / (1.0 - grow) - 1.0
    return float(math.nextafter(slack * 2.0, math.inf))  # doubled, rounded up


def round_up_sum(values: Tensor) -> float:
    """A float64 upper bound of the exact sum of non-negative ``values``."""
    n = int(values.numel())
    s = float(values.sum())
    return math.nextafter(s * (1.0 + float_slack(max(n, 1), 1)), math.inf) if s > 0 else 0.0


def opposite_signs(a: Tensor, b: Tensor) -> Tensor:
    """Where ``a`` and ``b`` are both non-zero with opposite signs. Compares signs, never
    the product ``a * b``, which underflows to zero for tiny values (1e-200 * -1e-200)."""
    return ((a > 0) & (b < 0)) | ((a < 0) & (b > 0))


def same_strict_signs(a: Tensor, b: Tensor) -> Tensor:
    """Where ``a`` and ``b`` are both non-zero with the same sign (no product either)."""
    return ((a > 0) & (b > 0)) | ((a < 0) & (b < 0))
