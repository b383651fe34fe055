"""Activations: ReLU, and the piecewise-linear ones rewritten exactly into ReLUs
(ReLU6, Hardtanh, clamp, LeakyReLU). Smooth activations (GELU, SiLU, sigmoid, tanh,
softmax) have no adapter and are refused by the tracer, naming the node."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ...ir.ops import ClampOp, IROp, LeakyReLUOp, ReLUOp
from ..fakequant import ActivationQuantizer
from .base import Adapter, Converted, Unsupported

aten = torch.ops.aten


def _clamp_op(lo: Any, hi: Any) -> IROp:
    for v in (lo, hi):
        if v is not None and not isinstance(v, (int, float)):
            raise Unsupported("clamp bounds must be Python numbers (tensor bounds are not "
                              "a fixed ReLU-DAG rewrite)")
    if lo is None and hi is None:
        raise Unsupported("clamp without bounds")
    lo_f = None if lo is None else float(lo)
    hi_f = None if hi is None else float(hi)
    if lo_f is not None and hi_f is not None and not lo_f < hi_f:
        raise Unsupported(f"clamp with lower bound {lo_f} >= upper bound {hi_f}")
    if lo_f == 0.0 and hi_f is None:
        return ReLUOp()
    return ClampOp(lower=lo_f, upper=hi_f)


class ReLUAdapter(Adapter):
    """``nn.ReLU``, ``F.relu``, ``torch.relu``, ``Tensor.relu`` and in-place forms."""

    name = "relu"
    inplace_safe = True  # the op built is the value the in-place form writes

    def _convert(self, node: fx.Node, ctx: Any) -> Converted:
        return Converted(ReLUOp(), (ctx.tensor_arg(node.args[0]),))


class ClampAdapter(Adapter):
    """``nn.ReLU6``, ``nn.Hardtanh``, ``F.relu6``, ``F.hardtanh``, ``torch.clamp``."""

    name = "clamp"
    inplace_safe = True  # the op built is the value the in-place form writes

    def _convert(self, node: fx.Node, ctx: Any) -> Converted:
        if node.op == "call_module":
            m = ctx.module(node)
            op = _clamp_op(m.min_val, m.max_val)
            return Converted(op, (ctx.tensor_arg(node.args[0]),), module=str(node.target))
        target = node.target
        if target in (F.relu6, aten.relu6.default):
            a = ctx.bind(node, ("input",), {})
            lo, hi = 0.0, 6.0
        elif target in (F.hardtanh, F.hardtanh_, aten.hardtanh.default, aten.hardtanh_.default):
            a = ctx.bind(node, ("input", "min_val", "max_val"), {"min_val": -1.0,
                                                                 "max_val": 1.0})
            lo, hi = ctx.value(a["min_val"]), ctx.value(a["max_val"])
        else:  # clamp / clip, function or method
            a = ctx.bind(node, ("input", "min", "max"), {"min": None, "max": None})
            lo, hi = ctx.value(a["min"]), ctx.value(a["max"])
        return Converted(_clamp_op(lo, hi), (ctx.tensor_arg(a["input"]),))


class LeakyReLUAdapter(Adapter):
    """``nn.LeakyReLU``, ``F.leaky_relu``: two ReLU neurons (``ReLU(z) - s*ReLU(-z)``)."""

    name = "leaky_relu"
    inplace_safe = True  # the op built is the value the in-place form writes

    def _convert(self, node: fx.Node, ctx: Any) -> Converted:
        if node.op == "call_module":
            slope = float(ctx.module(node).negative_slope)
            return Converted(LeakyReLUOp(slope), (ctx.tensor_arg(node.args[0]),),
                             module=str(node.target))
        a = ctx.bind(node, ("input", "negative_slope"), {"negative_slope": 0.01})
        return Converted(LeakyReLUOp(float(ctx.value(a["negative_slope"]))),
                         (ctx.tensor_arg(a["input"]),))


class ActivationQuantizerAdapter(Adapter):
    """:class:`certcompress.capture.fakequant.ActivationQuantizer`: its ``ActQuantOp``."""

    name = "activation_quantizer"

    def _convert(self, node: fx.Node, ctx: Any) -> Converted:
        m = ctx.module(node)
        return Converted(m.op, (ctx.tensor_arg(node.args[0]),), module=str(node.target))


def register(registry: Any) -> None:
    registry.register_module(ActivationQuantizer, ActivationQuantizerAdapter())
    relu = ReLUAdapter()
    registry.register_module(nn.ReLU, relu)
    registry.register_function([F.relu, F.relu_, torch.relu, torch.relu_, aten.relu.default,
                                aten.relu_.default], relu)
    registry.register_method(["relu", "relu_"], relu)
    clamp = ClampAdapter()
    registry.register_module(nn.Hardtanh, clamp)  # nn.ReLU6 subclasses Hardtanh
    registry.register_function([F.relu6, aten.relu6.default, F.hardtanh, F.hardtanh_,
                                aten.hardtanh.default, aten.hardtanh_.default, torch.clamp,
                                torch.clip, aten.clamp.default, aten.clamp_.default], clamp)
    registry.register_method(["clamp", "clamp_", "clip", "clip_"], clamp)
    leaky = LeakyReLUAdapter()
    registry.register_module(nn.LeakyReLU, leaky)
    registry.register_function([F.leaky_relu, F.leaky_relu_, aten.leaky_relu.default,
                                aten.leaky_relu_.default], leaky)
