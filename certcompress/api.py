"""The public entry points: trace, path_norm, path_metric, certify.

Each takes a model (``nn.Module`` in eval mode, or an ``ExportedProgram``) or an
already-traced :class:`~certcompress.ir.Graph`, and an input shape (batch included).
Where a plugin knows the model family (torchvision, smp) the input shape and radius
default to the plugin's input spec.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import cached_property

import torch
from torch import Tensor, nn

from ._version import provenance
from .bounds import PathMetric, graph_path_metric, graph_path_norm, operator_norm_baseline
from .bounds.arithmetic import check_arithmetic, float32_error, with_float32
from .bounds.pathnorm import path_magnitude_scores as _graph_scores
from .bounds.propagation.engine import PropagationOptions
from .bounds.tiers import GraphPair, TierRegistry, tier_registry
from .capture import trace as _trace
from .capture.check import RTOL, ProbeOutputs, TraceCheckReport, as_box, graph_macs, numeric_check
from .capture.pair import TracedPair, trace_pair
from .certificate import WORST_CASE, Certificate, Measurements, MethodBound
from .domain import InputDomain
from .equivalence.tier import BabOptions
from .errors import (
    SOUNDNESS_CAUSES,
    ConfigurationError,
    RefusalKind,
    SoundnessError,
    UnsupportedModelError,
)
from .interop import plain_module
from .ir.graph import Graph
from .ir.ops import AffineParams
from .measure import (
    _UNSET,
    SearchOptions,
    adversarial_deviation,
    check_reference_inputs,
    deviations,
    float32_function,
    float64_function,
)
from .resolve import input_spec_for, resolve_domain, resolve_shape

__all__ = ["trace", "check_trace", "TraceCheckReport", "path_norm", "path_metric", "certify", "path_magnitude_scores",
           "input_spec_for"]

Model = nn.Module | torch.export.ExportedProgram


def trace(model: Model, input_shape: Sequence[int] | None = None, *,
          domain: InputDomain | tuple[Tensor, Tensor] | None = None) -> Graph:
    """Capture ``model`` as a typed ReLU-DAG graph (``print(g)`` summarizes it).

    The trace check (:mod:`certcompress.capture.check`, :func:`check_trace`) compares
    the graph with the module on probes of ``domain`` (an InputDomain or a ``(lower,
    upper)`` pair; default the box ``[-1, 1]``) and refuses hooks, in-place writes and
    state changes the graph would not reproduce."""
    if isinstance(model, Graph):
        return model
    model = plain_module(model)
    return _trace(model, resolve_shape(model, input_shape), domain=domain)


def check_trace(model: nn.Module, input_shape: Sequence[int] | None = None,
                domain: InputDomain | None = None, *, probes: int | None = None,
                seed: int = 0, graph: Graph | None = None) -> TraceCheckReport:
    """Check that the graph ``trace`` captures computes what ``model`` computes.

    Refusals of hooks, in-place writes and state changes, and the comparison of the
    graph with a float64 copy of ``model`` on ``probes`` inputs of ``domain`` (default:
    the box ``[-1, 1]`` over ``input_shape``; probes: the centre, up to 32 corners and
    random points, as many as a multiply-add budget allows), the module called twice on
    the centre, its parameters, buffers and simple attributes unchanged
    (docs/architecture.md, "Trace check"). Returns a :class:`TraceCheckReport`
    (``passed``, ``reasons``, errors, seconds); raises only for a model outside the
    ReLU-DAG class (:class:`UnsupportedModelError` of another kind) or bad arguments.
    ``trace`` and ``certify`` run the same check and raise when it fails. ``graph``: an
    already traced graph of ``model`` for this shape, not traced again.
    """
    if not isinstance(model, nn.Module):
        raise ConfigurationError(f"check_trace needs an nn.Module, got {type(model).__name__}")
    model = plain_module(model)
    if domain is not None:
        shape = domain.shape
        if input_shape is not None and tuple(int(s) for s in input_shape) != shape:
            raise ConfigurationError(f"input_shape {tuple(input_shape)} differs from the "
                                     f"domain's shape {shape}")
    else:
        shape = resolve_shape(model, input_shape)
    t0 = time.perf_counter()
    try:
        if graph is None or graph.input_shape != shape:
            graph = _trace(model, shape, check=False)
    except UnsupportedModelError as exc:
        if exc.offenders and all(o.kind is RefusalKind.MODEL for o in exc.offenders):
            return TraceCheckReport(type(model).__name__, shape, 0, math.nan, math.nan, RTOL,
                                    False, tuple(o.reason for o in exc.offenders),
                                    time.perf_counter() - t0)
        raise
    lower, upper = as_box(domain, shape)
    return numeric_check(model, graph, lower, upper, probes=probes, seed=seed)


def _graph(model: Model | Graph, input_shape: Sequence[int] | None) -> Graph:
    return model if isinstance(model, Graph) else trace(model, resolve_shape(model, input_shape))


def path_norm(model: Model | Graph, input_shape: Sequence[int] | None = None) -> float:
    """The l1 path-norm ``||Phi(theta)||_1`` (one float64 pass; rounding slack included)."""
    return graph_path_norm(_graph(model, input_shape)).value


def path_metric(model: Model | Graph, compressed: Model | Graph,
                input_shape: Sequence[int] | None = None) -> PathMetric:
    """An upper bound on ``||Phi(theta) - Phi(theta')||_1`` (``.exact`` says whether it is
    the path-metric itself), with per-output values."""
    g = _graph(model, input_shape)
    return graph_path_metric(g, _graph(compressed, g.input_shape))


def path_magnitude_scores(model: Model | Graph, input_shape: Sequence[int] | None = None
                          ) -> dict[str, AffineParams]:
    """Path-magnitude score of every parameter, keyed by graph node (folded layout)."""
    return _graph_scores(_graph(model, input_shape))


def certify(model: nn.Module, compressed: nn.Module, input_shape: Sequence[int] | None = None,
            input_radius: float | None = None, *, domain: InputDomain | None = None,
            methods: Sequence[str] | str | None = None,
            reference_inputs: Tensor | None = None, search: SearchOptions | None = None,
            propagation: PropagationOptions | None = None, arithmetic: str = "exact",
            search_steps: int | None = None, search_restarts: int | None = None,
            seed: int | None = None, search_time: float | None | object = _UNSET,
            time_budget: float | None = None) -> Certificate:
    """Certify ``max_{x in D} ||f(x) - f'(x)||_1 <= bound`` over an input domain ``D``.

    ``D`` is ``domain`` (an :class:`InputDomain` box, e.g.
    ``InputDomain.box(0.0, 1.0, shape=(1, 1, 8, 8))``; its shape is the input shape) or,
    without one, the ball ``||x||_inf <= input_radius`` (after normalization;
    ``input_radius`` defaults to the input spec of a plugin that knows the model), as
    :func:`certcompress.resolve_domain` resolves it.

    ``methods`` chooses the tiers by name from the tier registry
    (:func:`certcompress.bounds.tiers.tier_registry`; plugins add tiers,
    docs/adding-a-tier.md): ``"path-metric"`` (``max(r, 1) * path-metric``,
    ``r = max ||x||_inf`` over ``D``; cheap) and ``"bounds"`` (differential bound
    propagation over the box, tuned by ``propagation``; tighter, costs more). Default:
    path-metric alone without a ``domain``; with one, also every tier registered as a
    default for domains (``bounds``). Each tier's bound is in ``cert.by_method``;
    ``cert.bound`` is the smallest of the worst-case tiers. ``"bab"`` (opt-in) tightens
    the bound by branch-and-bound over the domain's box (docs/equivalence.md);
    ``time_budget`` (seconds) caps its search, shorthand for
    ``propagation=BabOptions(time_budget=...)``.

    ``reference_inputs`` (a batch) gives the measured deviation, the output scale and the
    ``vacuous`` flags. A PGD search inside ``D`` (``search``, a :class:`SearchOptions`:
    ``steps`` (0 to skip), ``restarts``, ``time`` in seconds (None: no limit), ``seed``;
    the older keywords ``search_steps=20``, ``search_restarts=4``, ``search_time=60``,
    ``seed=0`` still work) finds the worst deviation it can (the certificate records the
    steps and seconds spent); a measured value above any tier's bound raises
    :class:`SoundnessError` instead of returning a wrong certificate. Without
    ``reference_inputs`` the output scale is sampled in ``D`` (the trace check's probes of
    the original, whose outputs are already computed: its centre, and on small models
    corners and random points; plus 1 to 31 random points, as many as a multiply-add
    budget allows, :data:`SCALE_MACS`; ``output_scale_source`` says how many), so every
    certificate says whether it is vacuous. ``cert.notes`` explains
    surprising results (an exactly-zero bound, a vacuous one).

    ``arithmetic``: ``"exact"`` (default) certifies the models evaluated exactly;
    ``"float32"`` certifies them as executed in IEEE float32 (PyTorch on CPU,
    onnxruntime), in any summation order: every tier's bound then includes both models'
    float32 rounding error over the domain (:mod:`certcompress.bounds.arithmetic`,
    docs/bounds.md "Arithmetic"), and the certificate says so.
    """
    arith = check_arithmetic(arithmetic)
    opts = SearchOptions.merge(search, steps=search_steps, restarts=search_restarts,
                               time=search_time, seed=seed)
    registry = tier_registry()
    names = registry.check(methods if methods is not None else
                           registry.defaults(with_domain=domain is not None))
    model, compressed = plain_module(model), plain_module(compressed)
    dom = resolve_domain(model, input_shape, input_radius, domain)
    traced = trace_pair(model, compressed, dom.shape, dom)
    pair = GraphPair(traced.graph, traced.other, radius=dom.radius)
    if time_budget is not None:
        if "bab" not in names:
            raise ConfigurationError(f"time_budget={time_budget!r} caps the 'bab' tier's search, "
                                     f"but methods {tuple(names)} do not include 'bab': add it "
                                     f"(methods=(..., 'bab')) or drop time_budget")
        propagation = replace(BabOptions.of(propagation), time_budget=time_budget)
    tiers = _run_tiers(registry, names, pair, dom, propagation)
    if arith == "float32":
        tiers = _with_float32(model, compressed, dom, tiers)
    fns = _Float64Pair(model, compressed)
    measurements = _measure(fns, model, compressed, dom, tiers, reference_inputs, opts, arith,
                            traced)
    tiers = _with_costs(registry, tiers, measurements, fns, dom)
    return _assemble(traced, pair, dom, tiers, measurements, arith,
                     domain_given=domain is not None)


def _run_tiers(registry: TierRegistry, names: Sequence[str], pair: GraphPair,
               dom: InputDomain, propagation: PropagationOptions | None
               ) -> dict[str, MethodBound]:
    """Each named tier's bound (``propagation`` goes to the tiers that take it)."""
    if propagation is not None and not isinstance(propagation, PropagationOptions):
        raise ConfigurationError(f"propagation must be a PropagationOptions (e.g. "
                                 f"PropagationOptions(intermediate='interval')), got "
                                 f"{type(propagation).__name__}")
    chosen = [registry.get(n) for n in names]
    if not any(t.scope == WORST_CASE for t in chosen):
        worst = ", ".join(t.name for t in registry if t.scope == WORST_CASE)
        raise ConfigurationError(f"methods {tuple(names)} include no worst-case tier; add one "
                                 f"of {worst}")
    return {t.name: t.bound(pair, dom, t.own_options(propagation)) for t in chosen}


def _with_float32(model: nn.Module, compressed: nn.Module, dom: InputDomain,
                  tiers: dict[str, MethodBound]) -> dict[str, MethodBound]:
    """Every tier's bound plus both models' float32 rounding error over the domain."""
    err = float32_error(_trace(model, dom.shape, fold_bn=False, check=False),
                        _trace(compressed, dom.shape, fold_bn=False, check=False), dom,
                        model=model, compressed=compressed)
    return {k: with_float32(t, err) for k, t in tiers.items()}


class _Float64Pair:
    """Both models as float64 functions (:func:`float64_function`), each built on first
    use: a certificate without reference data, search or costly tier never needs them
    (its output scale comes from the trace check's probes)."""

    def __init__(self, model: nn.Module, compressed: nn.Module) -> None:
        self._models = model, compressed

    @cached_property
    def original(self) -> Callable[[Tensor], Tensor]:
        return float64_function(self._models[0])

    @cached_property
    def compressed(self) -> Callable[[Tensor], Tensor]:
        return float64_function(self._models[1])


def _measure(fns: _Float64Pair, model: nn.Module, compressed: nn.Module, dom: InputDomain,
             tiers: dict[str, MethodBound], reference_inputs: Tensor | None,
             opts: SearchOptions, arith: str, traced: TracedPair) -> Measurements:
    """The reference deviation, the output scale and the adversarial search (``fns``: both
    models in float64), each checked against every tier's bound (a violation raises
    :class:`SoundnessError`)."""
    meas: dict[str, object] = {}
    if reference_inputs is not None:
        f, fc = fns.original, fns.compressed
        x = check_reference_inputs(reference_inputs, dom.shape)
        dev, scale = deviations(f, fc, x)
        inside = dom.contains(x)
        meas.update(reference_count=int(x.shape[0]), deviation_max=float(dev.max()),
                    deviation_mean=float(dev.mean()), output_scale=float(scale.max()))
        if bool(inside.any()):
            noise = float(scale[inside.numpy()].max())
            _check_tiers(float(dev[inside.numpy()].max()), tiers, "a reference input", noise)
            if arith == "float32":
                _check_tiers(_float32_deviation(model, compressed, x[inside]), tiers,
                             "a reference input evaluated in float32", noise)
        meas["output_scale_source"] = f"max over {int(x.shape[0])} reference inputs"
        reference_inputs = x
    else:  # the scale check: the output scale sampled in the domain
        check = traced.checks[0]
        sampled, source = _sampled_output_scale(
            fns, dom, opts.seed, None if check is None else check.samples,
            graph_macs(traced.graph) // max(1, dom.shape[0]))
        meas.update(output_scale=sampled, output_scale_source=source)
    if opts.steps > 0:
        f, fc = fns.original, fns.compressed
        starts = None if reference_inputs is None else reference_inputs[:opts.restarts]
        adv = adversarial_deviation(f, fc, dom.shape, dom.lower_tensor()[0],
                                    dom.upper_tensor()[0], steps=opts.steps,
                                    restarts=opts.restarts, starts=starts, seed=opts.seed,
                                    time_budget=opts.time)
        with torch.no_grad():
            at = float(f(adv.argmax.double()).abs().sum())
        _check_tiers(adv.max_deviation, tiers, "the adversarial search", at)
        if arith == "float32":
            _check_tiers(_float32_deviation(model, compressed, adv.argmax), tiers,
                         "the adversarial search's input evaluated in float32", at)
        meas.update(adversarial_max=adv.max_deviation, adversarial_steps=adv.steps,
                    adversarial_restarts=adv.restarts, adversarial_seconds=adv.seconds,
                    adversarial_budget_exhausted=adv.budget_exhausted)
    return Measurements(**meas)  # type: ignore[arg-type]


def _with_costs(registry: TierRegistry, tiers: dict[str, MethodBound], m: Measurements,
                fns: _Float64Pair, dom: InputDomain) -> dict[str, MethodBound]:
    """The tiers' vacuous flags and their cost in float64 forward passes of the original
    (timed when a tier that reports its cost ran)."""
    costly = any(registry.get(k).measure_cost for k in tiers)
    fwd = _forward_seconds(fns.original, dom) if costly else None
    return {k: t.with_measurements(m.output_scale, fwd) for k, t in tiers.items()}


def _assemble(traced: TracedPair, pair: GraphPair, dom: InputDomain,
              tiers: dict[str, MethodBound], m: Measurements, arith: str, *,
              domain_given: bool) -> Certificate:
    """The certificate: the smallest worst-case bound with the path-metric's figures."""
    same = [t for t in tiers.values() if t.sound and t.scope == WORST_CASE]
    bound = min(t.bound for t in same)
    per_output = tuple(min(vs) for vs in zip(*(t.per_output for t in same)))
    vacuous = None if m.output_scale is None else bool(bound > m.output_scale)
    pm, r = pair.path_metric, dom.radius  # for the notes (computed once, shared with the tier)
    base = operator_norm_baseline(pair.original, pair.compressed)
    # the ball's text is its description without "ball " (e.g. "||x||_inf <= 2.64 (...)")
    text = dom.describe() if domain_given else dom.description.removeprefix("ball ")
    original_digest, compressed_digest = traced.digests()
    return Certificate(
        bound=bound, per_output=per_output, input_shape=dom.shape, radius=r,
        original_digest=original_digest, compressed_digest=compressed_digest,
        baseline_linf=base.bound_linf, baseline_note=base.note, measurements=m,
        vacuous=vacuous, domain=text, model_name=pair.original.model_name,
        working_dtype=pair.original.working_dtype, **provenance(), by_method=tiers,
        input_domain=dom, notes=_notes(bound, pm.changed_parameters, m, vacuous),
        arithmetic=arith)


_SCALE_SAMPLES = 32
#: the random points sampled for the output scale (besides the trace check's probes,
#: whose outputs are reused) cost together at most about this many multiply-adds, but
#: there is always one: a small CNN gets all ``_SCALE_SAMPLES - 1``, resnet18 at 224x224
#: (1.8e9 per input) one. The check probes a large model only at the domain's centre,
#: and for a ball that is ``x = 0``, whose output (the biases' alone) is no measure of
#: the outputs' size: one random point is (resnet18, random weights: 21.7 at the centre,
#: about 2e3 at random points)
SCALE_MACS = 10 ** 9


def scale_sample_count(macs: int) -> int:
    """Random points sampled for the output scale of a model of ``macs`` multiply-adds
    per input (1 to ``_SCALE_SAMPLES - 1``)."""
    return max(1, min(_SCALE_SAMPLES - 1, SCALE_MACS // max(1, macs)))


def _sampled_output_scale(fns: _Float64Pair, dom: InputDomain, seed: int,
                          probes: ProbeOutputs | None, macs: int) -> tuple[float, str]:
    """``max ||f(x)||_1`` over points of the domain, and where they come from: the trace
    check's probes of the original (``probes``: its centre, on small models also corners
    and random points; their float64 outputs are already computed; without them the
    centre is evaluated here) and :func:`scale_sample_count` random points (seeded by
    ``seed``; a model of ``macs`` multiply-adds per input). The output scale a bound is
    compared with when no reference data is given: a lower estimate of the true maximum,
    deterministic for a given seed."""
    k = scale_sample_count(macs)
    lo, hi = dom.lower_tensor(), dom.upper_tensor()
    per = (-1,) + tuple(lo.shape[1:])
    parts, x = [], dom.sample(k, torch.Generator().manual_seed(seed)).reshape(per)
    if probes is not None and probes.outputs.numel():
        parts.append(probes.outputs.abs().sum(1))
        known = f"{probes.outputs.shape[0]} trace-check probe(s) (their outputs reused)"
    else:
        x = torch.cat([((lo + hi) / 2).reshape(per), x])
        known = f"the centre ({lo.shape[0]} row(s))"
    if x.shape[0]:
        f = fns.original
        with torch.no_grad():
            parts.append(torch.cat([f(x[i:i + 8]) for i in range(0, x.shape[0], 8)])
                         .abs().sum(1))
    values = torch.cat(parts)
    return float(values.max()), (f"max over {values.shape[0]} point(s) in the domain: "
                                 f"{known} and {k} random point(s) (no reference data)")


def _notes(bound: float, changed: int, m: Measurements, vacuous: bool | None) -> tuple[str, ...]:
    """Explanations of results that look surprising."""
    notes = []
    if changed and bound < 1e-250:
        notes.append(
            f"the bound is {bound:.3g} although {changed} parameter(s) changed: over this "
            "domain the changed weights only multiply activations that are zero (for a "
            "convolution at a small input size, typically its zero padding), so both models "
            "compute the same function; a larger input would use them")
    if vacuous and m.output_scale is not None:
        notes.append(f"the bound is {bound / max(m.output_scale, 1e-300):.3g}x the output "
                     "scale: worst-case tiers on deep networks are often this loose; try "
                     "methods=('bounds',) with a domain, certify_local, or certify_statistical")
    return tuple(notes)


def _forward_seconds(f: Callable[[Tensor], Tensor], dom: InputDomain) -> float:
    """Median wall time of one float64 forward pass of a single input."""
    x = dom.sample(1, torch.Generator().manual_seed(0))
    times = []
    with torch.no_grad():
        f(x)
        for _ in range(5):
            t0 = time.perf_counter()
            f(x)
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def _float32_deviation(model: nn.Module, compressed: nn.Module, x: Tensor) -> float:
    """``max ||F(x) - F'(x)||_1`` over the batch ``x`` with both models run in float32
    (the difference taken in float64)."""
    f, g = float32_function(model), float32_function(compressed)
    with torch.no_grad():
        return float((f(x).double() - g(x).double()).abs().sum(1).max())


def _check_tiers(measured: float, tiers: dict[str, MethodBound], where: str,
                 outputs: float) -> None:
    for name, t in tiers.items():
        _check(measured, t.bound, f"{where} (tier '{name}')", outputs)


# The self-check is relative only: to the bound, and to the size of the outputs at the
# measured point (the measurement's own float64 rounding is relative to them). A measured
# deviation above ``bound (1 + 1e-9) + 1e-9 ||f(x)||_1`` is a violation, however small.
CHECK_RELATIVE = 1e-9


def _check(measured: float, bound: float, where: str, outputs: float = 0.0) -> None:
    tolerance = CHECK_RELATIVE * (abs(bound) + abs(outputs))
    if measured > bound + tolerance:
        raise SoundnessError(
            f"measured deviation {measured:.17g} from {where} exceeds the certified bound "
            f"{bound:.17g}. {SOUNDNESS_CAUSES}"
        )
