"""The trace check: is the captured graph what the module computes?

Two parts (docs/architecture.md, "Trace check"):

* **Static refusals**, before and while converting: forward hooks and forward pre-hooks
  (on any submodule, and the global ones), in-place ops whose write the graph would
  lose (the mutated tensor is read afterwards under another name, or the op has no
  adapter that declares its in-place form safe), in-place writes to parameters and
  buffers. Subclasses that override ``forward`` are traced through, not matched by
  their parent's adapter (:mod:`.registry`).
* **A numeric check** after capture: the graph (:class:`ForwardInterpreter`) and the
  eager module (a float64 deep copy) are evaluated on probes of the input domain (its
  centre, corners, random points) and must agree to :data:`RTOL` relative to the
  output's magnitude; the module runs twice on the centre (hidden state), and its
  ``state_dict`` and simple Python attributes must not change.

A mismatch raises :class:`UnsupportedModelError` with :data:`RefusalKind.MODEL`
offenders that name the reason.
"""

from __future__ import annotations

import copy
import inspect
import math
import operator
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from ..errors import RefusalKind, UnsupportedModelError, UnsupportedNode
from ..ir.graph import ForwardInterpreter, Graph
from ..measure import flatten_output

__all__ = ["TraceCheckReport", "ProbeOutputs", "RTOL", "hook_refusals", "inplace_refusals",
           "numeric_check", "raise_if_failed", "probe_count", "graph_macs"]

#: the graph and the module must agree to this, relative to the largest output magnitude
#: over the probes (both in float64; folding BatchNorm and reordering sums differ from the
#: module by a few ulps times the depth)
RTOL = 1e-6
#: at most this many corners of the domain are probed
MAX_CORNERS = 32
#: random points in the domain probed besides the centre and the corners
RANDOM_POINTS = 4
#: the probes together cost at most about this many multiply-adds (at least the centre):
#: resnet18 at 224x224 (1.8e9 per input) gets the centre alone, a small CNN every probe
PROBE_MACS = 10 ** 8

_GROUP = "trace check"


def _model_offender(node: str, op: str, target: str, reason: str,
                    group: str = _GROUP) -> UnsupportedNode:
    return UnsupportedNode(node, op, target, reason, RefusalKind.MODEL, group)


# ---------------------------------------------------------------------------- hooks
def hook_refusals(model: nn.Module) -> list[UnsupportedNode]:
    """One offender per forward hook or pre-hook on ``model`` or a submodule, per
    global module hook (``torch.nn.modules.module.register_module_forward_hook``), and per
    module whose ``forward`` is replaced on the instance."""
    out: list[UnsupportedNode] = []
    for name, m in model.named_modules():
        path = name or "<root>"
        target = f"{path} ({type(m).__name__})"
        own = [k for k in ("forward", "__call__", "_call_impl") if k in vars(m)]
        if own:
            out.append(_model_offender(
                path, "call_module", target,
                f"`{own[0]}` replaced on the instance `{path}`: the graph follows its class "
                "instead; define a subclass with that forward instead", group="instance forward"))
        for attr, what in (("_forward_hooks", "forward hook"),
                           ("_forward_pre_hooks", "forward pre-hook")):
            hooks = getattr(m, attr, None) or {}
            for h in hooks.values():
                fn = getattr(h, "__qualname__", None) or type(h).__name__
                out.append(_model_offender(
                    path, "call_module", target,
                    f"{what} on `{path}` ({fn}): a hook can change what the module "
                    "computes and the graph does not run it; remove it (handle.remove()) "
                    "before tracing", group=what))
    g = torch.nn.modules.module
    for attr, what in (("_global_forward_hooks", "global forward hook"),
                       ("_global_forward_pre_hooks", "global forward pre-hook")):
        for h in (getattr(g, attr, None) or {}).values():
            fn = getattr(h, "__qualname__", None) or type(h).__name__
            out.append(_model_offender(
                "<global>", "hook", what,
                f"{what} ({fn}) registered with torch.nn.modules.module."
                f"register_module_{what.split()[1]}_{'pre_' if 'pre' in what else ''}hook "
                "runs on every module; remove it before tracing", group=what))
    return out


# ------------------------------------------------------------------- in-place ops
_INPLACE_OPERATORS = {operator.iadd, operator.isub, operator.imul, operator.itruediv,
                      operator.ifloordiv, operator.imod, operator.ipow, operator.iand,
                      operator.ior, operator.ixor, operator.ilshift, operator.irshift,
                      operator.imatmul, operator.setitem}
#: ops whose result may share memory with their first tensor argument
_VIEW_NAMES = {"view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "permute",
               "transpose", "t", "squeeze", "unsqueeze", "expand", "expand_as", "narrow",
               "select", "getitem", "__getitem__", "contiguous", "detach", "movedim",
               "swapaxes", "swapdims", "split", "chunk", "unbind", "as_strided", "diagonal",
               "unfold", "alias", "_unsafe_view", "slice", "split_with_sizes", "dropout",
               "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
               "native_dropout", "type_as", "to", "float", "double", "identity"}
_VIEW_MODULES: tuple[type[nn.Module], ...] = (
    nn.Identity, nn.Flatten, nn.Unflatten, nn.modules.dropout._DropoutNd)


def _name(target: object) -> str:
    if isinstance(target, str):
        return target
    if isinstance(target, torch._ops.OpOverload):
        return str(target._overloadpacket.__name__)
    return str(getattr(target, "__name__", target))


def _inplace_flag(node: fx.Node, modules: Mapping[str, nn.Module]) -> bool:
    """Whether ``node`` writes into its first tensor argument."""
    if node.op == "call_module":
        m = modules.get(str(node.target))
        return bool(getattr(m, "inplace", False)) if m is not None else False
    if node.op == "call_method":
        meth = str(node.target)
        return meth.endswith("_") and not meth.startswith("__")
    if node.op != "call_function":
        return False
    t = node.target
    if t in _INPLACE_OPERATORS:
        return True
    name = _name(t)
    if name.endswith("_") and not name.startswith("__"):
        return True
    if "inplace" in node.kwargs:
        v = node.kwargs["inplace"]
        return v is not False  # a computed flag counts as in-place
    try:
        sig = inspect.signature(t)  # type: ignore[arg-type]
        bound = sig.bind_partial(*node.args, **node.kwargs)
    except (TypeError, ValueError):
        return False
    v = bound.arguments.get("inplace", False)
    return v is not False


def _first_tensor(node: fx.Node) -> fx.Node | None:
    a = node.args[0] if node.args else next(iter(node.kwargs.values()), None)
    return a if isinstance(a, fx.Node) else None


def _is_view(node: fx.Node, modules: Mapping[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(str(node.target)), _VIEW_MODULES)
    if node.op in ("call_method", "call_function"):
        return _name(node.target).strip("_") in {n.strip("_") for n in _VIEW_NAMES}
    return False


def _what(node: fx.Node, modules: Mapping[str, nn.Module]) -> str:
    if node.op == "call_module":
        m = modules.get(str(node.target))
        return f"{type(m).__name__}(inplace=True) `{node.target}`"
    return f"`{_name(node.target)}`"


def inplace_refusals(gm: fx.GraphModule, adapter_safe: Callable[[fx.Node], bool | None]
                     ) -> list[UnsupportedNode]:
    """Offenders for in-place ops the graph would not reproduce.

    An in-place op on tensor ``T`` is accepted when nothing reads ``T`` (or a view of
    it, or a tensor ``T`` is a view of) after the op except through the op's own result,
    and, when its result is used, its adapter declares the in-place form safe
    (``adapter_safe(node)``: True safe, False not declared, None no adapter, which the
    converter reports itself). An in-place write to a parameter or buffer changes the
    module's state and is always refused.
    """
    modules = dict(gm.named_modules())
    nodes = list(gm.graph.nodes)
    order = {n: i for i, n in enumerate(nodes)}
    inplace = [n for n in nodes if _inplace_flag(n, modules)]
    if not inplace:
        return []
    # which nodes depend on the input
    depends: set[fx.Node] = {n for n in nodes if n.op == "placeholder"}
    for n in nodes:
        if any(a in depends for a in n.all_input_nodes):
            depends.add(n)
    # alias edges: a view or an in-place op shares memory with its first tensor argument
    parent: dict[fx.Node, fx.Node] = {}
    for n in nodes:
        src = _first_tensor(n) if n.op in ("call_module", "call_method", "call_function") \
            else None
        if src is not None and (n in inplace or _is_view(n, modules)):
            parent[n] = src
    children: dict[fx.Node, list[fx.Node]] = {}
    for c, p in parent.items():
        children.setdefault(p, []).append(c)

    def component(start: fx.Node) -> set[fx.Node]:
        seen = {start}
        todo = [start]
        while todo:
            x = todo.pop()
            nb = list(children.get(x, ()))
            if x in parent:
                nb.append(parent[x])
            for y in nb:
                if y not in seen:
                    seen.add(y)
                    todo.append(y)
        return seen

    def derived(start: fx.Node) -> set[fx.Node]:
        seen = {start}
        todo = [start]
        while todo:
            for y in children.get(todo.pop(), ()):
                if y not in seen:
                    seen.add(y)
                    todo.append(y)
        return seen

    out: list[UnsupportedNode] = []
    for n in inplace:
        target = _first_tensor(n)
        if target is None:
            continue
        what = _what(n, modules)
        comp = component(target)
        state = sorted(str(a.target) for a in comp if a.op == "get_attr")
        if state:
            out.append(_model_offender(
                n.name, n.op, what, f"in-place {what} at node `{n.name}` writes into the "
                f"module's parameter or buffer `{state[0]}`, so every call changes the "
                "module's state; compute a new tensor instead", group="in-place write to state"))
            continue
        if target not in depends:
            continue  # a constant computed inside forward: the graph keeps its value
        fresh = derived(n)
        stale = comp - fresh
        late = sorted((u for s in stale for u in s.users
                       if order[u] > order[n] and not _is_view(u, modules) and u is not n),
                      key=order.__getitem__)
        if late:
            reader = late[0]
            who = "the model's output" if reader.op == "output" else f"node `{reader.name}`"
            out.append(_model_offender(
                n.name, n.op, what, f"in-place {what} at node `{n.name}` changes `"
                f"{target.name}`, which {who} reads afterwards; the graph would use the "
                "value before the write. Use the out-of-place form (e.g. `x = x.mul(2)`, "
                "nn.ReLU(inplace=False))", group=f"in-place {_name(n.target)}"
                if n.op != "call_module" else "in-place module"))
            continue
        if n.users and adapter_safe(n) is False:
            out.append(_model_offender(
                n.name, n.op, what, f"in-place {what} at node `{n.name}`: its adapter does "
                "not declare the in-place form safe (Adapter.inplace_safe); use the "
                "out-of-place form", group=f"in-place {_name(n.target)}"))
    return out


# ------------------------------------------------------------------ numeric check
@dataclass(frozen=True)
class ProbeOutputs:
    """The probes a numeric check evaluated, stacked along the batch dimension
    (``inputs``: ``(probes * batch, *input_shape[1:])``, every row a point of the checked
    box), and the module's float64 outputs on them, flattened per row (``outputs``:
    ``(probes * batch, n)``). Points with their outputs, already paid for: ``certify``
    reuses them as output-scale samples."""

    inputs: torch.Tensor
    outputs: torch.Tensor


@dataclass(frozen=True)
class TraceCheckReport:
    """What :func:`numeric_check` (and ``cc.check_trace``) found.

    ``probes`` inputs were evaluated by the graph and by the module (float64);
    ``max_abs_error``/``max_rel_error`` is their largest difference, absolute and relative
    to the largest output magnitude; ``passed`` is False when that exceeds ``tolerance``
    or a static or state check failed, with ``reasons`` saying why."""

    model_name: str
    input_shape: tuple[int, ...]
    probes: int
    max_abs_error: float
    max_rel_error: float
    tolerance: float
    passed: bool
    reasons: tuple[str, ...]
    seconds: float
    output_scale: float = 0.0
    #: the probes and the module's outputs on them (None when the module failed on them)
    samples: ProbeOutputs | None = field(default=None, repr=False, compare=False)

    def summary(self) -> str:
        head = (f"trace check of {self.model_name} (input {self.input_shape}): "
                f"{'passed' if self.passed else 'FAILED'}; graph vs module on "
                f"{self.probes} probe(s): max abs error {self.max_abs_error:.3g}, relative "
                f"{self.max_rel_error:.3g} (tolerance {self.tolerance:.0e}); "
                f"{self.seconds:.2f} s")
        return "\n".join([head, *(f"  - {r}" for r in self.reasons)])


def graph_macs(graph: Graph) -> int:
    """Multiply-adds of one forward pass of ``graph``'s affine nodes (per batch)."""
    total = 0
    for node in graph.nodes:
        p = graph.params.get(node.name)
        if p is None or not node.shape:
            continue
        out = math.prod(node.shape)
        shape = p.weight_shape
        rows = int(shape[0]) if len(shape) else 1
        total += shape.numel() * max(1, out // max(1, rows))
    return total


def probe_count(macs: int) -> int:
    """How many probes a graph of ``macs`` multiply-adds per forward gets (1 to 37)."""
    full = 1 + MAX_CORNERS + RANDOM_POINTS
    return max(1, min(full, PROBE_MACS // max(1, macs)))


def _probes(lower: torch.Tensor, upper: torch.Tensor, count: int, seed: int
            ) -> tuple[torch.Tensor, list[str]]:
    """``count`` probes (centre, all-lower and all-upper corners, random corners, random
    points), stacked along the batch dimension, with their names."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = lower.double(), upper.double()
    pts, names = [(lo + hi) / 2], ["the centre"]
    corners = min(MAX_CORNERS, count - 1 - min(RANDOM_POINTS, max(0, count - 3)))
    for k in range(corners):
        if k == 0:
            c = lo
        elif k == 1:
            c = hi
        else:
            c = torch.where(torch.rand(lo.shape, generator=gen, dtype=torch.float64) < 0.5,
                            lo, hi)
        pts.append(c)
        names.append(f"corner {k}")
    while len(pts) < count:
        u = torch.rand(lo.shape, generator=gen, dtype=torch.float64)
        pts.append(lo + u * (hi - lo))
        names.append(f"random point {len(pts) - 1 - corners}")
    return torch.cat(pts, dim=0), names


def _simple_attributes(model: nn.Module) -> dict[str, object]:
    out: dict[str, object] = {}
    for name, m in model.named_modules():
        for k, v in vars(m).items():
            if isinstance(v, (bool, int, float, str)) or v is None:
                out[f"{name}.{k}" if name else k] = v
    return out


def _state(model: nn.Module) -> dict[str, tuple[int, int, int]]:
    """Each parameter's and buffer's identity, storage and version counter (an in-place
    write bumps the version, a reassignment changes the identity): no copies."""
    return {k: (id(v), v.data_ptr(), v._version)
            for k, v in [*model.named_parameters(remove_duplicate=False),
                         *model.named_buffers(remove_duplicate=False)]}


def _float64_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with float64 parameters and buffers, converted while
    copying (one copy of the weights, not two)."""
    memo: dict[int, Any] = {}
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) in memo:
            continue
        d = t.detach().to(torch.float64) if t.is_floating_point() else t.detach().clone()
        memo[id(t)] = nn.Parameter(d, requires_grad=t.requires_grad) if isinstance(
            t, nn.Parameter) else d
    return copy.deepcopy(model, memo).double()


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _run(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch1: bool
         ) -> torch.Tensor:
    """``fn`` on every probe: batched, or one probe at a time for a batch-1 shape when a
    batched call fails (a model that hard-codes its batch size)."""
    if x.shape[0] == 1 or not batch1:
        return fn(x)
    try:
        y = fn(x)
        if y.shape[0] == x.shape[0]:
            return y
    except Exception:  # noqa: BLE001 - retried one probe at a time, which reports errors
        pass
    return torch.cat([fn(x[i:i + 1]) for i in range(x.shape[0])])


def numeric_check(model: nn.Module, graph: Graph, lower: torch.Tensor, upper: torch.Tensor,
                  *, probes: int | None = None, seed: int = 0,
                  static_reasons: Iterable[str] = ()) -> TraceCheckReport:
    """Evaluate ``graph`` and ``model`` (a float64 deep copy; ``model`` is not touched) on
    probes of the box ``[lower, upper]`` (shape ``graph.input_shape``) and compare; run
    the module twice on the centre; compare its state before and after. Never raises for
    a mismatch: the report says what failed (:func:`raise_if_failed` raises)."""
    t0 = time.perf_counter()
    reasons = list(static_reasons)
    shape = tuple(graph.input_shape)
    lower = lower.reshape(shape).double()
    upper = upper.reshape(shape).double()
    count = probes if probes is not None else probe_count(graph_macs(graph))
    x, names = _probes(lower, upper, max(1, int(count)), seed)
    eager = _float64_copy(model)
    batch1 = shape[0] == 1
    attrs0, state0 = _simple_attributes(eager), _state(eager)
    with torch.no_grad():
        try:
            b = shape[0]
            centre = x[:b]
            y_first = flatten_output(eager(centre.clone()))
            y_again = flatten_output(eager(centre.clone()))  # same input, same batch size
            y_eager = y_first if x.shape[0] == b else torch.cat(
                [y_first, _run(lambda v: flatten_output(eager(v.clone())), x[b:], batch1)])
        except Exception as exc:  # noqa: BLE001 - reported as a refusal reason
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            reasons.append(f"the module fails in float64 on the probes "
                           f"({type(exc).__name__}: {first})")
            return TraceCheckReport(graph.model_name, shape, 0, math.inf, math.inf, RTOL,
                                    False, tuple(reasons), time.perf_counter() - t0)
        interp = ForwardInterpreter(graph)
        y_graph = _run(interp.run, x, batch1)
    attrs1, state1 = _simple_attributes(eager), _state(eager)
    scale = float(max(y_eager.abs().max(), y_graph.abs().max())) if y_eager.numel() else 0.0
    if y_graph.shape != y_eager.shape:
        reasons.append(f"the traced graph returns {tuple(y_graph.shape[1:])} values per input "
                       f"but the module {tuple(y_eager.shape[1:])}")
        abs_err = rel_err = math.inf
    else:
        diff = (y_graph - y_eager).abs()
        nan = torch.isnan(y_graph) != torch.isnan(y_eager)
        diff = torch.where(nan, torch.full_like(diff, math.inf), torch.nan_to_num(diff))
        per = diff.reshape(diff.shape[0], -1).amax(dim=1) if diff.numel() else \
            torch.zeros(diff.shape[0], dtype=diff.dtype)
        abs_err = float(per.max()) if per.numel() else 0.0
        rel_err = abs_err / scale if scale > 0 else (0.0 if abs_err == 0 else math.inf)
        if not rel_err <= RTOL:
            worst = int(per.argmax())
            probe = names[worst // shape[0]] if shape[0] > 1 else names[worst]
            reasons.append(f"traced graph differs from the module's output by {abs_err:.3g} "
                           f"(relative {rel_err:.3g} > {RTOL:.0e}) at probe {probe}")
    if y_first.shape != y_again.shape or not torch.equal(torch.nan_to_num(y_first),
                                                         torch.nan_to_num(y_again)):
        reasons.append("the module returns a different output when called twice on the "
                       "same input (state changed by forward)")
    buffers = {k for k, _ in eager.named_buffers(remove_duplicate=False)}
    for k in sorted(set(state0) | set(state1)):
        if state0.get(k) != state1.get(k):
            reasons.append(f"state changed by forward: {'buffer' if k in buffers else 'parameter'}"
                           f" `{k}`")
    for k in sorted(set(attrs0) | set(attrs1)):
        if k not in attrs0 or k not in attrs1 or not _same(attrs0[k], attrs1[k]):
            reasons.append(f"state changed by forward: attribute `{k}` "
                           f"({attrs0.get(k)!r} -> {attrs1.get(k)!r})")
    return TraceCheckReport(graph.model_name, shape, int(x.shape[0] // shape[0]),
                            abs_err, rel_err, RTOL, not reasons, tuple(reasons),
                            time.perf_counter() - t0, scale, ProbeOutputs(x, y_eager))


def raise_if_failed(report: TraceCheckReport) -> None:
    """Raise :class:`UnsupportedModelError` naming every reason ``report`` failed for."""
    if report.passed:
        return
    offenders = [_model_offender(report.model_name, "module", report.model_name, r)
                 for r in report.reasons]
    raise UnsupportedModelError(
        f"the traced graph of {report.model_name} does not reproduce the module "
        f"({len(offenders)} problem(s)); certificates would describe another function. "
        "Remove hooks, in-place writes and state changes from forward (or register an "
        "adapter for the module), then trace again:", offenders)


def default_box(shape: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The box probed without a domain: ``[-1, 1]`` per element."""
    return (-torch.ones(tuple(shape), dtype=torch.float64),
            torch.ones(tuple(shape), dtype=torch.float64))


def as_box(domain: Any, shape: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lower, upper)`` from an InputDomain-like object (``lower_tensor``/
    ``upper_tensor``), a ``(lower, upper)`` pair, or None (:func:`default_box`)."""
    if domain is None:
        return default_box(shape)
    if hasattr(domain, "lower_tensor"):
        return domain.lower_tensor().double(), domain.upper_tensor().double()
    lo, hi = domain
    return (torch.as_tensor(lo, dtype=torch.float64).expand(tuple(shape)).clone(),
            torch.as_tensor(hi, dtype=torch.float64).expand(tuple(shape)).clone())
