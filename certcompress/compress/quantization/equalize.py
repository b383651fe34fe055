"""Certified equalization: a function-preserving neuron rescaling that lowers the
certified bound of a given quantization.

ReLU (and LeakyReLU, max- and average-pooling, index maps) are positively homogeneous,
so multiplying a hidden channel's incoming weights and bias by ``lambda > 0`` and its
outgoing weights by ``1/lambda`` leaves the function unchanged; with a BatchNorm after
the producing layer, its ``gamma`` and ``beta`` carry the factor. The path-metric is
invariant under such rescalings, but the quantization grid is not, so the rescaling
changes *which* quantized model one gets, and its certified bound (cross-layer
equalization, here guided by the certified bound itself).

Factors are powers of two, so the rescaled network computes exactly the same floats
(every product is scaled exactly). Candidates per (producer, consumer) pair: the
column ranges of the consumer (equalizing its per-output-channel grids) and the
DFQ-style balance ``sqrt(range_consumer / range_producer)``, at several exponents; each
is scored by the core engine's bound, one pair at a time, keeping strict improvements.
The result is re-certified with :func:`quantize`; if it does not lower the bound the
identity is returned.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import torch
from torch import Tensor, nn

from ...bounds import graph_path_metric
from ...certificate import Certificate
from ...errors import ConfigurationError, SoundnessError
from ...ir.graph import Graph
from ...ir.ops import (
    AffineParams,
    ChannelAffineOp,
    ConvOp,
    FixedLinearOp,
    IndexOp,
    LeakyReLUOp,
    LinearOp,
    MaxPoolOp,
    ReLUOp,
)
from ...measure import deviations, float64_function
from ._engine import Domain, Evaluator, quant_domain
from .apply import quantize
from .config import QuantConfig
from .quantizers import affine_layers, channel_axis, param_name, quantize_tensor

__all__ = ["EqualizationResult", "equalize"]

_HOMOGENEOUS = (ReLUOp, LeakyReLUOp, MaxPoolOp, FixedLinearOp, IndexOp)
_CHANNEL_PRESERVING = (ReLUOp, LeakyReLUOp, MaxPoolOp)


@dataclass(frozen=True)
class EqualizationResult:
    """The rescaled float model and the evidence that it helps.

    ``model`` computes the same function as the input model (``function_change`` is the
    largest ``||f(x) - f_eq(x)||_1`` measured, float64) and is the input model itself
    when ``applied`` is False. ``scales[layer]`` are the factors applied to the output
    channels of each producing layer. Bounds are certified (:func:`quantize` on the
    input model and on the rescaled one, same ``qcfg``); deviations are measured on the
    same inputs against the input model.
    """

    model: nn.Module = field(repr=False, compare=False)
    applied: bool
    pairs: tuple[tuple[str, str], ...]
    scales: Mapping[str, Tensor] = field(repr=False)
    bound_before: float
    bound_after: float
    deviation_before: float
    deviation_after: float
    function_change: float
    evaluations: int
    certificate_before: Certificate = field(repr=False)
    certificate_after: Certificate = field(repr=False)

    def summary(self) -> str:
        if self.applied:
            head = "equalization applied"
        elif not self.pairs:
            head = ("equalization not applicable (no layer's output reaches a single next "
                    "layer through BatchNorm/ReLU/pooling only; e.g. it enters a residual add)")
        else:
            head = "equalization not applied (no rescaling lowered the certified bound)"
        return "\n".join([
            f"{head}: {len(self.pairs)} rescalable layer pair(s), {self.evaluations} bounds "
            "evaluated",
            f"  certified bound   {self.bound_before:.6g} -> {self.bound_after:.6g}",
            f"  measured max dev  {self.deviation_before:.6g} -> {self.deviation_after:.6g}",
            f"  function change   {self.function_change:.3g} (max l1, float64)",
        ])


@dataclass(frozen=True)
class _Pair:
    producer: str  # module of the layer whose output channels are rescaled
    bn: str | None  # BatchNorm module carrying the factor (else the producer does)
    bn_node: str | None
    consumer: str
    columns: tuple[Tensor, ...]  # per channel: consumer weight indices along its input axis
    channels: int


def _users(g: Graph) -> dict[str, list[str]]:
    users: dict[str, list[str]] = {n.name: [] for n in g.nodes}
    for n in g.nodes:
        for i in n.inputs:
            users[i].append(n.name)
    for o in g.outputs:
        users[o].append("<output>")
    return users


def _single_user(users: Mapping[str, list[str]], name: str) -> str | None:
    u = users[name]
    return u[0] if len(u) == 1 and u[0] != "<output>" else None


def find_pairs(gu: Graph, model: nn.Module) -> list[_Pair]:
    """Producer/consumer layer pairs joined by positively homogeneous single-user ops."""
    layers = affine_layers(model)
    mods = dict(model.named_modules())
    users = _users(gu)
    by_weight = {n.param_names[0]: n for n in gu.nodes
                 if isinstance(n.op, (LinearOp, ConvOp)) and n.param_names}
    owner = {param_name(name, "weight"): name for name in layers}
    seen_modules: dict[str, int] = {}
    for w in by_weight:
        seen_modules[w] = seen_modules.get(w, 0) + 1
    pairs = []
    for wname, a in by_weight.items():
        prod = owner.get(wname)
        if prod is None or (isinstance(a.op, ConvOp) and a.op.transposed):
            continue
        if isinstance(a.op, LinearOp) and len(a.shape) != 2:
            continue
        nxt = _single_user(users, a.name)
        bn = bn_node = None
        if nxt is not None and isinstance(gu.node(nxt).op, ChannelAffineOp):
            node = gu.node(nxt)
            bn = next((p.rsplit(".", 1)[0] for p in node.param_names
                       if p.endswith("running_mean")), None)
            bn_mod = mods.get(bn) if bn is not None else None
            if not isinstance(bn_mod, nn.modules.batchnorm._BatchNorm) or bn_mod.weight is None \
                    or bn_mod.bias is None:
                continue
            bn_node = node.name
            nxt = _single_user(users, nxt)
        chain = []
        while nxt is not None and isinstance(gu.node(nxt).op, _HOMOGENEOUS) \
                and len(gu.node(nxt).inputs) == 1:
            chain.append(gu.node(nxt))
            nxt = _single_user(users, nxt)
        if nxt is None:
            continue
        b = gu.node(nxt)
        cons = owner.get(b.param_names[0]) if b.param_names else None
        if cons is None or cons == prod or not isinstance(b.op, (LinearOp, ConvOp)):
            continue
        if isinstance(b.op, ConvOp) and (b.op.transposed or b.op.groups != 1):
            continue
        if isinstance(b.op, LinearOp) and len(gu.node(b.inputs[0]).shape) != 2:
            continue
        cols = _columns(a.shape, chain, b.op)
        if cols is not None:
            pairs.append(_Pair(prod, bn, bn_node, cons, cols, a.shape[1]))
    return pairs


def _columns(shape: tuple[int, ...], chain: Sequence, consumer: object
             ) -> tuple[Tensor, ...] | None:
    """For each producer channel, the consumer's input indices it feeds (weight axis 1),
    by pushing one-channel indicators through the chain; None if channels mix."""
    n_ch = shape[1]
    if all(isinstance(n.op, _CHANNEL_PRESERVING) for n in chain):
        if isinstance(consumer, ConvOp) or len(shape) == 2:
            return tuple(torch.tensor([c]) for c in range(n_ch))
    cols = []
    taken: set[int] = set()
    for c in range(n_ch):
        x = torch.zeros(shape, dtype=torch.float64)
        x[:, c] = 1.0
        with torch.no_grad():
            for n in chain:
                x = n.op.forward([x], None)
        if isinstance(consumer, ConvOp):  # whole input channels of the consumer
            per = x.reshape(x.shape[0], x.shape[1], -1)[0]
            idx = torch.nonzero(per.abs().sum(dim=1)).reshape(-1)
            if len(idx) > 1:
                return None
        else:
            idx = torch.nonzero(x.reshape(-1)).reshape(-1)
        ids = set(int(i) for i in idx)
        if ids & taken:
            return None
        taken |= ids
        cols.append(idx)
    return tuple(cols)


class _State:
    """Current module-space tensors and BatchNorm factors, and their bound."""

    def __init__(self, model: nn.Module, qcfg: QuantConfig, ev: Evaluator) -> None:
        self.model = model
        self.qcfg = qcfg
        self.ev = ev
        mods = affine_layers(model)
        self.tensors: dict[str, Tensor] = {}
        for name in mods:
            for attr in ("weight", "bias"):
                t = getattr(mods[name], attr, None)
                if isinstance(t, Tensor):
                    self.tensors[param_name(name, attr)] = t.detach().clone()
        self.bn_factor: dict[str, Tensor] = {}
        self.evaluations = 0
        self._qcache: dict[str, tuple[Tensor, Tensor]] = {}

    def _quantized(self, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        mods = affine_layers(self.model)
        out = dict(tensors)
        for name, spec in self.qcfg.layers.items():
            for attr, bits, gran in (("weight", spec.bits, spec.granularity),
                                     ("bias", self.qcfg.bias_bits, "per-tensor")):
                pname = param_name(name, attr)
                if bits is None or pname not in tensors:
                    continue
                t = tensors[pname]
                cached = self._qcache.get(pname)
                if cached is not None and cached[0] is t:
                    out[pname] = cached[1]
                    continue
                axis = channel_axis(mods[name]) if attr == "weight" else None
                v = quantize_tensor(t, bits, gran, axis, param=pname, layer=name).values()
                self._qcache[pname] = (t, v)
                out[pname] = v
        return out

    def overrides(self, bn_factor: Mapping[str, Tensor]) -> dict[str, AffineParams]:
        out = {}
        for node, f in bn_factor.items():
            p = self.ev.gu.params[node]
            out[node] = AffineParams(p.weight * f, None if p.bias is None else p.bias * f)
        return out

    def bound(self, tensors: Mapping[str, Tensor], bn_factor: Mapping[str, Tensor]) -> float:
        self.evaluations += 1
        ov = self.overrides(bn_factor)
        g_float = self.ev.graph(tensors, ov)
        g_q = self.ev.graph(self._quantized(tensors), ov)
        return self.ev.domain.factor * graph_path_metric(g_float, g_q).value


def _pow2(target: Tensor, alpha: float, max_log2: int) -> Tensor:
    t = target.double()
    ok = t > 0
    if not bool(ok.any()):
        return torch.ones_like(t)
    logs = torch.where(ok, torch.log2(torch.where(ok, t, torch.ones_like(t))),
                       torch.zeros_like(t))
    center = logs[ok].mean()
    e = torch.round(alpha * (logs - center)).clamp(-max_log2, max_log2)
    return torch.where(ok, torch.exp2(e), torch.ones_like(t))


def _apply_pair(pair: _Pair, lam: Tensor, tensors: dict[str, Tensor],
                bn_factor: dict[str, Tensor], lams: dict[str, Tensor]) -> None:
    """Scale channel ``c`` of the producer by ``lam[c]`` and the consumer's matching
    input weights by ``1/lam[c]`` (in the state's tensors, exact for powers of two)."""
    prev_lam = lams.get(pair.producer)
    lams[pair.producer] = lam.double() if prev_lam is None else prev_lam * lam.double()
    if pair.bn_node is not None:
        prev = bn_factor.get(pair.bn_node)
        bn_factor[pair.bn_node] = lam.double() if prev is None else prev * lam.double()
    else:
        w = tensors[param_name(pair.producer, "weight")]
        shape = [-1] + [1] * (w.dim() - 1)
        tensors[param_name(pair.producer, "weight")] = w * lam.to(w.dtype).reshape(shape)
        bname = param_name(pair.producer, "bias")
        if bname in tensors:
            tensors[bname] = tensors[bname] * lam.to(w.dtype)
    wname = param_name(pair.consumer, "weight")
    wb = tensors[wname].clone()
    inv = (1.0 / lam).to(wb.dtype)
    for c, cols in enumerate(pair.columns):
        if len(cols):
            wb[:, cols] = wb[:, cols] * inv[c]
    tensors[wname] = wb


def _ranges(pair: _Pair, tensors: Mapping[str, Tensor], ev: Evaluator,
            bn_factor: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    wa = tensors[param_name(pair.producer, "weight")].double().abs()
    ra = wa.reshape(wa.shape[0], -1).amax(dim=1)
    if pair.bn_node is not None:
        a = ev.gu.params[pair.bn_node].weight.abs()
        f = bn_factor.get(pair.bn_node)
        ra = ra * a * (f if f is not None else 1.0)
    wb = tensors[param_name(pair.consumer, "weight")].double().abs()
    rb = torch.stack([wb[:, cols].max() if len(cols) else torch.zeros((), dtype=wb.dtype)
                      for cols in pair.columns])
    return ra, rb


def _to_model(model: nn.Module, tensors: Mapping[str, Tensor], bn_factor: Mapping[str, Tensor],
              pairs: Sequence[_Pair]) -> nn.Module:
    out = copy.deepcopy(model)
    params = dict(out.named_parameters(remove_duplicate=False))
    mods = dict(out.named_modules())
    with torch.no_grad():
        for pname, t in tensors.items():
            params[pname].copy_(t)
        for pair in pairs:
            if pair.bn is None or pair.bn_node is None or pair.bn_node not in bn_factor:
                continue
            bn = mods[pair.bn]
            f = bn_factor[pair.bn_node].to(bn.weight.dtype)
            bn.weight.mul_(f)
            bn.bias.mul_(f)
    return out.eval()


def equalize(model: nn.Module, qcfg: QuantConfig, input_shape: Sequence[int] | None = None,
             input_radius: float | None = None, reference_inputs: Tensor | None = None, *,
             sweeps: int = 2, exponents: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
             max_log2_scale: int = 16, check_inputs: int = 256, search_steps: int = 0,
             seed: int = 0) -> EqualizationResult:
    """Rescale hidden channels of ``model`` (function-preserving) to lower the certified
    bound of quantizing it with ``qcfg``; see the module docstring. ``model`` is not
    modified. The function is checked on ``reference_inputs`` and ``check_inputs``
    random inputs of the domain; a change beyond float64 rounding raises
    :class:`SoundnessError` (a bug)."""
    qcfg.validate(model)
    if sweeps < 0 or check_inputs < 0 or max_log2_scale < 0:
        raise ConfigurationError("sweeps, check_inputs and max_log2_scale must be >= 0")
    domain: Domain = quant_domain(model, input_shape, input_radius)
    ev = Evaluator(model, domain)
    pairs = find_pairs(ev.gu, model)
    state = _State(model, qcfg, ev)
    tensors = dict(state.tensors)
    bn_factor: dict[str, Tensor] = {}
    lams: dict[str, Tensor] = {}
    current = state.bound(tensors, bn_factor)
    for _ in range(sweeps):
        improved = False
        for pair in pairs:
            ra, rb = _ranges(pair, tensors, ev, bn_factor)
            for target in (rb, torch.sqrt(rb / ra.clamp(min=1e-300))):
                for alpha in exponents:
                    lam = _pow2(target, float(alpha), max_log2_scale)
                    if bool((lam == 1).all()):
                        continue
                    t2, f2, l2 = dict(tensors), dict(bn_factor), dict(lams)
                    _apply_pair(pair, lam, t2, f2, l2)
                    if not all(bool(torch.isfinite(v).all()) for v in t2.values()):
                        continue
                    b = state.bound(t2, f2)
                    if b < current:
                        current, tensors, bn_factor, lams, improved = b, t2, f2, l2, True
        if not improved:
            break
    eq = _to_model(model, tensors, bn_factor, pairs)
    return _finish(model, eq, qcfg, domain, reference_inputs, pairs, lams,
                   state.evaluations, check_inputs, search_steps, seed)


def _finish(model: nn.Module, eq: nn.Module, qcfg: QuantConfig, domain: Domain,
            reference_inputs: Tensor | None, pairs: Sequence[_Pair],
            lams: Mapping[str, Tensor], evaluations: int,
            check_inputs: int, search_steps: int, seed: int) -> EqualizationResult:
    shape, r = domain.input_shape, domain.radius
    gen = torch.Generator().manual_seed(seed)
    rand = (torch.rand((check_inputs,) + shape[1:], generator=gen, dtype=torch.float64)
            * 2 - 1) * r
    xs = rand if reference_inputs is None else torch.cat(
        [reference_inputs.reshape((-1,) + shape[1:]).double(), rand])
    f, f_eq = float64_function(model), float64_function(eq)
    change, scale = deviations(f, f_eq, xs) if len(xs) else (torch.zeros(1).numpy(),) * 2
    function_change = float(change.max())
    if function_change > 1e-9 * max(1.0, float(scale.max())):
        raise SoundnessError(
            f"equalization changed the function by {function_change:.3g} (l1): a bug in "
            "certcompress; please report it with the model")
    probe = reference_inputs if reference_inputs is not None else rand
    q_before, c_before = quantize(model, qcfg, shape, r, probe, search_steps=search_steps,
                                  seed=seed)
    q_after, c_after = quantize(eq, qcfg, shape, r, probe, search_steps=search_steps, seed=seed)
    dev_b = float(deviations(f, float64_function(q_before), xs)[0].max()) if len(xs) else 0.0
    dev_a = float(deviations(f, float64_function(q_after), xs)[0].max()) if len(xs) else 0.0
    applied = c_after.bound < c_before.bound
    lam = {k: v for k, v in lams.items() if not bool((v == 1).all())}
    if not applied:
        eq, c_after, dev_a, lam, function_change = model, c_before, dev_b, {}, 0.0
    return EqualizationResult(
        model=eq, applied=applied, pairs=tuple((p.producer, p.consumer) for p in pairs),
        scales=MappingProxyType(lam), bound_before=c_before.bound, bound_after=c_after.bound,
        deviation_before=dev_b, deviation_after=dev_a, function_change=function_change,
        evaluations=evaluations, certificate_before=c_before, certificate_after=c_after)

