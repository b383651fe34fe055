"""The activation quantizer module: a per-tensor fake quantization that the tracer
captures as :class:`~certcompress.ir.ops.ActQuantOp` and ``torch.onnx.export`` writes as a
``QuantizeLinear`` / ``DequantizeLinear`` pair (the layout onnxruntime fuses into int8
kernels)."""

from __future__ import annotations

import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers quantized_decomposed)
from torch import Tensor, nn

from ..ir.ops import ActQuantOp

__all__ = ["ActivationQuantizer", "ACT_SLACK_REL", "ACT_SLACK_RANGE", "default_slack"]

#: slack of each quantizer's rounding bound, in units of its scale and of its range:
#: covers float32 evaluation of ``round(x / scale)``, the dequantization product and an
#: int8 kernel's requantization (multiplier rounding, a few ulps of values <= 2^8 scales)
ACT_SLACK_REL = 2.0 ** -8
ACT_SLACK_RANGE = 2.0 ** -18


def default_slack(scale: float, zero_point: int, qmin: int, qmax: int) -> float:
    """``scale * ACT_SLACK_REL + max(|lo|, |hi|) * ACT_SLACK_RANGE``."""
    return scale * ACT_SLACK_REL + max(abs((qmin - zero_point) * scale),
                                       abs((qmax - zero_point) * scale)) * ACT_SLACK_RANGE


class ActivationQuantizer(nn.Module):
    """``Q(x) = (clamp(round(x / scale) + zero_point, qmin, qmax) - zero_point) * scale``.

    ``enabled=False`` makes it the identity (the original model of a certified pair has
    the same nodes, disabled). ``slack`` (>= 0) is added to the rounding bound
    ``scale / 2`` the certificate uses (floating-point evaluation of the rounding,
    requantization by an int8 kernel). Works in any float dtype; in an ONNX export it is
    ``torch.fake_quantize_per_tensor_affine`` (a QDQ pair, uint8 when ``qmin >= 0``).
    """

    def __init__(self, scale: float, zero_point: int, qmin: int, qmax: int, *,
                 enabled: bool = True, slack: float = 0.0) -> None:
        super().__init__()
        self.eval()
        self.op = ActQuantOp(float(scale), int(zero_point), int(qmin), int(qmax),
                             bool(enabled), float(slack))

    @property
    def scale(self) -> float:
        return self.op.scale

    @property
    def zero_point(self) -> int:
        return self.op.zero_point

    @property
    def enabled(self) -> bool:
        return self.op.enabled

    def forward(self, x: Tensor) -> Tensor:
        op = self.op
        if not op.enabled:
            return x
        if x.dtype == torch.float32:  # exported as QuantizeLinear -> DequantizeLinear
            qd = torch.ops.quantized_decomposed
            dtype = torch.uint8 if op.qmin >= 0 else torch.int8
            q = qd.quantize_per_tensor.default(x, op.scale, op.zero_point, op.qmin, op.qmax,
                                               dtype)
            return qd.dequantize_per_tensor.default(q, op.scale, op.zero_point, op.qmin,
                                                    op.qmax, dtype)
        return op.forward([x], None)

    def extra_repr(self) -> str:
        op = self.op
        return (f"scale={op.scale:.6g}, zero_point={op.zero_point}, range=[{op.qmin}, "
                f"{op.qmax}], enabled={op.enabled}")
