"""``verify_equivalence``: prove or refute that a compressed model stays within epsilon of
the original (or keeps its decisions) on an input box, by branch-and-bound."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from .._threads import one_thread
from .._version import provenance
from ..bounds.baseline import operator_norm_baseline
from ..bounds.numerics import float_slack
from ..bounds.propagation.lowering import lower_pair
from ..capture import plugin_manager
from ..capture import trace as _trace
from ..certificate import WORST_CASE, Certificate, Measurements, MethodBound
from ..digest import parameter_digest
from ..domain import InputDomain
from ..errors import SOUNDNESS_CAUSES, ConfigurationError, SoundnessError
from ..interop import plain_module
from ..ir.graph import Graph
from ..measure import adversarial_deviation, float64_function
from .parallel import EXECUTORS, Pool
from .properties import ConfidenceProperty, EpsilonProperty, Property, Top1Property
from .relu_split import SPLITS, resolve_split, run_relu_search
from .result import EquivalenceResult
from .search import Bounder, SearchConfig, run_search
from .tier import TIER_NAME, BabDetails

__all__ = ["verify_equivalence", "NORMS", "PROPERTIES"]

NORMS = ("inf", "l1")
_ROUND_UP = 2.0 ** -48
#: the adversarial search a certificate of a verified result runs in the domain
CERT_SEARCH_STEPS, CERT_SEARCH_RESTARTS, CERT_SCALE_SAMPLES = 20, 4, 32
PROPERTIES = ("epsilon", "top1")
#: pairs with at most this many parameters in all run on one torch thread from tracing to
#: the certificate, not only in the search (benchmarks/bench_acas_props.py)
SMALL_PAIR = 1_000_000


def _graph(model: nn.Module | Graph, shape: tuple[int, ...], what: str) -> Graph:
    if isinstance(model, Graph):
        if tuple(model.input_shape) != shape:
            raise ConfigurationError(f"the {what} graph was traced for input shape "
                                     f"{model.input_shape}, the domain has shape {shape}")
        return model
    if not isinstance(model, nn.Module):
        raise ConfigurationError(f"the {what} must be a torch.nn.Module or a traced Graph, "
                                 f"got {type(model).__name__}")
    return _trace(plain_module(model), shape)


def _output_shape(model: nn.Module | Graph, shape: tuple[int, ...], what: str
                  ) -> tuple[int, ...] | None:
    if isinstance(model, Graph):
        return None
    with torch.no_grad():
        p = next(iter(model.parameters()), None)
        dtype = p.dtype if p is not None else torch.float32
        try:
            out = model(torch.zeros(shape, dtype=dtype))
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigurationError(f"the domain's shape {shape} does not fit the {what} "
                                     f"model ({first}); give a domain of the model's input "
                                     "shape, batch first") from None
    return tuple(out.shape) if isinstance(out, torch.Tensor) else None


def _parameters(model: nn.Module | Graph) -> int:
    if isinstance(model, Graph):
        return sum(int(p.weight.numel()) for p in model.params.values())
    return sum(int(p.numel()) for p in model.parameters()) if isinstance(model, nn.Module) \
        else 0


def _check(epsilon: float | None, norm: str, prop: str, confidence: float | None,
           timeout: float, max_regions: int) -> None:
    if prop not in PROPERTIES:
        raise ConfigurationError(f"property must be one of {', '.join(PROPERTIES)}, got "
                                 f"{prop!r}")
    if prop == "epsilon":
        if epsilon is None:
            raise ConfigurationError("property='epsilon' needs epsilon > 0 (the largest "
                                     "allowed deviation)")
        if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon > 0):
            raise ConfigurationError(f"epsilon must be a finite number > 0, got {epsilon!r}")
        if norm not in NORMS:
            raise ConfigurationError(f"norm must be 'inf' or 'l1', got {norm!r}")
        if confidence is not None:
            raise ConfigurationError("confidence applies to property='top1' only")
    else:
        if epsilon is not None:
            raise ConfigurationError("epsilon applies to property='epsilon' only; top-1 "
                                     "equivalence has no tolerance")
        if confidence is not None and not (isinstance(confidence, (int, float))
                                           and 0.5 < confidence < 1):
            raise ConfigurationError(f"confidence must lie strictly between 0.5 and 1 (at most "
                                     f"one class can be that confident), got {confidence!r}")
    if not (isinstance(timeout, (int, float)) and timeout > 0 and not math.isnan(timeout)):
        raise ConfigurationError(f"timeout must be > 0 seconds, got {timeout!r}")
    if not (isinstance(max_regions, int) and max_regions >= 1):
        raise ConfigurationError(f"max_regions must be an integer >= 1, got {max_regions!r}")


def _domain(domain: InputDomain | None, model: nn.Module | Graph,
            input_shape: Sequence[int] | None) -> InputDomain:
    if domain is None:
        raise ConfigurationError("domain is required: an InputDomain box, e.g. "
                                 "InputDomain.box(-1, 1, shape=(1, 5)), or one read with "
                                 "certcompress.equivalence.read_vnnlib")
    if not isinstance(domain, InputDomain):
        raise ConfigurationError(f"domain must be an InputDomain, got {type(domain).__name__}")
    if input_shape is not None and tuple(input_shape) != tuple(domain.shape):
        raise ConfigurationError(f"input_shape {tuple(input_shape)} differs from the domain's "
                                 f"shape {domain.shape}")
    if isinstance(model, nn.Module):
        spec = plugin_manager().input_spec(model)
        if spec is not None and input_shape is None and spec.input_shape[1:] != \
                tuple(domain.shape)[1:]:
            raise ConfigurationError(f"the domain's shape {domain.shape} does not fit the "
                                     f"model's input {spec.input_shape}")
    return domain


def verify_equivalence(model: nn.Module | Graph, compressed: nn.Module | Graph,
                       domain: InputDomain | None = None, *, epsilon: float | None = None,
                       norm: str = "inf", property: str | None = None,
                       confidence: float | None = None, timeout: float = 60.0,
                       max_regions: int = 200_000, executor: str | None = None,
                       workers: int | None = None, batch: int = 256, chunk: int = 128,
                       seed: int = 0, intermediate: str = "crown",
                       split_candidates: int = 1, optimize_steps: int = 0,
                       split: str = "auto",
                       input_shape: Sequence[int] | None = None, progress: bool = False,
                       out: str | None = None) -> EquivalenceResult:
    """Prove or refute a property of ``model`` (f) and ``compressed`` (f') on every input
    of ``domain`` (a box) by branch-and-bound over input or ReLU splitting.

    ``property="epsilon"`` (the default when ``epsilon`` is given): ``||f(x) - f'(x)||
    <= epsilon`` in ``norm`` ``"inf"`` (every output) or ``"l1"``. ``property="top1"``:
    ``argmax f' = argmax f``; with ``confidence`` (in (0.5, 1)), only where the original's
    softmax confidence is at least that. ``timeout`` (seconds) and ``max_regions`` bound
    the search; ``executor`` ``None``/``"serial"`` (this process), ``"local"`` (``workers``
    processes: this one and ``workers - 1`` helpers, kept for later calls until
    :func:`~certcompress.equivalence.close_pools` or exit) or ``"ray"`` bounds each round's
    regions in parallel, in chunks of ``chunk`` regions (for a given ``split`` the verdict
    does not depend on the executor; but ``split="auto"`` bisects the input box with
    ``"local"``/``"ray"`` and splits ReLUs without them, so on a chain pair of 16 inputs
    or more an executor changes the search: pass ``split`` to compare). ``batch``:
    regions per round. ``intermediate``: how the single pass bounds pre-activations:
    ``"crown"`` (back-substitution to the input, tightest on deep networks),
    ``"forward"`` (forward symbolic bounds, NeuroDiff-style; cheapest) or ``"both"``.
    ``split_candidates``: above 1, strong branching: both halves are bounded for that many
    of each region's most sensitive dimensions and the region is split where the worse
    half is best (fewer regions, more bounding per region). ``optimize_steps``: gradient
    steps on the ReLU slopes of the output rows (alpha-CROWN for both networks and the
    difference; tighter, each step costs about one back-substitution). ``split``:
    ``"input"`` bisects the input box; ``"relu"`` fixes the sign of an unstable neuron
    of either network (both signs are proven; a domain with no unstable neuron left is
    bisected), for chain pairs only and in this process only (an ``executor`` is then
    ignored, noted in ``details``); ``"auto"`` (default): ``"relu"`` for chain pairs with
    at least 16 inputs of nonzero width in ``domain``, no ``executor``
    (``None``/``"serial"``) and ``split_candidates`` 1, else ``"input"``
    (docs/equivalence.md, "ReLU splitting"; ``details["split"]`` says which ran). ``out``: also
    write the JSON result there (atomically).

    Returns an :class:`EquivalenceResult` (``status`` ``"verified"``, ``"falsified"``
    with a float64-checked ``counterexample`` in the domain, or ``"unknown"``). A
    verified epsilon result of two modules is also a certificate: ``res.certificate()``
    (tier ``bab``; export embeds it, ``verify_onnx`` re-checks it on samples).
    """
    prop_name = property or ("epsilon" if epsilon is not None or confidence is None
                             else "top1")
    _check(epsilon, norm, prop_name, confidence, timeout, max_regions)
    if executor not in EXECUTORS:
        raise ConfigurationError(f"executor must be None, 'serial', 'local' or 'ray', got "
                                 f"{executor!r}")
    if not (isinstance(batch, int) and batch >= 2):
        raise ConfigurationError(f"batch must be an integer >= 2, got {batch!r}")
    if not (isinstance(optimize_steps, int) and optimize_steps >= 0):
        raise ConfigurationError(f"optimize_steps must be an integer >= 0, got "
                                 f"{optimize_steps!r}")
    if not (isinstance(split_candidates, int) and split_candidates >= 1):
        raise ConfigurationError(f"split_candidates must be an integer >= 1, got "
                                 f"{split_candidates!r}")
    if not (isinstance(chunk, int) and chunk >= 1):
        raise ConfigurationError(f"chunk must be an integer >= 1, got {chunk!r}")
    if split not in SPLITS:
        raise ConfigurationError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    # a small pair (an MLP such as ACAS-Xu's) runs on one thread throughout: tracing,
    # lowering and the certificate's attack are small products too
    with one_thread(_parameters(model) + _parameters(compressed) <= SMALL_PAIR):
        dom = _domain(domain, model, input_shape)
        shape = tuple(int(s) for s in dom.shape)
        o1 = _output_shape(model, shape, "original")
        o2 = _output_shape(compressed, shape, "compressed")
        if o1 is not None and o2 is not None and o1 != o2:
            raise ConfigurationError(f"the models' output shapes differ: {o1} (original) vs {o2} "
                                     "(compressed); equivalence compares outputs of one shape")
        g1 = _graph(model, shape, "original")
        g2 = _graph(compressed, shape, "compressed")
        pair = lower_pair(g1, g2)
        m = pair.output_size
        prop: Property
        if prop_name == "epsilon":
            assert epsilon is not None
            prop = EpsilonProperty(m, float(epsilon), norm)
        elif m < 2:
            raise ConfigurationError(f"top-1 equivalence needs at least 2 outputs, the models "
                                     f"have {m}")
        elif confidence is not None:
            prop = ConfidenceProperty(m, float(confidence))
        else:
            prop = Top1Property(m)
        if intermediate not in ("crown", "forward", "both"):
            raise ConfigurationError(f"intermediate must be 'crown', 'forward' or 'both', got "
                                     f"{intermediate!r}")
        bounder = Bounder(pair, intermediate=intermediate, optimize=optimize_steps)
        lower = dom.lower_tensor().reshape(-1)
        upper = dom.upper_tensor().reshape(-1)
        # inputs of zero width (fixed pixels, a patch attack's box) do not count: on a
        # box that varies in a few of them input bisection wins (docs/equivalence.md)
        mode = resolve_split(split, bounder.chain, int((upper > lower).sum()),
                             input_options=executor in ("local", "ray")
                             or split_candidates > 1)
        if mode == "relu" and bounder.chain is None:
            raise ConfigurationError("split='relu' needs a chain pair (an MLP or a plain CNN: "
                                     "affine maps and ReLUs one after the other); these "
                                     "models have branches or other nodes: use "
                                     "split='input'")
        cfg = SearchConfig(timeout=float(timeout), max_regions=max_regions, batch=batch,
                           chunk=chunk, seed=seed, strong_dims=split_candidates)
        pool: Pool | None = None
        notes: list[str] = []
        if mode == "relu":
            if executor in ("local", "ray"):
                notes.append(f"split='relu' runs in this process only; executor="
                             f"{executor!r} was not used (ran serially)")
            if split_candidates > 1:
                notes.append("split_candidates applies to input splitting only; ReLU "
                             "splitting bisects a domain on one dimension when it has "
                             "no unstable neuron left")
        elif executor in ("local", "ray"):
            if bounder.chain is None:
                notes.append(f"executor={executor!r} needs a chain network; ran serially")
            else:
                pool = Pool(executor, bounder.chain, workers, intermediate, optimize_steps)
        bar: Any = None
        update = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=100.0, desc="equivalence", unit="% proven",
                       bar_format="{l_bar}{bar}| {n:.1f}/100% proven [{elapsed}{postfix}]")

            def update(s: dict[str, Any]) -> None:
                bar.n = 100.0 * s["proven_fraction"]
                rate = s["regions"] / max(s["seconds"], 1e-9)
                bar.set_postfix_str(f"open {s['open']}, {s['regions']} regions, {rate:.0f}/s",
                                    refresh=True)
        try:
            with one_thread():
                if mode == "relu":
                    res = run_relu_search(bounder, prop, lower, upper, cfg, update)
                else:
                    res = run_search(bounder, prop, lower, upper, cfg,
                                     None if pool is None else pool.map, update)
            if bar is not None:  # the final state (a search proven in its first round too)
                bar.n = 100.0 if res["status"] == "verified" else \
                    100.0 * float(res["proven_fraction"])
                bar.set_postfix_str(f"{res['status']}, {res['regions']} regions", refresh=True)
        finally:
            if pool is not None:
                pool.close()
                notes += pool.notes
            if bar is not None:
                bar.close()
        bound: float | None = None
        if isinstance(prop, EpsilonProperty):
            cands = [res["bound_proven"]]
            if res["open"] and res["status"] != "falsified":
                # the search keeps score = bound - epsilon: adding epsilon back may round
                # down by a few ulps of the bound, so round outward
                cands.append(math.nextafter((res["score_open"] + prop.epsilon)
                                            * (1.0 + _ROUND_UP), math.inf))
            bound = max(cands)
            if res["status"] == "falsified" or not math.isfinite(bound):
                bound = None if res["status"] == "falsified" else bound
        cex = res["counterexample"]
        status = res["status"]
        proven = 1.0 if status == "verified" else float(res["proven_fraction"])
        result = EquivalenceResult(
            status=status, property=prop.name, norm=norm if prop_name == "epsilon" else None,
            epsilon=None if epsilon is None else float(epsilon),
            confidence=None if confidence is None else float(confidence),
            bound=bound, found=res["found"], regions=int(res["regions"]),
            seconds=float(res["seconds"]), proven_fraction=proven,
            open_regions=0 if status == "verified" else int(res["open"]),
            counterexample=None if cex is None else tuple(float(v) for v in cex.reshape(-1)),
            input_shape=shape,
            details={"method": bounder.method, "rounds": res["rounds"], "bounded": res["bounded"],
                     "executor": "serial" if mode == "relu" else executor or "serial",
                     "split": mode, "relu_splits": res.get("relu_splits", 0),
                     "input_splits": res.get("input_splits"),
                     "infeasible_domains": res.get("infeasible", 0),
                     "workers": None if pool is None else pool.workers,
                     "chunks": None if pool is None else dict(pool.chunks),
                     # the helpers were running before this call (kept between calls)
                     "helpers_warm": None if pool is None else pool.warm,
                     "stuck_regions": res["stuck"], "domain": dom.describe(), "notes": notes,
                     "rounding_margin_rel": None if bounder.chain is None else bounder.chain.eta})
        result = replace(result, as_certificate=_certificate(result, model, compressed, g1, g2,
                                                             dom, m, seed, intermediate))
        if out is not None:
            result.save(out)
        return result


def _certificate(res: EquivalenceResult, model: nn.Module | Graph,
                 compressed: nn.Module | Graph, g1: Graph, g2: Graph, dom: InputDomain,
                 m: int, seed: int, intermediate: str
                 ) -> Callable[[], Certificate] | str:
    """A verified epsilon result as a Certificate (tier ``bab``; built on first use by
    :meth:`EquivalenceResult.certificate`, if the models are unchanged), or why there is
    none.

    The claim ``||f - f'||_norm <= bound`` on the domain gives per-output bounds
    ``|f_o - f'_o| <= bound`` (either norm) and the l1 bound ``bound`` (l1) or ``m *
    bound`` (l_inf, rounded up). Like ``certify``, the certificate measures the output
    scale on samples of the domain and runs a PGD search there; a deviation above the
    bound raises :class:`SoundnessError` instead of returning a wrong certificate."""
    if res.property != "epsilon":
        return ("a top-1 result bounds no deviation; verify property='epsilon' for a "
                "certificate")
    if res.status != "verified" or res.bound is None or res.norm is None:
        return f"the result is {res.status}, not verified"
    if not (isinstance(model, nn.Module) and isinstance(compressed, nn.Module)):
        return ("the models were given as traced graphs; a certificate records the modules' "
                "parameter digests: pass the nn.Module models")
    digests = parameter_digest(model), parameter_digest(compressed)
    return functools.partial(_build_certificate, res, model, compressed, digests, g1, g2,
                             dom, m, seed, intermediate)


def _build_certificate(res: EquivalenceResult, model: nn.Module, compressed: nn.Module,
                       digests: tuple[str, str], g1: Graph, g2: Graph, dom: InputDomain,
                       m: int, seed: int, intermediate: str) -> Certificate:
    if (parameter_digest(model), parameter_digest(compressed)) != digests:
        raise ConfigurationError("no certificate: a model's parameters changed after "
                                 "verify_equivalence ran; verify the models again")
    assert res.bound is not None and res.norm is not None and res.epsilon is not None
    b = max(float(res.bound), 0.0)
    l1 = b if res.norm == "l1" else \
        math.nextafter(m * b * (1.0 + float_slack(1, 1)), math.inf) if b > 0 else 0.0
    t0 = time.perf_counter()
    f, fc = float64_function(model), float64_function(compressed)
    lo, hi = dom.lower_tensor(), dom.upper_tensor()
    x = torch.cat([(lo + hi) * 0.5, dom.sample(CERT_SCALE_SAMPLES - 1,
                                               torch.Generator().manual_seed(seed))
                   .reshape((-1,) + tuple(lo.shape[1:]))])
    with torch.no_grad():
        fx = f(x)
        scale = float(fx.abs().sum(1).max())
        dev = float((fx - fc(x)).abs().sum(1).max())
    adv = adversarial_deviation(f, fc, dom.shape, lo[0], hi[0], steps=CERT_SEARCH_STEPS,
                                restarts=CERT_SEARCH_RESTARTS, seed=seed, time_budget=30.0)
    with torch.no_grad():
        at = float(f(adv.argmax.double()).abs().sum())
    for measured, where, size in ((dev, "a sample of the domain", scale),
                                  (adv.max_deviation, "the adversarial search", at)):
        if measured > l1 + 1e-9 * (l1 + size):
            raise SoundnessError(f"measured l1 deviation {measured:.17g} from {where} "
                                 f"exceeds the verified bound {l1:.17g}. {SOUNDNESS_CAUSES}")
    seconds = res.seconds + time.perf_counter() - t0
    details = BabDetails(
        status="closed", regions=res.regions, rounds=int(res.details.get("rounds", 0)),
        seconds=res.seconds, proven_fraction=1.0, open_regions=0, attempts=1,
        target=float(res.epsilon or b), search_bound=b, one_pass_bound=None,
        found=res.found, time_budget=None, max_regions=res.regions,
        method=str(res.details.get("method", "")),
        intermediate=intermediate,
        rounding_margin_rel=float(res.details.get("rounding_margin_rel") or 0.0),
        domain=dom.describe(), norm=res.norm, epsilon=res.epsilon,
        float_slack_rel=float(res.details.get("rounding_margin_rel") or 0.0))
    tier = MethodBound(method=TIER_NAME, bound=l1, per_output=(b,) * m, scope=WORST_CASE,
                       seconds=seconds, exact=False, vacuous=bool(l1 > scale),
                       details=details)
    base = operator_norm_baseline(g1, g2)
    meas = Measurements(output_scale=scale, adversarial_max=adv.max_deviation,
                        adversarial_steps=adv.steps, adversarial_restarts=adv.restarts,
                        adversarial_seconds=adv.seconds,
                        adversarial_budget_exhausted=adv.budget_exhausted,
                        output_scale_source=f"max over {CERT_SCALE_SAMPLES} points sampled "
                                            "in the domain (no reference data)")
    how = (f"verify_equivalence proved ||f(x) - f'(x)||_{res.norm} <= {res.epsilon:g} on "
           f"the whole domain ({res.regions} regions, {res.seconds:.3g} s; largest bound over "
           f"the leaf regions {b:.6g})")
    if res.norm == "inf":
        how += f"; the l1 bound is {m} outputs x that l_inf bound"
    return Certificate(
        bound=l1, per_output=(b,) * m, input_shape=tuple(dom.shape), radius=dom.radius,
        original_digest=digests[0], compressed_digest=digests[1],
        baseline_linf=base.bound_linf, baseline_note=base.note, measurements=meas,
        vacuous=bool(l1 > scale), domain=dom.describe(), model_name=g1.model_name,
        working_dtype=g1.working_dtype, **provenance(), by_method={TIER_NAME: tier},
        input_domain=dom, notes=(how,), arithmetic="exact")
