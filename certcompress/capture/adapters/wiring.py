"""Wiring: add/sub/neg and scalar mul/div (linear combinations), cat, index maps
(flatten, view, reshape, permute, transpose, getitem, squeeze, unsqueeze, padding,
split/chunk), Identity and eval-mode Dropout."""

from __future__ import annotations

import functools
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ...errors import RefusalKind
from ...ir.ops import AffineParams, CatOp, ChannelAffineOp, IndexOp, LinearCombinationOp
from .base import Adapter, Converted, MultiOutput, Unsupported, call_first, call_method, op_name

aten = torch.ops.aten

_IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                     nn.AlphaDropout, nn.FeatureAlphaDropout, nn.Flatten, nn.Unflatten,
                     nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ReflectionPad1d,
                     nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d,
                     nn.ReplicationPad2d, nn.ReplicationPad3d, nn.CircularPad1d,
                     nn.CircularPad2d, nn.CircularPad3d, nn.ConstantPad1d, nn.ConstantPad2d,
                     nn.ConstantPad3d)


class IndexModuleAdapter(Adapter):
    """Modules that only move or copy neurons: Identity, eval Dropout, Flatten,
    Unflatten, zero/reflection/replication/circular padding."""

    name = "index_module"
    inplace_safe = True  # the op built is the value the in-place form writes

    def _convert(self, node: fx.Node, ctx: Any) -> Converted:
        m = ctx.module(node)
        if m.training and "Dropout" in type(m).__name__:
            raise Unsupported(f"{type(m).__name__} in training mode; call model.eval()")
        if isinstance(m, (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)) and m.value != 0:
            raise Unsupported(f"constant padding with value {m.value} (a constant bias "
                              "neuron); only zero padding is supported")
        if len(node.args) != 1 or node.kwargs:
            raise Unsupported("called with extra arguments")
        return Converted(IndexOp(type(m).__name__, m, ""), (ctx.tensor_arg(node.args[0]),),
                         module=str(node.target))


# Eval-mode Dropout1d/2d/3d and AlphaDropout appear as these in torch.export graphs.
_ATEN_DROPOUT = (aten.dropout.default, aten.feature_dropout.default,
                 aten.alpha_dropout.default, aten.feature_alpha_dropout.default)


class IndexFunctionAdapter(Adapter):
    """Functions and methods whose output elements are copies of input elements."""

    name = "index_function"
    inplace_safe = True  # the op built is the value the in-place form writes

    def _convert(self, node: fx.Node, ctx: Any) -> Converted:
        target = node.target
        x = node.args[0]
        args = ctx.value(node.args[1:])
        kwargs = ctx.value(dict(node.kwargs))
        kwargs.pop("inplace", None)
        name = op_name(target)
        if "dropout" in name:
            if target in _ATEN_DROPOUT:  # (input, p, train)
                training = args[1] if len(args) > 1 else kwargs.get("train", True)
            else:
                training = kwargs.get("training", args[1] if len(args) > 1 else True)
            if training:
                raise Unsupported("dropout with training=True; call model.eval()")
            return Converted(IndexOp("Identity", _identity, "dropout (eval)"),
                             (ctx.tensor_arg(x),))
        if name == "pad" or target is aten.constant_pad_nd.default:
            mode = kwargs.get("mode", args[1] if len(args) > 1 else "constant")
            value = kwargs.get("value", args[2] if len(args) > 2 else 0.0)
            if target is aten.constant_pad_nd.default:
                mode, value = "constant", (args[1] if len(args) > 1 else 0.0)
            if mode == "constant" and value not in (0, 0.0, None):
                raise Unsupported(f"constant padding with value {value}; only zero padding")
        if name == "getitem" and any(isinstance(v, torch.Tensor) for v in _flat(args)):
            raise Unsupported("indexing with a tensor index")
        fn = call_method(target, args, kwargs) if isinstance(target, str) else \
            call_first(target, args, kwargs)
        return Converted(IndexOp(name, fn, ", ".join(map(repr, args))),
                         (ctx.tensor_arg(x),))


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _flat(v: Any) -> list[Any]:
    if isinstance(v, (list, tuple)):
        return [y for u in v for y in _flat(u)]
    return [v]


def _select(fn: Any, i: int, x: torch.Tensor) -> torch.Tensor:
    return fn(x)[i]


class SplitAdapter(Adapter):
    """``split``/``chunk``/``unbind``: a tuple of index maps, one per ``getitem``."""

    name = "split"

    def _convert(self, node: fx.Node, ctx: Any) -> MultiOutput:
        target = node.target
        x = node.args[0]
        args = ctx.value(node.args[1:])
        kwargs = ctx.value(dict(node.kwargs))
        fn = call_method(target, args, kwargs) if isinstance(target, str) else \
            call_first(target, args, kwargs)
        name = op_name(target)
        inp = ctx.tensor_arg(x)
        return MultiOutput(lambda i: Converted(
            IndexOp(f"{name}[{i}]", functools.partial(_select, fn, i), repr(args)), (inp,)))


class LinearCombinationAdapter(Adapter):
    """add, sub, neg, and multiplication/division by a Python number."""

    name = "linear_combination"
    inplace_safe = True  # the op built is the value the in-place form writes

    def _convert(self, node: fx.Node, ctx: Any) -> Converted:
        target = node.target
        name = op_name(target)
        a = list(node.args)
        alpha = ctx.value(node.kwargs.get("alpha", 1))
        terms: list[tuple[Any, float]]
        if name in ("add",):
            terms = [(a[0], 1.0), (a[1], float(alpha))]
        elif name in ("sub",):
            terms = [(a[0], 1.0), (a[1], -float(alpha))]
        elif name == "rsub":
            terms = [(a[1], 1.0), (a[0], -float(alpha))]
        elif name == "neg":
            terms = [(a[0], -1.0)]
        elif name in ("mul", "truediv"):
            x, y = a[0], a[1]
            tx, ty = ctx.is_tensor_node(x), ctx.is_tensor_node(y)
            if tx and ty:
                raise Unsupported("product or quotient of two input-dependent tensors (e.g. "
                                  "a gate) is not piecewise-linear", RefusalKind.OUTSIDE_CLASS)
            if name != "mul" and not tx:
                raise Unsupported("division by an input-dependent tensor",
                                  RefusalKind.OUTSIDE_CLASS)
            if name != "mul" and node.kwargs.get("rounding_mode") is not None:
                raise Unsupported("division with a rounding mode")
            t, c = (x, y) if tx else (y, x)
            c = ctx.value(c)
            if isinstance(c, torch.Tensor) and c.numel() == 1 and not c.is_meta:
                c = float(c)
            elif isinstance(c, torch.Tensor):
                scale = _per_channel(c, ctx.value(t))
                if scale is None:
                    raise Unsupported(
                        f"multiplication by a constant tensor of shape {tuple(c.shape)} "
                        "that is neither a scalar nor one factor per channel (dimension 1)")
                if name != "mul":
                    scale = 1.0 / scale
                return Converted(ChannelAffineOp(), (ctx.tensor_arg(t),),
                                 AffineParams(scale, None))
            if not isinstance(c, (int, float)):
                raise Unsupported(f"multiplication by a {type(c).__name__} constant")
            terms = [(t, float(c) if name == "mul" else 1.0 / float(c))]
        else:
            raise Unsupported(f"'{name}' is not a linear combination")
        inputs: list[fx.Node] = []
        coeffs: list[float] = []
        const = 0.0
        const_t: torch.Tensor | None = None
        for arg, c in terms:
            if ctx.is_tensor_node(arg):
                inputs.append(ctx.tensor_arg(arg))
                coeffs.append(c)
            else:
                v = ctx.value(arg)
                if isinstance(v, torch.Tensor) and v.numel() == 1 and not v.is_meta:
                    v = float(v)
                if isinstance(v, torch.Tensor):
                    const_t = c * v if const_t is None else const_t + c * v
                    continue
                if not isinstance(v, (int, float)):
                    raise Unsupported(f"adds a {type(v).__name__} constant")
                const += c * float(v)
        if not inputs:
            raise Unsupported("no input-dependent operand")
        if const_t is not None:  # a constant tensor added: a per-channel bias
            if len(inputs) != 1 or coeffs[0] != 1.0:
                raise Unsupported("adds a constant tensor to a combination of several "
                                  "input-dependent values")
            bias = _per_channel(const_t, ctx.value(inputs[0]))
            if bias is None:
                raise Unsupported(f"adds a constant tensor of shape {tuple(const_t.shape)} "
                                  "that is not one value per channel (dimension 1)")
            return Converted(ChannelAffineOp(), tuple(inputs),
                             AffineParams(torch.ones_like(bias), bias + const))
        return Converted(LinearCombinationOp(tuple(coeffs), const), tuple(inputs))


def _per_channel(c: torch.Tensor, x: Any) -> torch.Tensor | None:
    """``c`` as one float64 value per channel of ``x`` (dimension 1), if ``c`` broadcasts
    against ``x`` as a per-channel constant (layer scale, a per-channel bias); else None."""
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or c.dim() > x.dim():
        return None
    shape = (1,) * (x.dim() - c.dim()) + tuple(c.shape)
    channels = int(x.shape[1])
    if any(s != 1 for i, s in enumerate(shape) if i != 1) or shape[1] not in (1, channels):
        return None
    return c.detach().to(torch.float64).reshape(-1).expand(channels).clone()


class CatAdapter(Adapter):
    """``torch.cat``/``concat``/``concatenate`` of input-dependent tensors."""

    name = "cat"

    def _convert(self, node: fx.Node, ctx: Any) -> Converted:
        a = ctx.bind(node, ("tensors", "dim"), {"dim": 0})
        tensors = a["tensors"]
        if not isinstance(tensors, (list, tuple)):
            raise Unsupported("cat of a non-list argument")
        return Converted(CatOp(int(ctx.value(a["dim"]))),
                         tuple(ctx.tensor_arg(t) for t in tensors))


def register(registry: Any) -> None:
    im = IndexModuleAdapter()
    for cls in _IDENTITY_MODULES:
        registry.register_module(cls, im)
    idx = IndexFunctionAdapter()
    registry.register_function(
        [torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.squeeze,
         torch.unsqueeze, torch.t, torch.movedim, torch.swapaxes, torch.narrow,
         torch.select, operator.getitem, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d,
         F.alpha_dropout, F.feature_alpha_dropout, F.pad, torch.clone,
         aten.flatten.using_ints, aten.view.default, aten.reshape.default,
         aten._unsafe_view.default, aten.permute.default, aten.transpose.int,
         aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default, aten.unsqueeze.default,
         aten.t.default, aten.slice.Tensor, aten.select.int, aten.expand.default,
         *_ATEN_DROPOUT, aten.clone.default, aten.alias.default,
         aten.contiguous.default, aten.constant_pad_nd.default, aten.pad.default,
         aten.reflection_pad1d.default, aten.reflection_pad2d.default,
         aten.replication_pad1d.default, aten.replication_pad2d.default], idx)
    registry.register_method(
        ["view", "reshape", "flatten", "permute", "transpose", "squeeze", "unsqueeze",
         "contiguous", "t", "expand", "expand_as", "repeat", "clone", "movedim", "narrow",
         "select", "view_as", "reshape_as", "detach", "__getitem__"], idx)
    sp = SplitAdapter()
    registry.register_function([torch.split, torch.chunk, torch.unbind, aten.split.Tensor,
                                aten.split_with_sizes.default, aten.chunk.default,
                                aten.unbind.int], sp)
    registry.register_method(["split", "chunk", "unbind"], sp)
    lc = LinearCombinationAdapter()
    registry.register_function(
        [operator.add, operator.iadd, operator.sub, operator.isub, operator.neg, operator.mul,
         operator.imul, operator.truediv, operator.itruediv, torch.add, torch.sub,
         torch.subtract, torch.neg, torch.negative, torch.mul, torch.multiply, torch.div,
         torch.divide, torch.true_divide, torch.rsub, aten.add.Tensor, aten.add_.Tensor,
         aten.add.Scalar, aten.sub.Tensor, aten.sub_.Tensor, aten.sub.Scalar, aten.rsub.Scalar,
         aten.rsub.Tensor, aten.neg.default, aten.mul.Tensor, aten.mul_.Tensor,
         aten.mul.Scalar, aten.div.Tensor, aten.div_.Tensor, aten.div.Scalar], lc)
    registry.register_method(["add", "add_", "sub", "sub_", "neg", "mul", "mul_", "div",
                              "div_", "__add__", "__radd__", "__sub__", "__mul__", "__rmul__",
                              "__truediv__"], lc)
    cat = CatAdapter()
    registry.register_function([torch.cat, torch.concat, torch.concatenate, aten.cat.default],
                               cat)
