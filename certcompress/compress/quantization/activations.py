"""Activation quantization: per-tensor quantizers inserted into a model, with ranges
from calibration data or from the bounds tier over the domain (docs/quantization.md,
"Activation quantization").

:func:`insert_quantizers` BatchNorm-folds the model (``torch.fx``) and places an
:class:`~certcompress.capture.fakequant.ActivationQuantizer` where onnxruntime's int8
kernels read or write 8-bit tensors: the network input, every ReLU, every addition of
two branches, every pooling output, and every affine layer's output that no ReLU
follows and that is not a network output (the logits stay float). A max-pooling's
quantizer reuses the grid of its input's (so onnxruntime runs it in int8); its input is
then a maximum of values on that very grid, which it returns exactly, so its rounding
bound is 0 (``slack = -scale / 2``) rather than a rounding the certificate would pay
for twice.

Ranges. ``calibration``: the min/max of each quantizer's input over the batch (with 0
included); values outside are clipped, and the certificate covers the clipping
(modelled exactly). Without calibration: the interval of the quantizer's input that the
bounds tier proves for the weight-quantized network over the domain; the activation
rounding upstream can still move a value slightly past it, and the certificate covers
that clipping too.
"""

from __future__ import annotations

import copy
import math
import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from ...api import trace
from ...bounds.propagation.engine import propagate
from ...bounds.propagation.lowering import lower_pair
from ...capture.fakequant import ACT_SLACK_RANGE, ACT_SLACK_REL, ActivationQuantizer, default_slack
from ...domain import InputDomain
from ...errors import ConfigurationError
from ...ir.ops import ActQuantOp

__all__ = ["ActivationPlan", "is_relu", "insert_quantizers", "activation_ranges", "set_ranges",
           "fold_batchnorm", "quantizers_of", "add_kernel_slack", "ACT_SLACK_REL",
           "ACT_SLACK_RANGE"]


_RELU = (nn.ReLU, F.relu, torch.relu)
_POOL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
         nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
_MAXPOOL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
_MAXPOOL_FN = (F.max_pool1d, F.max_pool2d, F.max_pool3d)
_AFFINE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_ADD = (operator.add, operator.iadd, torch.add)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of the eval-mode ``model`` with every BatchNorm after a convolution folded
    into it (``torch.fx``); ``model`` is not modified."""
    from torch.fx.experimental.optimization import fuse

    if model.training:
        raise ConfigurationError("the model is in training mode; call model.eval() first")
    try:
        folded: nn.Module = fuse(model, inplace=False)
    except Exception as exc:
        raise ConfigurationError(
            f"cannot fold BatchNorm in {type(model).__name__}: torch.fx cannot trace it "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    return folded.eval()


def _kind(node: fx.Node, mods: dict[str, nn.Module]) -> str:
    if node.op == "placeholder":
        return "input"
    if node.op == "call_module":
        m = mods[str(node.target)]
        if isinstance(m, nn.ReLU):
            return "relu"
        if isinstance(m, _MAXPOOL):
            return "maxpool"
        if isinstance(m, _POOL):
            return "pool"
        if isinstance(m, _AFFINE):
            return "affine"
        return "other"
    if node.op == "call_function":
        if node.target in _RELU:
            return "relu"
        if node.target in _MAXPOOL_FN:
            return "maxpool"
        if node.target in _ADD and sum(isinstance(a, fx.Node) for a in node.args) == 2:
            return "add"
    if node.op == "call_method" and node.target == "relu":
        return "relu"
    return "other"


def is_relu(node: fx.Node, gm: fx.GraphModule) -> bool:
    """Whether the fx ``node`` of ``gm`` is a ReLU (module, function or method)."""
    return _kind(node, dict(gm.named_modules())) == "relu"


@dataclass(frozen=True)
class ActivationPlan:
    """Where the quantizers are: quantizer module name -> kind of the tensor it quantizes
    (``input``, ``relu``, ``add``, ``pool``, ``maxpool``, ``affine``), and for a
    max-pooling quantizer the quantizer whose grid it shares."""

    kinds: dict[str, str]
    shares: dict[str, str]


def insert_quantizers(model: nn.Module, bits: int = 8) -> tuple[fx.GraphModule, ActivationPlan]:
    """``model`` (already BatchNorm-folded, or without BatchNorm) as an fx GraphModule with
    disabled quantizers (unit scale) at the module docstring's places; set ranges with
    :func:`set_ranges`."""
    if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 8:
        raise ConfigurationError(f"activations must be an integer number of bits in [2, 8], "
                                 f"got {bits!r}")
    gm = model if isinstance(model, fx.GraphModule) else fx.symbolic_trace(model)
    gm = copy.deepcopy(gm)
    mods = dict(gm.named_modules())
    graph = gm.graph
    outputs = {a for n in graph.nodes if n.op == "output" for a in _flat(n.args)}
    kinds: dict[str, str] = {}
    shares: dict[str, str] = {}
    quantized_at: dict[fx.Node, str] = {}
    qmax = 2 ** bits - 1
    for node in list(graph.nodes):
        kind = _kind(node, mods)
        if kind == "other":
            continue
        users = list(node.users)
        if kind in ("affine", "add"):
            if node in outputs:
                continue
            if users and all(_kind(u, mods) == "relu" for u in users):
                continue  # quantized after the ReLU (fused Conv+ReLU / Add+ReLU)
        name = f"act_quant_{len(kinds)}"
        gm.add_module(name, ActivationQuantizer(1.0, 0, 0, qmax, enabled=False))
        with graph.inserting_after(node):
            q = graph.call_module(name, (node,))
        node.replace_all_uses_with(q, delete_user_cb=lambda u, q=q: u is not q)
        kinds[name] = kind
        quantized_at[node] = name
        if kind == "maxpool" and isinstance(node.args[0], fx.Node):
            src = node.args[0]
            if src.op == "call_module" and str(src.target) in kinds:
                shares[name] = str(src.target)
    graph.lint()
    gm.recompile()
    return gm.eval(), ActivationPlan(kinds, shares)


def _flat(args: object) -> list[fx.Node]:
    out: list[fx.Node] = []
    fx.node.map_arg(args, lambda n: out.append(n) or n)  # type: ignore[func-returns-value,type-var]
    return out


def quantizers_of(model: nn.Module) -> dict[str, ActivationQuantizer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, ActivationQuantizer)}


def activation_ranges(model: nn.Module, calibration: Tensor) -> dict[str, tuple[float, float]]:
    """``(min, max)`` of every quantizer's input over ``calibration`` (quantizers as they
    are: set them disabled to calibrate the float activations)."""
    seen: dict[str, list[float]] = {}
    hooks = []
    for name, m in quantizers_of(model).items():
        def hook(mod: nn.Module, args: tuple[Tensor, ...], name: str = name) -> None:
            x = args[0].detach()
            lo, hi = float(x.min()), float(x.max())
            if name in seen:
                seen[name] = [min(seen[name][0], lo), max(seen[name][1], hi)]
            else:
                seen[name] = [lo, hi]
        hooks.append(m.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            for i in range(0, len(calibration), 64):
                model(calibration[i:i + 64])
    finally:
        for h in hooks:
            h.remove()
    return {k: (v[0], v[1]) for k, v in seen.items()}


def _grid(lo: float, hi: float, bits: int) -> tuple[float, int, int, int]:
    """Asymmetric unsigned grid ``(scale, zero_point, 0, 2^bits - 1)`` covering
    ``[min(lo, 0), max(hi, 0)]`` (0 exactly representable)."""
    qmax = 2 ** bits - 1
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ConfigurationError(f"activation range [{lo}, {hi}] is not finite")
    if hi - lo <= 0.0:
        hi = lo + 1e-8
    scale = float(torch.tensor((hi - lo) / qmax, dtype=torch.float32))
    zp = int(min(max(round(-lo / scale), 0), qmax))
    if -zp * scale > lo or (qmax - zp) * scale < hi:
        # the rounded zero point shifted the grid by up to half a step: one step more
        scale = float(torch.tensor((hi - lo) / (qmax - 1), dtype=torch.float32))
        zp = int(min(max(round(-lo / scale), 0), qmax))
    return scale, zp, 0, qmax


def set_ranges(model: nn.Module, plan: ActivationPlan, ranges: dict[str, tuple[float, float]],
               bits: int | dict[str, int], enabled: bool = True) -> None:
    """Give every quantizer of ``model`` its grid from ``ranges`` (in place); ``bits``:
    one width for all, or one per quantizer name (a max-pooling quantizer takes its
    source's grid)."""
    qs = quantizers_of(model)
    missing = sorted(set(qs) - set(ranges))
    if missing:
        raise ConfigurationError(f"no activation range for quantizer(s) {missing} (never "
                                 "reached by the calibration inputs?)")
    width = bits if isinstance(bits, dict) else dict.fromkeys(qs, bits)
    grids = {name: _grid(*ranges[name], width[name]) for name in qs if name not in plan.shares}
    for name, src in plan.shares.items():
        grids[name] = grids[src]
    for name, m in qs.items():
        scale, zp, qmin, qmax = grids[name]
        slack = default_slack(scale, zp, qmin, qmax)
        if name in plan.shares:
            # its input is a max-pooling of values on this very grid (the source
            # quantizer's outputs), so it returns its input exactly: no rounding, no
            # clipping (delta = scale / 2 + slack = 0)
            slack = -0.5 * scale
        m.op = ActQuantOp(scale, zp, qmin, qmax, enabled, slack)


def bounds_ranges(original: nn.Module, compressed: nn.Module, domain: InputDomain
                  ) -> dict[str, tuple[float, float]]:
    """The interval of every quantizer's input that the bounds tier proves for
    ``compressed`` (quantizers disabled) over ``domain``."""
    g = trace(original, domain.shape, domain=domain)
    g2 = trace(compressed, domain.shape, domain=domain)
    pair = lower_pair(g, g2)
    state = propagate(pair, domain.lower_tensor().unsqueeze(0),
                      domain.upper_tensor().unsqueeze(0))
    module_of = {n.name: n.module for n in g2.nodes if isinstance(n.op, ActQuantOp)}
    out: dict[str, tuple[float, float]] = {}
    for node in pair.nodes:
        mod = module_of.get(node.source)
        if mod is None or mod in out or not node.inputs:
            continue
        b = state.bounds[node.inputs[0]]
        out[mod] = (float(b.cl.min()), float(b.cu.max()))
    return out


def quantized_pair(model: nn.Module, qmodel_weights: nn.Module, bits: int,
                   calibration: Tensor | None, domain: InputDomain | None,
                   ) -> tuple[nn.Module, nn.Module, ActivationPlan]:
    """``(original, compressed)``: the float model with disabled quantizers and the
    weight-quantized one with enabled quantizers (same graph)."""
    orig, plan = insert_quantizers(model, bits)
    comp, _ = insert_quantizers(qmodel_weights, bits)
    if calibration is not None:
        ranges = activation_ranges(orig, calibration.detach().to(torch.float32))
    elif domain is not None:
        ranges = bounds_ranges(orig, comp, domain)
    else:
        raise ConfigurationError("activation quantization needs ranges: pass calibration= "
                                 "(inputs) or domain= (the bounds tier's ranges)")
    set_ranges(orig, plan, ranges, bits, enabled=False)
    set_ranges(comp, plan, ranges, bits, enabled=True)
    return orig, comp, plan



def add_kernel_slack(comp: nn.Module, weight_scales: dict[str, float]) -> None:
    """Add the int32 bias rounding of each int8 convolution / linear kernel to the slack
    of the quantizer that reads its output (in place).

    ``weight_scales``: qualified weight name (``conv1.weight``) -> its largest weight
    scale. A layer whose input is an activation quantizer (scale ``s_in``) and that has a
    bias runs in onnxruntime as an int8 kernel with the bias rounded to
    ``s_in * s_w[c]``: a perturbation of at most ``s_in * max_c s_w[c] * (1/2 + 2^-10)``
    before a 1-Lipschitz ReLU and clamp, so the quantizer reading the output (directly or
    through one ReLU) moves by at most as much. A layer whose output reaches no quantizer
    (the logits) stays a float kernel: no bias rounding (float32 rounding only, which the
    certificate does not cover)."""
    if not isinstance(comp, fx.GraphModule):
        raise ConfigurationError("add_kernel_slack needs the fx GraphModule of "
                                 "insert_quantizers")
    qs = quantizers_of(comp)
    for node in comp.graph.nodes:
        s_w = weight_scales.get(f"{node.target}.weight") if node.op == "call_module" else None
        if s_w is None:
            continue
        src = node.args[0]
        if not (isinstance(src, fx.Node) and src.op == "call_module" and str(src.target) in qs):
            continue
        if getattr(comp.get_submodule(str(node.target)), "bias", None) is None:
            continue
        eps = qs[str(src.target)].op.scale * float(s_w) * (0.5 + 2.0 ** -10)
        users = list(node.users)
        if len(users) == 1 and is_relu(users[0], comp):
            users = list(users[0].users)
        readers = [qs[str(u.target)] for u in users
                   if u.op == "call_module" and str(u.target) in qs]
        if len(readers) != len(users):
            continue  # a float kernel (its output is not requantized)
        for q in readers:
            q.op = ActQuantOp(q.op.scale, q.op.zero_point, q.op.qmin, q.op.qmax, q.op.enabled,
                              q.op.slack + eps)


def _affine_in_order(gm: nn.Module) -> list[tuple[str, nn.Module]]:
    """The Linear/Conv modules of ``gm`` in execution order (fx trace)."""
    g = gm if isinstance(gm, fx.GraphModule) else fx.symbolic_trace(gm)
    mods = dict(g.named_modules())
    return [(str(n.target), mods[str(n.target)]) for n in g.graph.nodes
            if n.op == "call_module" and isinstance(mods[str(n.target)], _AFFINE)]


def _relu_after(gm: nn.Module, kind: str = "affine") -> list[bool]:
    """For each affine layer (``kind="affine"``) or addition of two branches
    (``kind="add"``) of ``gm`` (execution order): is its only user a ReLU?"""
    g = gm if isinstance(gm, fx.GraphModule) else fx.symbolic_trace(gm)
    mods = dict(g.named_modules())
    return [len(n.users) == 1 and _kind(next(iter(n.users)), mods) == "relu"
            for n in g.graph.nodes if _kind(n, mods) == kind]


def _restore_relus(gm: fx.GraphModule, relu_after: list[bool] | set[str],
                   kind: str = "affine") -> fx.GraphModule:
    """``gm`` (a copy) with ``torch.relu`` between affine layer ``i`` and the quantizer
    reading it, wherever the float model has a ReLU after layer ``i``, ``gm`` has none
    and the quantizer's range starts at 0 (zero point = qmin): there
    ``Q(relu(x)) = Q(x)`` exactly, which is why onnxruntime's quantizer drops such ReLUs;
    the float twin needs them back."""
    gm = copy.deepcopy(gm)
    qs = quantizers_of(gm)
    mods = dict(gm.named_modules())
    affine = [n for n in gm.graph.nodes if _kind(n, mods) == kind]
    if isinstance(relu_after, set):  # the affine modules (by name) to restore after
        want = [str(n.target) in relu_after for n in affine]
    elif len(affine) != len(relu_after):
        return gm  # no correspondence: the twin check decides
    else:
        want = list(relu_after)
    for i, node in enumerate(affine):
        if not want[i] or len(node.users) != 1:
            continue
        user = next(iter(node.users))
        q = qs.get(str(user.target)) if user.op == "call_module" else None
        if q is None or q.op.zero_point != q.op.qmin:
            continue
        with gm.graph.inserting_after(node):
            r = gm.graph.call_function(torch.relu, (node,))
        user.replace_input_with(node, r)
    gm.graph.lint()
    gm.recompile()
    return gm


def _match_layers(src: list[tuple[str, nn.Module]], dst: list[tuple[str, nn.Module]]
                  ) -> list[tuple[str, str]]:
    """Pair the affine layers of the float model (``src``) with the quantized graph's
    (``dst``), both in execution order: each source layer takes the first unpaired
    destination layer with the same weight shape (exporters may run a residual block's
    shortcut convolution before or after the main branch). The twin check confirms it."""
    if len(src) != len(dst):
        raise ConfigurationError(f"cannot align the float model with the quantized one: "
                                 f"{len(src)} affine layers vs {len(dst)}")
    def shape_of(m: nn.Module) -> tuple[int, ...]:
        w = m.weight
        assert isinstance(w, Tensor)
        return tuple(w.shape)

    free = list(dst)
    pairs = []
    for sname, s in src:
        shape = shape_of(s)
        hit = next((i for i, (_, d) in enumerate(free) if shape_of(d) == shape), None)
        if hit is None:
            raise ConfigurationError(
                f"cannot align '{sname}' (weight {shape}) with '{free[0][0]}' (weight "
                f"{shape_of(free[0][1])}): no layer of the quantized graph left with that "
                "weight shape")
        pairs.append((sname, free.pop(hit)[0]))
    return pairs


def float_twin(quantized: nn.Module, original: nn.Module, example: Tensor,
               rtol: float = 1e-9) -> tuple[nn.Module, nn.Module]:
    """``(twin, aligned)``: the float counterpart of an activation-quantized model and the
    quantized model itself, with the same graph.

    ``quantized`` is an fx GraphModule with activation quantizers (an imported QDQ file:
    ``cc.load_onnx`` of onnxruntime's ``quantize_static`` output or of
    ``cc.export_w8a8``'s); ``original`` its float model (BatchNorm is folded first). The
    result is a copy of ``quantized`` with every quantizer disabled and the weights and
    biases of its affine layers replaced, in execution order, by ``original``'s; both
    get back the ReLUs onnxruntime's quantizer drops before a quantizer whose range
    starts at 0 (where the float model has one after the same layer; a no-op for the
    quantized model), so that
    ``cc.certify(twin, aligned, ...)`` certifies the file against the float model. The
    twin must compute ``original``'s function: checked on ``example`` (inputs of the
    domain) in float64 to relative ``rtol``, else ConfigurationError. The layer-by-layer
    correspondence (affine layers in execution order, the ReLUs after them) is structural;
    the rest of the graph is the file's, and the check on ``example`` is what confirms
    that it computes the float model's function."""
    if not isinstance(quantized, fx.GraphModule):
        raise ConfigurationError("quantized must be an fx GraphModule (e.g. cc.load_onnx of "
                                 "a QDQ file)")
    folded = fold_batchnorm(original)
    src = _affine_in_order(folded)
    pairs = _match_layers(src, _affine_in_order(quantized))
    relu_src = dict(zip([n for n, _ in src], _relu_after(folded)))
    aligned = _restore_relus(quantized, {d for s, d in pairs if relu_src[s]})
    aligned = _restore_relus(aligned, _relu_after(folded, "add"), "add")
    twin = copy.deepcopy(aligned)
    for m in quantizers_of(twin).values():
        m.op = ActQuantOp(m.op.scale, m.op.zero_point, m.op.qmin, m.op.qmax, False,
                          m.op.slack)
    tmods = dict(twin.named_modules())
    with torch.no_grad():
        smods = dict(src)
        for sname, dname in pairs:
            s, d = smods[sname], tmods[dname]
            sw = s.weight
            dw = d.weight
            assert isinstance(sw, Tensor) and isinstance(dw, Tensor)
            if sw.shape != dw.shape:
                raise ConfigurationError(f"cannot align '{sname}' (weight {tuple(sw.shape)}) "
                                         f"with '{dname}' (weight {tuple(dw.shape)})")
            dw.copy_(sw)
            sb, db = getattr(s, "bias", None), getattr(d, "bias", None)
            if isinstance(db, Tensor):
                db.copy_(sb if isinstance(sb, Tensor) else torch.zeros_like(db))
            elif isinstance(sb, Tensor) and bool(sb.any()):
                raise ConfigurationError(f"'{dname}' has no bias but '{sname}' has one")
    x = example.double()
    with torch.no_grad():
        a = copy.deepcopy(folded).double()(x)
        b = copy.deepcopy(twin).double()(x)
    err = float((a - b).abs().max())
    if not err <= rtol * max(float(a.abs().max()), 1e-30):
        raise ConfigurationError(f"the aligned float model differs from the original by "
                                 f"{err:.3g} on the example inputs: the two graphs do not "
                                 "correspond layer by layer")
    return twin.eval(), aligned.eval()
