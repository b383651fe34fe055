"""Pooling and fixed averaging maps: MaxPool (padding, dilation, ceil_mode), AvgPool,
AdaptiveAvgPool (uneven windows use their true sizes: the op itself is the map),
mean and sum over dimensions, nearest/bilinear interpolation and Upsample."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ...errors import RefusalKind
from ...ir.ops import FixedLinearOp, MaxPoolOp
from .base import Adapter, Converted, Unsupported, call_first, call_method, op_name

aten = torch.ops.aten


def _tuple(v: Any, n: int) -> tuple[int, ...]:
    if isinstance(v, (list, tuple)):
        vals = tuple(int(x) for x in v)
        return vals if len(vals) == n else (vals[0],) * n
    return (int(v),) * n


_AVG_ARGS = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
             "divisor_override")


def _ints(v: Any) -> list[int]:
    return [int(x) for x in v] if isinstance(v, (list, tuple)) else [int(v)]


def check_avg_pool(where: str, kernel_size: Any, stride: Any, padding: Any,
                   divisor_override: Any) -> None:
    """Refuse average-pooling arguments that do not make a fixed non-negative averaging
    map: ``divisor_override`` below 1 (0 divides by zero, a negative one flips the sign
    of every weight) or not an integer, kernel sizes or strides below 1, negative
    padding."""
    if divisor_override is not None and (isinstance(divisor_override, bool) or not isinstance(
            divisor_override, int) or divisor_override < 1):
        raise Unsupported(f"{where}: divisor_override={divisor_override!r} is not an integer "
                          ">= 1, so the op is not a non-negative averaging map; pass "
                          "divisor_override=None or a positive integer", RefusalKind.MODEL)
    if any(k < 1 for k in _ints(kernel_size)):
        raise Unsupported(f"{where}: kernel_size={kernel_size!r} has a size below 1", RefusalKind.MODEL)
    if stride is not None and stride != [] and stride != () and any(
            st < 1 for st in _ints(stride)):
        raise Unsupported(f"{where}: stride={stride!r} has a step below 1", RefusalKind.MODEL)
    if any(p < 0 for p in _ints(padding)):
        raise Unsupported(f"{where}: padding={padding!r} is negative", RefusalKind.MODEL)


_MAXPOOL_DIM = {nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3}
_MAXPOOL_FN = {F.max_pool1d: 1, F.max_pool2d: 2, F.max_pool3d: 3, torch.max_pool1d: 1,
               torch.max_pool2d: 2, torch.max_pool3d: 3, aten.max_pool1d.default: 1,
               aten.max_pool2d.default: 2, aten.max_pool3d.default: 3}


class MaxPoolAdapter(Adapter):
    """Max-pooling: 1-max-pool neurons with incoming weights 1 (docs/path-metrics.md, section 1)."""

    name = "max_pool"

    def _convert(self, node: fx.Node, ctx: Any) -> Converted:
        if node.op == "call_module":
            m = ctx.module(node)
            dim = next(v for k, v in _MAXPOOL_DIM.items() if isinstance(m, k))
            if m.return_indices:
                raise Unsupported("max-pooling with return_indices=True")
            ks, st, pd, dl, ceil = m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode
            x = node.args[0]
        else:
            dim = _MAXPOOL_FN[node.target]  # type: ignore[index]
            a = ctx.bind(node, ("input", "kernel_size", "stride", "padding", "dilation",
                                "ceil_mode", "return_indices"),
                         {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False,
                          "return_indices": False})
            if ctx.value(a["return_indices"]):
                raise Unsupported("max-pooling with return_indices=True")
            ks, st, pd, dl, ceil = (ctx.value(a[k]) for k in ("kernel_size", "stride", "padding",
                                                              "dilation", "ceil_mode"))
            x = a["input"]
        ks_t = _tuple(ks, dim)
        st_t = ks_t if st is None or st == [] or st == () else _tuple(st, dim)
        op = MaxPoolOp(dim=dim, kernel_size=ks_t, stride=st_t, padding=_tuple(pd, dim),
                       dilation=_tuple(dl, dim), ceil_mode=bool(ceil))
        return Converted(op, (ctx.tensor_arg(x),),
                         module=str(node.target) if node.op == "call_module" else None)


class ModuleAsMapAdapter(Adapter):
    """A module whose forward is a fixed non-negative linear map (AvgPool,
    AdaptiveAvgPool, Upsample): the module itself is the map."""

    name = "fixed_linear_module"

    def _convert(self, node: fx.Node, ctx: Any) -> Converted:
        m = ctx.module(node)
        if isinstance(m, nn.Upsample) and m.mode not in _NONNEG_MODES:
            raise Unsupported(f"Upsample mode '{m.mode}' has negative weights; only "
                              f"{sorted(_NONNEG_MODES)} are fixed non-negative maps")
        if len(node.args) != 1 or node.kwargs:
            raise Unsupported("called with extra arguments")
        if isinstance(m, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)):
            check_avg_pool(type(m).__name__, m.kernel_size, m.stride, m.padding,
                           getattr(m, "divisor_override", None))
        return Converted(FixedLinearOp(type(m).__name__, ctx.module(node), repr(m)),
                         (ctx.tensor_arg(node.args[0]),), module=str(node.target))


_NONNEG_MODES = {"nearest", "nearest-exact", "linear", "bilinear", "trilinear", "area"}


class FunctionAsMapAdapter(Adapter):
    """``F.avg_pool*``, ``F.adaptive_avg_pool*``, ``torch.mean``/``sum`` over dims,
    ``F.interpolate`` (nearest, bilinear, linear, trilinear, area) and their aten ops."""

    name = "fixed_linear_function"

    def _convert(self, node: fx.Node, ctx: Any) -> Converted:
        target = node.target
        args = ctx.value(node.args[1:])
        kwargs = ctx.value(dict(node.kwargs))
        x = node.args[0]
        name = op_name(target)
        if "avg_pool" in str(name) and "adaptive" not in str(name):
            given = dict(zip(_AVG_ARGS, args))
            given.update({k: v for k, v in kwargs.items() if k in _AVG_ARGS})
            check_avg_pool(str(name), given.get("kernel_size", 1), given.get("stride"),
                           given.get("padding", 0), given.get("divisor_override"))
        if "interpolate" in name or "upsample" in name:
            mode = kwargs.get("mode", args[2] if len(args) > 2 and isinstance(args[2], str)
                              else "nearest")
            if "bicubic" in name or mode not in _NONNEG_MODES:
                raise Unsupported(f"interpolation mode '{mode}' has negative weights")
        fn = call_method(target, args, kwargs) if isinstance(target, str) else \
            call_first(target, args, kwargs)
        return Converted(FixedLinearOp(str(name), fn, ", ".join(map(repr, args))),
                         (ctx.tensor_arg(x),))


def register(registry: Any) -> None:
    mp = MaxPoolAdapter()
    for cls in _MAXPOOL_DIM:
        registry.register_module(cls, mp)
    registry.register_function(list(_MAXPOOL_FN), mp)
    mod = ModuleAsMapAdapter()
    maps: tuple[type[nn.Module], ...] = (
        nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
        nn.AdaptiveAvgPool3d, nn.Upsample)
    for map_cls in maps:
        registry.register_module(map_cls, mod)  # UpsamplingNearest2d/Bilinear2d subclass Upsample
    fn = FunctionAsMapAdapter()
    registry.register_function(
        [F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
         F.adaptive_avg_pool3d, torch.avg_pool1d, torch.adaptive_avg_pool1d,
         aten.avg_pool1d.default, aten.avg_pool2d.default, aten.avg_pool3d.default,
         aten.adaptive_avg_pool1d.default, aten.adaptive_avg_pool2d.default,
         aten.adaptive_avg_pool3d.default, aten._adaptive_avg_pool2d.default,
         torch.mean, torch.sum, aten.mean.dim, aten.mean.default, aten.sum.dim_IntList,
         F.interpolate, F.upsample, F.upsample_nearest, F.upsample_bilinear,
         aten.upsample_nearest1d.vec, aten.upsample_nearest2d.vec, aten.upsample_nearest3d.vec,
         aten.upsample_nearest2d.default, aten.upsample_bilinear2d.vec,
         aten.upsample_bilinear2d.default, aten.upsample_linear1d.vec,
         aten.upsample_trilinear3d.vec], fn)
    registry.register_method(["mean", "sum"], fn)
