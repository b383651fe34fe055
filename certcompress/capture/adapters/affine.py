"""Parametric affine layers: Linear, Conv1d/2d/3d, ConvTranspose1d/2d/3d, BatchNorm.

Every one becomes an :class:`~certcompress.ir.AffineOp` with float64 copies of its
parameters (a float32, float16 or bfloat16 weight is copied in its own dtype and widened
to float64 where read: :meth:`~certcompress.ir.AffineParams.widened`, the same values). Eval-mode BatchNorm becomes a per-channel map ``x*a + c`` with
``a = gamma/sqrt(var+eps)`` and ``c = beta - mean*a``; the graph pass
:func:`~certcompress.ir.passes.fold_batchnorm` folds it into the op before it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx, nn

from ...ir.ops import AffineParams, ChannelAffineOp, ConvOp, LinearOp
from .base import Adapter, Converted, MultiOutput, Unsupported

aten = torch.ops.aten


def _params(w: torch.Tensor, b: torch.Tensor | None) -> AffineParams:
    """A weight copied compact (see the module docstring) and a float64 bias."""
    if w.dtype == torch.float64:
        return AffineParams(w, b)
    return AffineParams.widened(w, b, torch.float64)


def _tuple(v: Any, n: int) -> tuple[int, ...]:
    if isinstance(v, (list, tuple)):
        vals = tuple(int(x) for x in v)
        return vals if len(vals) == n else (vals[0],) * n
    return (int(v),) * n


class LinearAdapter(Adapter):
    """``nn.Linear``, ``F.linear``, ``aten.linear``."""

    name = "linear"

    def _convert(self, node: fx.Node, ctx: Any) -> Converted:
        if node.op == "call_module":
            w, wn = ctx.module_tensor(node, "weight", compact=True)
            b, bn = ctx.module_tensor(node, "bias")
            return Converted(LinearOp(), (ctx.tensor_arg(node.args[0]),), _params(w, b),
                             module=str(node.target), param_names=tuple(x for x in (wn, bn) if x))
        a = ctx.bind(node, ("input", "weight", "bias"), {"bias": None})
        w, wn = ctx.param(a["weight"], compact=True)
        b, bn = ctx.param(a["bias"]) if a["bias"] is not None else (None, "")
        return Converted(LinearOp(), (ctx.tensor_arg(a["input"]),), _params(w, b),
                         module=ctx.owner(wn), param_names=tuple(x for x in (wn, bn) if x))


_CONV_MODULES: dict[type[nn.Module], tuple[int, bool]] = {
    nn.Conv1d: (1, False), nn.Conv2d: (2, False), nn.Conv3d: (3, False),
    nn.ConvTranspose1d: (1, True), nn.ConvTranspose2d: (2, True), nn.ConvTranspose3d: (3, True),
}


class ConvAdapter(Adapter):
    """``nn.ConvNd``/``nn.ConvTransposeNd`` (any padding mode), ``F.conv*``,
    ``aten.conv*d``. Reflect/replicate/circular padding is an index map before the
    convolution (identity neurons copying inputs), so it stays a ReLU-DAG."""

    name = "conv"

    def _convert(self, node: fx.Node, ctx: Any) -> Converted:
        if node.op == "call_module":
            return self._from_module(node, ctx)
        return self._from_function(node, ctx)

    def _from_module(self, node: fx.Node, ctx: Any) -> Converted:
        m = ctx.module(node)
        dim, transposed = next(v for k, v in _CONV_MODULES.items() if isinstance(m, k))
        w, wn = ctx.module_tensor(node, "weight", compact=True)
        b, bn = ctx.module_tensor(node, "bias")
        if transposed and len(node.args) > 1:
            raise Unsupported("ConvTranspose called with an explicit output_size")
        padding: tuple[int, ...] | str
        pre_pad: tuple[int, ...] = ()
        pad_mode = "zeros"
        if m.padding_mode != "zeros":
            pre_pad = tuple(int(p) for p in m._reversed_padding_repeated_twice)
            pad_mode = m.padding_mode
            padding = (0,) * dim
        elif isinstance(m.padding, str):
            padding = m.padding
        else:
            padding = _tuple(m.padding, dim)
        op = ConvOp(dim=dim, stride=_tuple(m.stride, dim), padding=padding,
                    dilation=_tuple(m.dilation, dim), groups=int(m.groups), transposed=transposed,
                    output_padding=_tuple(m.output_padding, dim) if transposed else (),
                    pre_pad=pre_pad, pad_mode=pad_mode)
        return Converted(op, (ctx.tensor_arg(node.args[0]),), _params(w, b),
                         module=str(node.target), param_names=tuple(x for x in (wn, bn) if x))

    def _from_function(self, node: fx.Node, ctx: Any) -> Converted:
        target = node.target
        name = getattr(target, "__name__", str(target))
        transposed = "transpose" in name
        if target in (aten.convolution.default,):
            a = ctx.bind(node, ("input", "weight", "bias", "stride", "padding", "dilation",
                                "transposed", "output_padding", "groups"), {})
            transposed = bool(ctx.value(a["transposed"]))
        elif transposed:
            a = ctx.bind(node, ("input", "weight", "bias", "stride", "padding", "output_padding",
                                "groups", "dilation"),
                         {"bias": None, "stride": 1, "padding": 0, "output_padding": 0,
                          "groups": 1, "dilation": 1})
        else:
            a = ctx.bind(node, ("input", "weight", "bias", "stride", "padding", "dilation",
                                "groups"),
                         {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1})
        w, wn = ctx.param(a["weight"], compact=True)
        b, bn = ctx.param(a["bias"]) if a["bias"] is not None else (None, "")
        dim = w.dim() - 2
        pad = ctx.value(a["padding"])
        op = ConvOp(dim=dim, stride=_tuple(ctx.value(a["stride"]), dim),
                    padding=pad if isinstance(pad, str) else _tuple(pad, dim),
                    dilation=_tuple(ctx.value(a["dilation"]), dim),
                    groups=int(ctx.value(a["groups"])), transposed=transposed,
                    output_padding=_tuple(ctx.value(a["output_padding"]), dim)
                    if transposed else ())
        return Converted(op, (ctx.tensor_arg(a["input"]),), _params(w, b),
                         module=ctx.owner(wn), param_names=tuple(x for x in (wn, bn) if x))


def _bn_params(weight: torch.Tensor | None, bias: torch.Tensor | None, mean: torch.Tensor,
               var: torch.Tensor, eps: float) -> AffineParams:
    """``a = gamma/sqrt(var+eps)``, ``c = beta - mean*a``, in float64."""
    a = 1.0 / torch.sqrt(var + eps)
    if weight is not None:
        a = weight * a
    c = -mean * a
    if bias is not None:
        c = bias + c
    return AffineParams(a, c)


class BatchNormAdapter(Adapter):
    """Eval-mode ``nn.BatchNorm1d/2d/3d``, ``F.batch_norm``, ``aten.batch_norm`` and
    ``aten._native_batch_norm_legit_no_training``. Batch statistics (training mode or
    ``track_running_stats=False``) are not an affine map and are refused."""

    name = "batchnorm"

    def _convert(self, node: fx.Node, ctx: Any) -> Converted | MultiOutput:
        if node.op == "call_module":
            m = ctx.module(node)
            if m.training or m.running_mean is None:
                raise Unsupported(
                    f"{type(m).__name__} uses batch statistics (training mode or "
                    "track_running_stats=False); call model.eval() on a model with running "
                    "statistics"
                )
            g, gn = ctx.module_tensor(node, "weight")
            be, bn = ctx.module_tensor(node, "bias")
            mu, mn = ctx.module_tensor(node, "running_mean")
            var, vn = ctx.module_tensor(node, "running_var")
            params = _bn_params(g, be, mu, var, float(m.eps))
            names = tuple(x for x in (gn, bn, mn, vn) if x)
            return Converted(ChannelAffineOp(), (ctx.tensor_arg(node.args[0]),), params,
                             module=str(node.target), param_names=names)
        target = node.target
        if target is aten._native_batch_norm_legit_no_training.default:
            a = ctx.bind(node, ("input", "weight", "bias", "running_mean", "running_var",
                                "momentum", "eps"), {})
            conv = self._functional(a, ctx, training=False)
            return MultiOutput(lambda i: conv if i == 0 else _no_stats(i))
        if target is aten.batch_norm.default:
            a = ctx.bind(node, ("input", "weight", "bias", "running_mean", "running_var",
                                "training", "momentum", "eps", "cudnn_enabled"), {})
        else:  # F.batch_norm
            a = ctx.bind(node, ("input", "running_mean", "running_var", "weight", "bias",
                                "training", "momentum", "eps"),
                         {"weight": None, "bias": None, "training": False, "momentum": 0.1,
                          "eps": 1e-5})
        return self._functional(a, ctx, training=bool(ctx.value(a["training"])))

    def _functional(self, a: dict[str, Any], ctx: Any, training: bool) -> Converted:
        if training or a["running_mean"] is None:
            raise Unsupported("batch_norm with batch statistics (training=True); call "
                              "model.eval()")
        g, gn = ctx.param(a["weight"]) if a["weight"] is not None else (None, "")
        be, bn = ctx.param(a["bias"]) if a["bias"] is not None else (None, "")
        mu, mn = ctx.param(a["running_mean"])
        var, vn = ctx.param(a["running_var"])
        params = _bn_params(g, be, mu, var, float(ctx.value(a["eps"])))
        return Converted(ChannelAffineOp(), (ctx.tensor_arg(a["input"]),), params,
                         module=ctx.owner(mn), param_names=tuple(x for x in (gn, bn, mn, vn) if x))


def _no_stats(i: int) -> Converted:
    raise Unsupported(f"output {i} of a fused batch-norm (batch statistics) is used")


def register(registry: Any) -> None:
    lin = LinearAdapter()
    registry.register_module(nn.Linear, lin)
    registry.register_function([torch.nn.functional.linear, aten.linear.default], lin)
    conv = ConvAdapter()
    for cls in _CONV_MODULES:
        registry.register_module(cls, conv)
    F = torch.nn.functional
    registry.register_function(
        [F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d,
         F.conv_transpose3d, aten.conv1d.default, aten.conv2d.default, aten.conv3d.default,
         aten.conv_transpose1d.default, aten.conv_transpose2d.input,
         aten.conv_transpose3d.input, aten.convolution.default], conv)
    bn = BatchNormAdapter()
    for cls in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
        registry.register_module(cls, bn)
    registry.register_function(
        [F.batch_norm, aten.batch_norm.default,
         aten._native_batch_norm_legit_no_training.default], bn)
