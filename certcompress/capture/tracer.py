"""Capture: a PyTorch model -> torch.fx graph -> typed ReLU-DAG :class:`Graph`.

1. Refuse models in training mode (BatchNorm batch statistics and Dropout are not the
   function one certifies).
2. Trace with torch.fx; modules with a registered adapter are leaves. If symbolic
   tracing fails (Python control flow on tensor values, unsupported Python), fall back
   to ``torch.export`` (ATen graph); an ``ExportedProgram`` is taken as is.
3. Run the fx graph once for shapes only, no arithmetic: with parameters, buffers and
   input on the meta device (fast), or, when some node cannot run on meta tensors,
   node by node under ``FakeTensorMode``. Every node's output shape and every Python
   value (``x.size(0)``) becomes concrete, and
   each tensor node that depends on the input is handed to its adapter. Nodes nothing
   in the output depends on are skipped. Every unsupported node is collected; one
   :class:`UnsupportedModelError` lists them all.
4. Fold eval-mode BatchNorm into the affine op before it.
5. The trace check (:mod:`.check`): hooks and in-place writes the graph would lose are
   refused before conversion; afterwards the graph and a float64 copy of the module are
   compared on probes of the input domain, and the module's state must not change.
"""

from __future__ import annotations

import contextlib
import logging
import operator
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.node import map_aggregate

from .._shapes import broadcast_shapes
from ..errors import (
    ConfigurationError,
    RefusalKind,
    TrainModeError,
    UnsupportedModelError,
    UnsupportedNode,
)
from ..ir.graph import Graph, IRNode
from ..ir.ops import AffineParams, IROp
from ..ir.passes import fold_batchnorm
from .adapters.base import Converted, MultiOutput, Unsupported
from .check import (
    TraceCheckReport,
    as_box,
    hook_refusals,
    inplace_refusals,
    numeric_check,
    raise_if_failed,
)
from .registry import AdapterRegistry

__all__ = ["Captured", "trace", "trace_captured", "ConvertContext", "check_eval_mode"]

_OUTSIDE_CLASS = {
    "GELU": "GELU is smooth, not piecewise-linear",
    "SiLU": "SiLU is smooth, not piecewise-linear",
    "Mish": "Mish is smooth", "ELU": "ELU is not piecewise-linear", "SELU": "SELU is smooth",
    "Sigmoid": "sigmoid is smooth", "Tanh": "tanh is smooth", "Hardswish": "hardswish "
    "multiplies two input-dependent values", "Hardsigmoid": "hardsigmoid is not a ReLU-DAG "
    "op here", "Softmax": "softmax normalizes by input-dependent sums",
    "LogSoftmax": "log-softmax is smooth", "LayerNorm": "LayerNorm divides by input-dependent "
    "statistics", "GroupNorm": "GroupNorm divides by input-dependent statistics",
    "InstanceNorm2d": "InstanceNorm divides by input-dependent statistics",
    "MultiheadAttention": "attention multiplies input-dependent values",
    "gelu": "GELU is smooth", "silu": "SiLU is smooth", "sigmoid": "sigmoid is smooth",
    "tanh": "tanh is smooth", "softmax": "softmax is smooth", "layer_norm": "LayerNorm "
    "divides by input-dependent statistics", "group_norm": "GroupNorm divides by "
    "input-dependent statistics", "scaled_dot_product_attention": "attention multiplies "
    "input-dependent values", "matmul": "a product of input-dependent tensors",
    "bmm": "a product of input-dependent tensors", "exp": "exp is smooth",
}

_TOO_SMALL = ("too small", "smaller than", "kernel size can't be greater",
              "output size is too small", "input image", "padding should be at most",
              "non-positive", "calculated output size", "larger than")


# what torch says when an op's operand shapes do not fit (the input shape is wrong for
# the model): an adapter cannot help there, the input shape must change
_SHAPE_MISMATCH = ("same reduction dim", "size mismatch", "cannot be multiplied",
                   "must match the size of tensor", "the size of tensor a",
                   "invalid for input of size", "mat1 and mat2 shapes", "expected input[")


def _shape_mismatch(message: str) -> bool:
    """Whether a shape-propagation error says the operand shapes do not fit."""
    low = message.lower()
    return any(t in low for t in _SHAPE_MISMATCH)


def _too_small(message: str) -> bool:
    """Whether a shape-propagation error says the input is too small for an op."""
    low = message.lower()
    return any(t in low for t in _TOO_SMALL)


def _kind(why: str | None) -> RefusalKind:
    return RefusalKind.OUTSIDE_CLASS if why else RefusalKind.NO_ADAPTER


def _group(node: fx.Node, modules: Mapping[str, nn.Module]) -> str:
    """What a node is, for grouping refusals: a module type, function or method name."""
    if node.op == "call_module":
        m = modules.get(str(node.target))
        return type(m).__name__ if m is not None else str(node.target)
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    t = node.target
    if isinstance(t, torch._ops.OpOverload):
        return f"aten.{t._overloadpacket.__name__}"
    return str(getattr(t, "__name__", t))


def check_eval_mode(model: nn.Module) -> None:
    """Raise :class:`TrainModeError` naming every submodule left in training mode."""
    offenders = [name or "<root>" for name, m in model.named_modules() if m.training]
    if offenders:
        shown = ", ".join(offenders[:8]) + (f" and {len(offenders) - 8} more"
                                             if len(offenders) > 8 else "")
        bn = [n for n, m in model.named_modules()
              if m.training and isinstance(m, nn.modules.batchnorm._BatchNorm)]
        why = (f" (BatchNorm layers in training mode use batch statistics: {', '.join(bn[:4])})"
               if bn else "")
        raise TrainModeError(
            f"the model is in training mode: {shown}{why}. Certificates are about the "
            "inference function: call model.eval() first."
        )


class _CaptureTracer(fx.Tracer):
    def __init__(self, registry: AdapterRegistry) -> None:
        super().__init__()
        self.registry = registry

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if self.registry.has_module_adapter(m):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _capture(model: nn.Module | torch.export.ExportedProgram, example: torch.Tensor,
             registry: AdapterRegistry) -> tuple[fx.GraphModule, str, tuple[str, ...]]:
    if isinstance(model, torch.export.ExportedProgram):
        return model.module(), "torch.export", ()
    try:
        tracer = _CaptureTracer(registry)
        graph = tracer.trace(model)
        return fx.GraphModule(tracer.root, graph), "torch.fx", ()
    except Exception as fx_exc:  # symbolic tracing has many failure modes
        fx_msg = f"{type(fx_exc).__name__}: {str(fx_exc).splitlines()[0] if str(fx_exc) else ''}"
        try:
            ep = torch.export.export(model, (example,))
        except Exception as ex_exc:
            msg = str(ex_exc).strip().splitlines()
            _refuse_if_too_small(model, example)
            raise UnsupportedModelError(
                "the model could not be captured as a static graph. torch.fx symbolic "
                f"tracing failed ({fx_msg}) and torch.export failed "
                f"({type(ex_exc).__name__}: {msg[0] if msg else ''}). Python control flow "
                "that depends on tensor values (data-dependent branches or loops) is "
                "outside the ReLU-DAG class; rewrite it without data-dependent control flow."
            ) from ex_exc
        return ep.module(), "torch.export", (f"torch.fx tracing failed ({fx_msg}); captured "
                                             "with torch.export instead",)


_NOISY_LOGGERS = ("torch._subclasses.fake_tensor", "torch.fx.experimental.symbolic_shapes",
                  "torch._dynamo", "torch.export", "torch._export")


@contextlib.contextmanager
def _quiet_torch_logs() -> Iterator[None]:
    """Silence torch's own logging of failures that the tracer reports itself (fake
    tensor propagation and torch.export print full tracebacks at ERROR level)."""
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in _NOISY_LOGGERS]
    for lg, _ in saved:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in saved:
            lg.setLevel(level)


def _refuse_if_too_small(model: nn.Module, example: torch.Tensor) -> None:
    """Raise an input-shape refusal if the eager model itself fails on ``example`` because
    the input is too small (a capture failure would otherwise read as control flow)."""
    try:
        with torch.no_grad():
            model(example)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if _too_small(first):
            raise UnsupportedModelError(
                f"the model cannot run on inputs of shape {tuple(example.shape)}: the input "
                f"is too small for it ({type(exc).__name__}: {first}); pass a larger input "
                "shape (e.g. a spatial size divisible by the model's total stride)") from exc


def _target_name(node: fx.Node, modules: Mapping[str, nn.Module]) -> str:
    if node.op == "call_module":
        m = modules.get(str(node.target))
        return f"{node.target} ({type(m).__name__})"
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    t = node.target
    if isinstance(t, torch._ops.OpOverload):
        return str(t)
    mod = getattr(t, "__module__", "") or ""
    return f"{mod}.{getattr(t, '__name__', str(t))}".lstrip(".")


class ConvertContext:
    """What an adapter may ask about the node it converts (see ``adapters/base.py``)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.modules: dict[str, nn.Module] = dict(gm.named_modules())
        self.values: dict[fx.Node, Any] = {}
        self.tensor_nodes: set[fx.Node] = set()  # input-dependent tensors with an IR node

    # -- modules and parameters
    def module(self, node: fx.Node) -> nn.Module:
        return self.modules[str(node.target)]

    def module_tensor(self, node: fx.Node, attr: str, *, compact: bool = False
                      ) -> tuple[torch.Tensor | None, str]:
        """The module's ``attr`` as a float64 copy (``compact``: a copy in its own dtype
        when that widens exactly to float64, for :meth:`AffineParams.widened`)."""
        t = getattr(self.module(node), attr, None)
        if t is None:
            return None, ""
        return _copy(t, compact), f"{node.target}.{attr}"

    def param(self, arg: Any, *, compact: bool = False) -> tuple[torch.Tensor, str]:
        """A stored parameter or buffer operand, copied as :meth:`module_tensor` does."""
        if isinstance(arg, fx.Node) and arg.op == "get_attr":
            t = operator.attrgetter(str(arg.target))(self.gm)
            if isinstance(t, torch.Tensor):
                return _copy(t, compact), str(arg.target)
        raise Unsupported("a weight operand is computed, not a stored parameter or buffer; "
                          "only parameters can be certified")

    @staticmethod
    def owner(qualname: str) -> str | None:
        return qualname.rsplit(".", 1)[0] if "." in qualname else None

    # -- arguments
    def is_tensor_node(self, arg: Any) -> bool:
        return isinstance(arg, fx.Node) and arg in self.tensor_nodes

    def tensor_arg(self, arg: Any) -> fx.Node:
        if self.is_tensor_node(arg):
            return arg  # type: ignore[no-any-return]
        raise Unsupported(f"operand {arg!r} is not a tensor computed from the input")

    def value(self, arg: Any) -> Any:
        if isinstance(arg, fx.Node):
            if arg.op == "get_attr":
                return operator.attrgetter(str(arg.target))(self.gm)
            return self.values[arg]
        if isinstance(arg, tuple):
            return tuple(self.value(a) for a in arg)
        if isinstance(arg, list):
            return [self.value(a) for a in arg]
        if isinstance(arg, dict):
            return {k: self.value(v) for k, v in arg.items()}
        if isinstance(arg, slice):
            return slice(self.value(arg.start), self.value(arg.stop), self.value(arg.step))
        return arg

    def bind(self, node: fx.Node, names: Sequence[str],
             defaults: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for i, name in enumerate(names):
            if i < len(node.args):
                out[name] = node.args[i]
            elif name in node.kwargs:
                out[name] = node.kwargs[name]
            elif name in defaults:
                out[name] = defaults[name]
            else:
                raise Unsupported(f"missing argument '{name}'")
        extra = set(node.kwargs) - set(names) - {"inplace"}
        if extra:
            raise Unsupported(f"unexpected arguments {sorted(extra)}")
        return out


@dataclass(frozen=True)
class Captured:
    """What capturing a module produced, for reuse by a module of the same structure
    (:func:`certcompress.capture.pair.trace_pair`): the fx graph module, how it was
    captured, its notes, every needed node's meta value (shapes; None when the meta
    pass could not run), and the report of the module's trace check (None when it did
    not run), whose probe outputs :func:`certcompress.certify` reuses."""

    gm: fx.GraphModule
    how: str
    notes: tuple[str, ...]
    shapes: Mapping[fx.Node, Any] | None
    check: TraceCheckReport | None = None


def trace(model: nn.Module | torch.export.ExportedProgram, input_shape: Sequence[int], *,
          registry: AdapterRegistry | None = None, fold_bn: bool = True,
          name: str | None = None, check: bool = True, domain: Any = None) -> Graph:
    """Capture ``model`` as a typed ReLU-DAG :class:`Graph` for inputs of ``input_shape``.

    ``input_shape`` includes the batch dimension (usually 1): the path set, hence every
    bound, depends on it. Raises :class:`TrainModeError` for a model in training mode
    and :class:`UnsupportedModelError` listing every node outside the ReLU-DAG class.
    The model is never modified.

    ``check`` (default True) runs the trace check (:mod:`.check`) on an ``nn.Module``:
    hooks, in-place writes the graph would lose and state changed by ``forward`` are
    refused, and the graph must reproduce a float64 copy of the module on probes of
    ``domain`` (an InputDomain or a ``(lower, upper)`` pair; default the box
    ``[-1, 1]``), else :class:`UnsupportedModelError` names the reason.
    """
    return trace_captured(model, input_shape, registry=registry, fold_bn=fold_bn, name=name,
                          check=check, domain=domain)[0]


def trace_captured(model: nn.Module | torch.export.ExportedProgram, input_shape: Sequence[int],
                   *, registry: AdapterRegistry | None = None, fold_bn: bool = True,
                   name: str | None = None, check: bool = True, domain: Any = None,
                   reuse: Captured | None = None) -> tuple[Graph, Captured]:
    """:func:`trace`, also returning what was captured. ``reuse``: the capture of a
    module with the same structure (same module types and code, same non-parameter
    attributes, parameters and buffers of the same shapes: the caller checks), whose fx
    graph is rebound to ``model``'s parameters instead of tracing ``model`` again. Every
    other step runs as in :func:`trace`: the hook refusals, the in-place analysis, the
    conversion of ``model``'s own parameters and the trace check's probes."""
    from .plugins import default_registry

    reg = registry if registry is not None else default_registry()
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s <= 0 for s in shape):
        raise ConfigurationError(f"input_shape must be positive integers, got {input_shape!r}")
    device = torch.device("cpu")
    if isinstance(model, nn.Module):
        check_eval_mode(model)
        hooks = hook_refusals(model)
        if hooks:
            raise UnsupportedModelError(
                f"{len(hooks)} hook(s) on the model: the traced graph would not run them:",
                hooks)
        params = list(model.parameters())
        dtype = params[0].dtype if params else torch.float32
        if params and params[0].is_meta:  # shapes only: trace on meta tensors throughout
            device = params[0].device
    elif isinstance(model, torch.export.ExportedProgram):
        dtype = torch.float32
        reuse = None
    else:
        raise ConfigurationError(f"expected an nn.Module or ExportedProgram, got "
                                 f"{type(model).__name__}")
    example = torch.zeros(shape, dtype=dtype, device=device)
    with _quiet_torch_logs():
        shapes: Mapping[fx.Node, Any] | None = None
        if reuse is not None and isinstance(model, nn.Module):
            gm, shapes = _rebind(reuse, model)
            how, notes = reuse.how, reuse.notes
        else:
            gm, how, notes = _capture(model, example, reg)
        converter = _Converter(gm, reg)
        converter.offenders.extend(inplace_refusals(gm, converter.inplace_safe))
        nodes, outputs, params_map = converter.convert(example, shapes)
    graph = Graph(nodes=tuple(nodes), outputs=tuple(outputs), params=params_map,
                  input_shape=shape, model_name=name or type(model).__name__, capture=how,
                  notes=notes)
    # the graph is the only holder of the converted (float64) parameters from here on:
    # folding then frees the unfolded ones before the trace check makes its float64
    # copy of the module (one float64 copy of the weights fewer at the peak;
    # docs/bounds.md "Cost at scale")
    fx_shapes = converter.shapes
    del converter, params_map, nodes
    graph = fold_batchnorm(graph) if fold_bn else graph
    report = None
    if check and isinstance(model, nn.Module) and device.type != "meta":
        lower, upper = as_box(domain, shape)
        report = numeric_check(model, graph, lower, upper)
        raise_if_failed(report)
    return graph, Captured(gm, how, notes, fx_shapes, report)


def _rebind(captured: Captured, model: nn.Module
            ) -> tuple[fx.GraphModule, Mapping[fx.Node, Any] | None]:
    """``captured``'s fx graph (a copy) over ``model``'s own submodules, parameters and
    buffers, with the meta values carried over to the copied nodes."""
    graph = fx.Graph()
    copied: dict[fx.Node, fx.Node] = {}
    out = graph.graph_copy(captured.gm.graph, copied)
    graph.output(out)
    gm = fx.GraphModule(model, graph)
    shapes = None if captured.shapes is None else {
        copied[n]: v for n, v in captured.shapes.items() if n in copied}
    return gm, shapes


class _Converter:
    def __init__(self, gm: fx.GraphModule, registry: AdapterRegistry) -> None:
        self.gm = gm
        self.registry = registry
        self.ctx = ConvertContext(gm)
        self.ir_nodes: list[IRNode] = []
        self.params: dict[str, AffineParams] = {}
        self.multi: dict[fx.Node, MultiOutput] = {}
        self.offenders: list[UnsupportedNode] = []
        self.shapes: Mapping[fx.Node, Any] | None = None

    def _needed(self) -> set[fx.Node]:
        out = next(n for n in reversed(self.gm.graph.nodes) if n.op == "output")
        needed: set[fx.Node] = set()
        stack = [out]
        while stack:
            n = stack.pop()
            if n in needed:
                continue
            needed.add(n)
            stack.extend(n.all_input_nodes)
        return needed

    def convert(self, example: torch.Tensor, shapes: Mapping[fx.Node, Any] | None = None
                ) -> tuple[list[IRNode], list[str], dict[str, AffineParams]]:
        graph = self.gm.graph
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise UnsupportedModelError(
                f"certcompress certifies single-input models; this one takes "
                f"{len(placeholders)} inputs ({', '.join(p.name for p in placeholders)})"
            )
        needed = self._needed()
        if shapes is None or any(n not in shapes for n in needed if n.op != "output"):
            shapes = self._meta_values(example, needed)
        self.shapes = shapes
        # fake tensors only where the meta pass failed (building the mode imports
        # torch._dynamo, seconds of a command's start-up)
        fake_mode = FakeTensorMode(allow_non_fake_inputs=True) if shapes is None else None
        interp = fx.Interpreter(self.gm)
        depends: set[fx.Node] = set()
        failed: set[fx.Node] = set()
        output_node: fx.Node | None = None
        value: Any
        for node in graph.nodes:
            if node not in needed:
                continue
            if node.op == "output":
                output_node = node
                break
            if node.op == "placeholder":
                if fake_mode is None:
                    assert shapes is not None
                    value = shapes[node]
                else:
                    with fake_mode:
                        value = fake_mode.from_tensor(example)
                self.ctx.values[node] = value
                interp.env[node] = value
                depends.add(node)
                self.ctx.tensor_nodes.add(node)
                self.ir_nodes.append(IRNode(node.name, None, (), tuple(example.shape), "input"))
                continue
            if any(a in failed for a in node.all_input_nodes):
                # downstream of a refused node: its own failure would only repeat that one
                failed.add(node)
                interp.env[node] = self.ctx.values[node] = None
                depends.add(node)
                self.ctx.tensor_nodes.add(node)
                continue
            try:
                if fake_mode is None:
                    assert shapes is not None
                    value = shapes[node]
                else:
                    with fake_mode:
                        value = interp.run_node(node)
            except Exception as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                reason = f"could not be evaluated for shapes ({type(exc).__name__}: {first})"
                kind = RefusalKind.NO_ADAPTER
                if "data-dependent" in str(exc).lower() or "DataDependent" in type(exc).__name__:
                    reason = ("its result depends on tensor values (e.g. .item() or a "
                              "data-dependent branch)")
                    kind = RefusalKind.OUTSIDE_CLASS
                elif "divisor must be not zero" in str(exc) or "divisor_override" in str(exc):
                    reason = (f"invalid pooling arguments ({first}): divisor_override must be "
                              "None or an integer >= 1")
                    kind = RefusalKind.MODEL
                elif _too_small(str(exc)):
                    reason = (f"the input is too small here (input shape {tuple(example.shape)}"
                              f"; {first})")
                    kind = RefusalKind.INPUT_SHAPE
                elif _shape_mismatch(str(exc)):
                    reason = (f"the input shape {tuple(example.shape)} does not fit this "
                              f"layer ({first})")
                    kind = RefusalKind.INPUT_SHAPE
                self._offend(node, reason, kind)
                failed.add(node)
                value = None
            interp.env[node] = value
            self.ctx.values[node] = value
            if any(a in depends for a in node.all_input_nodes):
                depends.add(node)
            else:
                continue  # constants (parameters, shapes of parameters) need no IR node
            if value is None:
                self.ctx.tensor_nodes.add(node)  # keep going past a failed node
                continue
            if isinstance(value, torch.Tensor):
                self._convert_tensor_node(node, value)
            elif isinstance(value, (tuple, list)) and any(isinstance(v, torch.Tensor)
                                                          for v in value):
                self._convert_multi(node)
            # other values (sizes, dims) stay concrete Python values in ctx.values
        assert output_node is not None
        outputs = self._outputs(output_node)
        if self.offenders:
            raise UnsupportedModelError(
                f"{len(self.offenders)} node(s) of the model are not supported:",
                self.offenders)
        return self.ir_nodes, outputs, self.params

    def _meta_values(self, example: torch.Tensor, needed: set[fx.Node]
                     ) -> dict[fx.Node, Any] | None:
        """Every needed node's value with parameters, buffers and input on the meta
        device (shapes only; several times cheaper than fake tensors, which copy every
        parameter's metadata). None when any node cannot run on meta tensors (a
        data-dependent op, a constant tensor on another device...): the caller then
        propagates fake tensors node by node, which also names the failing nodes."""
        try:
            from torch.nn.utils.stateless import _reparametrize_module
        except ImportError:  # pragma: no cover - private API of torch
            return None
        meta = {k: v.to("meta") for k, v in (*self.gm.named_parameters(),
                                            *self.gm.named_buffers())}
        interp = fx.Interpreter(self.gm)
        values: dict[fx.Node, Any] = {}
        try:
            with torch.no_grad(), _reparametrize_module(self.gm, meta):
                for node in self.gm.graph.nodes:
                    if node not in needed or node.op == "output":
                        continue
                    value: Any = (example.to("meta") if node.op == "placeholder"
                                  else _meta_shortcut(node, interp, self.ctx.modules))
                    if value is None:
                        value = interp.run_node(node)
                    interp.env[node] = value
                    values[node] = value
        except Exception:
            return None
        return values

    def _offend(self, node: fx.Node, reason: str,
                kind: RefusalKind = RefusalKind.NO_ADAPTER) -> None:
        self.offenders.append(UnsupportedNode(node.name, node.op,
                                              _target_name(node, self.ctx.modules), reason,
                                              kind, _group(node, self.ctx.modules)))

    def inplace_safe(self, node: fx.Node) -> bool | None:
        """Whether the adapter for in-place ``node`` declares its in-place form safe (None:
        no adapter, reported by the conversion)."""
        adapter, _, _ = self._adapter_for(node)
        return None if adapter is None else bool(getattr(adapter, "inplace_safe", False))

    def _adapter_for(self, node: fx.Node) -> tuple[Any, str, RefusalKind]:
        if node.op == "call_module":
            m = self.ctx.module(node)
            reg = self.registry.for_module(m)
            key = type(m).__name__
            over = self.registry.overridden(m) if reg is None else None
            if over is not None:
                sub, base = over
                return None, (f"`{sub.__name__}` overrides forward, so the adapter for "
                              f"{base.__module__}.{base.__qualname__} does not apply (it "
                              "would certify the parent's computation); register an adapter "
                              f"for {sub.__module__}.{sub.__qualname__} or declare it in the "
                              "adapter's `subclasses`"), RefusalKind.MODEL
            if reg is None:
                why = _OUTSIDE_CLASS.get(key)
                hint = (why if why else f"no adapter for module type {type(m).__module__}."
                        f"{type(m).__qualname__}; register one with "
                        f"registry.register_module({key}, YourAdapter())")
                return None, hint, _kind(why)
        elif node.op == "call_method":
            reg = self.registry.for_method(str(node.target))
            key = str(node.target)
            if reg is None:
                why = _OUTSIDE_CLASS.get(key)
                return None, (why if why else
                              f"no adapter for Tensor.{key}; register one with "
                              f"registry.register_method('{key}', YourAdapter())"), _kind(why)
        elif node.op == "call_function":
            reg = self.registry.for_function(node.target)
            if reg is None:
                t = node.target
                key = (t._overloadpacket.__name__ if isinstance(t, torch._ops.OpOverload)
                       else getattr(t, "__name__", str(t)))
                why = _OUTSIDE_CLASS.get(key.strip("_"))
                return None, (why if why else
                              f"no adapter for function {_target_name(node, {})}; register "
                              "one with registry.register_function(fn, YourAdapter())"), _kind(why)
        else:
            return None, f"unexpected node kind '{node.op}'", RefusalKind.NO_ADAPTER
        return reg.adapter, reg.source, RefusalKind.NO_ADAPTER

    def _convert_tensor_node(self, node: fx.Node, value: torch.Tensor) -> None:
        self.ctx.tensor_nodes.add(node)  # downstream nodes see it even if it fails
        if (node.op == "call_function" and node.target is operator.getitem
                and isinstance(node.args[0], fx.Node) and node.args[0] in self.multi):
            try:
                conv = self.multi[node.args[0]].select(int(node.args[1]))  # type: ignore[arg-type]
            except Unsupported as exc:
                self._offend(node, exc.reason)
                return
            self._add(node, conv, value)
            return
        adapter, source, kind = self._adapter_for(node)
        if adapter is None:
            self._offend(node, source, kind)
            return
        try:
            result = adapter.convert(node, self.ctx)
        except Unsupported as exc:
            self._offend(node, f"{exc.reason} [adapter '{adapter.name}' from {source}]",
                         exc.kind)
            return
        if isinstance(result, MultiOutput):
            self._offend(node, f"adapter '{adapter.name}' returned several outputs for a "
                               "single tensor")
            return
        self._add(node, result, value)

    def _convert_multi(self, node: fx.Node) -> None:
        adapter, source, kind = self._adapter_for(node)
        if adapter is None:
            self._offend(node, source, kind)
            return
        try:
            result = adapter.convert(node, self.ctx)
        except Unsupported as exc:
            self._offend(node, exc.reason)
            return
        if not isinstance(result, MultiOutput):
            self._offend(node, f"adapter '{adapter.name}' returned one output for a tuple")
            return
        self.multi[node] = result

    def _add(self, node: fx.Node, conv: Converted, value: torch.Tensor) -> None:
        op: IROp = conv.op
        src = _target_name(node, self.ctx.modules)
        self.ir_nodes.append(IRNode(
            name=node.name, op=op, inputs=tuple(n.name for n in conv.inputs),
            shape=tuple(int(s) for s in value.shape), source=src, module=conv.module,
            param_names=conv.param_names))
        if conv.params is not None:
            self.params[node.name] = conv.params

    def _outputs(self, out: fx.Node) -> list[str]:
        names: list[str] = []
        known = {n.name for n in self.ir_nodes}

        def visit(a: Any) -> Any:
            if isinstance(a, fx.Node):
                if a.name in known:
                    names.append(a.name)
                elif a in self.ctx.tensor_nodes:
                    pass  # an offender; reported already
                else:
                    self._offend(out, f"output '{a.name}' is not a tensor computed from the "
                                      "input")
            elif isinstance(a, torch.Tensor) or a is not None and not isinstance(
                    a, (int, float, str, bool)):
                self._offend(out, f"unsupported output value of type {type(a).__name__}")
            return a

        map_aggregate(out.args[0], visit)
        if not names and not self.offenders:
            self._offend(out, "the model returns no tensor computed from the input")
        return names


def _f64(t: torch.Tensor) -> torch.Tensor:
    """A float64 copy that shares nothing with the model (the model is never mutated)."""
    t = t.detach()
    return t.clone() if t.dtype == torch.float64 else t.to(torch.float64)


#: dtypes every value of which is a float64 value: a weight in one of them is held as is
#: and widened where read (:meth:`AffineParams.widened`; docs/bounds.md, "Memory")
_WIDENS_EXACTLY = frozenset({torch.float32, torch.float16, torch.bfloat16})


def _copy(t: torch.Tensor, compact: bool) -> torch.Tensor:
    """:func:`_f64`, or with ``compact`` a copy in ``t``'s own dtype when that widens
    exactly to float64 (it shares nothing with the model either)."""
    if compact and t.dtype in _WIDENS_EXACTLY:
        return t.detach().clone()
    return _f64(t)


#: element-wise functions whose meta output is the broadcast of their arguments: torch
#: runs these on meta tensors through its Python references, whose first call imports
#: torch._dynamo (about 2 s of a command's start-up; benchmarks/bench_cli_startup.py)
_ELEMENTWISE_BINARY = frozenset({operator.add, operator.sub, operator.mul, torch.add,
                                 torch.sub, torch.mul})
_ELEMENTWISE_UNARY = frozenset({torch.relu, nn.functional.relu})


def _meta_elementwise(node: fx.Node, interp: fx.Interpreter, modules: dict[str, nn.Module]
                      ) -> torch.Tensor | None:
    """The meta output of a plain element-wise node (ReLU, or add/sub/mul of meta tensors
    and Python numbers, no keyword arguments) or of an ``nn.Linear`` (whose bias add
    torch decomposes the same way): an empty meta tensor of the output's shape and
    dtype. None for anything else (the node then runs, which also reports errors)."""
    if node.kwargs:
        return None
    if node.op == "call_module":
        m = modules.get(str(node.target))
        if type(m) is nn.Linear and len(node.args) == 1:
            x = interp.env.get(node.args[0]) if isinstance(node.args[0], fx.Node) else None
            if (isinstance(x, torch.Tensor) and x.device.type == "meta" and x.dim() >= 1
                    and x.shape[-1] == m.in_features and x.dtype == m.weight.dtype):
                return torch.empty((*x.shape[:-1], m.out_features), dtype=x.dtype,
                                   device="meta")
            return None
        if type(m) is not nn.ReLU:
            return None
        kind = "unary"
    elif node.op == "call_function" and node.target in _ELEMENTWISE_UNARY:
        kind = "unary"
    elif node.op == "call_function" and node.target in _ELEMENTWISE_BINARY:
        kind = "binary"
    else:
        return None
    args: list[Any] = [interp.env.get(a) if isinstance(a, fx.Node) else a for a in node.args]
    if len(args) != (1 if kind == "unary" else 2):
        return None
    if not all((isinstance(a, torch.Tensor) and a.device.type == "meta")
               or (kind == "binary" and type(a) in (int, float)) for a in args):
        return None
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if not tensors:
        return None
    try:
        shape = broadcast_shapes(*(t.shape for t in tensors))
        dtype = torch.result_type(*args) if kind == "binary" else tensors[0].dtype
    except (RuntimeError, TypeError, ValueError):
        return None
    return torch.empty(shape, dtype=dtype, device="meta")


def _meta_shortcut(node: fx.Node, interp: fx.Interpreter, modules: dict[str, nn.Module]
                   ) -> torch.Tensor | None:
    """The output of an eval-mode BatchNorm on a meta tensor without running it: its
    shape and dtype are the input's. torch decomposes ``batch_norm`` on meta tensors
    into a dozen element-wise prims, a third of a ResNet's shape pass. Anything unusual
    (training mode, a channel mismatch, a non-meta input) returns None and runs the
    module, which also reports the error. Plain element-wise nodes: ``_meta_elementwise``."""
    value = _meta_elementwise(node, interp, modules)
    if value is not None:
        return value
    if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
        return None
    m = modules.get(str(node.target))
    if not isinstance(m, nn.modules.batchnorm._BatchNorm) or m.training:
        return None
    arg = node.args[0]
    x = interp.env.get(arg) if isinstance(arg, fx.Node) else None
    if (not isinstance(x, torch.Tensor) or x.device.type != "meta" or x.dim() < 2
            or x.shape[1] != m.num_features or not m.track_running_stats):
        return None
    return torch.empty_like(x)
