"""Certified bit allocation: choose a width per layer so that a certificate holds.

``choose_bitwidths(model, budget=eps, ...)`` minimizes the total weight bits subject to
``certified bound <= eps``; ``choose_bitwidths(model, avg_bits=4.0, ...)`` minimizes the
certified bound subject to an average-bits budget. The steps:

1. **Sensitivities** from one magnitude pass and its backward pass: the exact bound of
   quantizing each layer alone at each candidate width (``sensitivity``).
2. **Allocation** by integer programming over these per-layer costs (a multiple-choice
   knapsack solved with ``scipy.optimize.milp``, in the spirit of HAWQ-V3's ILP but with
   certified costs), or a greedy when there are very many layers.
3. **Exact certification and repair.** The chosen configuration is certified by a
   difference pass; its backward pass gives the *exact* bound after changing any single
   layer (the path-norm is affine in each layer's block, ``_engine``). The problem is
   re-solved around the current configuration with these costs until it holds and no
   single layer can be lowered (budget form) or the bound stops decreasing (size form).

The returned :class:`BitAllocation` always carries the certificate of the quantized model
computed by :func:`certcompress.certify` (never a first-order estimate) and the number of
engine passes spent.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
from torch import Tensor, nn

from ...api import certify
from ...bounds.tiers import WORST_CASE, tier_registry
from ...certificate import Certificate
from ...domain import InputDomain
from ...errors import ConfigurationError
from ._choice import solve_choice
from ._engine import quant_domain
from ._problem import PREDICTION_TOLERANCE, Problem
from .activations import fold_batchnorm
from .config import QuantConfig, check_bits, check_granularity
from .grid import quantization_grid
from .joint import descend_jointly
from .quantizers import affine_layers
from .sensitivity import SensitivityTable, check_candidates, table_from_problem

__all__ = ["AllocationStep", "BitAllocation", "choose_bitwidths"]


@dataclass(frozen=True)
class AllocationStep:
    """One exactly certified configuration visited by the allocator."""

    total_bits: int
    bound: float
    feasible: bool | None
    how: str


@dataclass(frozen=True)
class BitAllocation:
    """The chosen configuration, its quantized model and its exact certificate.

    ``budget`` (certified units) or ``avg_bits_budget`` says which problem was solved;
    ``locally_minimal`` (budget form) says that lowering any single layer by one
    candidate step exceeds the budget; ``passes`` counts engine passes by kind
    (``trace``, ``magnitude``, ``difference`` and their ``_backward``, ``certify``).
    """

    config: QuantConfig
    certificate: Certificate
    model: nn.Module = field(repr=False, compare=False)
    budget: float | None
    avg_bits_budget: float | None
    candidates: tuple[int, ...]
    total_bits: int
    weights: int
    locally_minimal: bool | None
    method: str
    iterations: int
    passes: Mapping[str, int]
    seconds: float
    sensitivity: SensitivityTable
    history: tuple[AllocationStep, ...]
    #: activation quantizer -> bits (``activations=``; empty otherwise): ``model`` and the
    #: certificate's original (``original``) are then BatchNorm-folded fx GraphModules
    activation_bits: Mapping[str, int] = field(default_factory=dict)
    #: the :class:`~certcompress.equivalence.EquivalenceResult` that proved the result
    #: (``certifier="equivalence"``), else None
    equivalence: Any = field(default=None, compare=False)
    original: nn.Module | None = field(default=None, repr=False, compare=False)

    @property
    def bound(self) -> float:
        return self.certificate.bound

    @property
    def bits(self) -> dict[str, int]:
        return self.config.bits

    @property
    def average_bits(self) -> float:
        return self.total_bits / self.weights if self.weights else 0.0

    @property
    def uniform8_bits(self) -> int:
        return 8 * self.weights

    def summary(self) -> str:
        goal = (f"budget {self.budget:.6g}" if self.budget is not None
                else f"average {self.avg_bits_budget:g} bits")
        lines = [f"bit allocation ({goal}, candidates {list(self.candidates)}, "
                 f"{self.method}): {self.total_bits:,} weight bits = {self.average_bits:.3f} "
                 f"bits/weight ({self.total_bits / max(1, self.uniform8_bits):.1%} of uniform "
                 f"8-bit); certified bound {self.bound:.6g}"]
        width = max(len(n) for n in self.bits) if self.bits else 5
        for name, b in self.bits.items():
            lines.append(f"  {name:<{width}}  {b:2d} bits")
        if self.locally_minimal is not None:
            lines.append("  locally minimal: lowering any single layer by one step exceeds "
                         "the budget" if self.locally_minimal else
                         "  not proven locally minimal (iteration limit reached)")
        lines.append(f"  {self.iterations} exact certifications, passes {dict(self.passes)}, "
                     f"{self.seconds:.2f} s")
        return "\n".join(lines)


@dataclass
class _Visit:
    choice: np.ndarray
    value_abs: float
    value: float
    exp: int
    terms: np.ndarray
    feasible: bool


def _check_goal(budget: float | None, avg_bits: float | None, cands: Sequence[int]) -> None:
    if (budget is None) == (avg_bits is None):
        raise ConfigurationError("give exactly one of budget= (the certified bound to stay "
                                 "under) and avg_bits= (the average bits per weight)")
    if budget is not None:
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) \
                or not math.isfinite(budget) or budget <= 0:
            raise ConfigurationError(f"budget must be a finite number > 0 (a bound on "
                                     f"||f(x) - f'(x)||_1 over the domain), got {budget!r}")
    if avg_bits is not None:
        if isinstance(avg_bits, bool) or not isinstance(avg_bits, (int, float)) \
                or not math.isfinite(avg_bits) or avg_bits < min(cands):
            raise ConfigurationError(f"avg_bits must be a finite number >= the smallest "
                                     f"candidate ({min(cands)}), got {avg_bits!r}")


def choose_bitwidths(model: nn.Module, budget: float | None = None, *,
                     avg_bits: float | None = None,
                     candidates: Iterable[int] = (2, 3, 4, 5, 6, 8),
                     input_shape: Sequence[int] | None = None,
                     input_radius: float | None = None, granularity: str = "per-channel",
                     layers: Iterable[str] | None = None, bias_bits: int | None = None,
                     reference_inputs: Tensor | None = None, search_steps: int = 0,
                     search_restarts: int = 4, seed: int = 0, method: str = "auto",
                     max_iterations: int = 12, certifier: str = "path-metric",
                     domain: InputDomain | None = None, activations: int | None = None,
                     activation_candidates: Iterable[int] | None = None,
                     calibration: Tensor | None = None, epsilon: float | None = None,
                     timeout: float = 30.0) -> BitAllocation:
    """Choose per-layer bit widths with a certificate (see the module docstring).

    ``budget``: the certified bound (l1 output deviation over ``||x||_inf <= r``) to
    stay under, minimizing total weight bits; or ``avg_bits``: the average bits per
    weight not to exceed, minimizing the certified bound. ``layers`` defaults to every
    Linear/ConvNd/ConvTransposeNd; ``method`` is ``"auto"`` (ILP up to 500 layers),
    ``"ilp"`` or ``"greedy"``. ``reference_inputs`` and ``search_steps`` feed the final
    certificate's measurements.

    ``certifier="bounds"`` (or another worst-case tier of the tier registry,
    :func:`certcompress.bounds.tiers.tier_registry`; budget form only) certifies with that
    tier (for ``bounds``: the bound-propagation tier)
    over ``domain`` (an :class:`~certcompress.InputDomain` box, which replaces
    ``input_shape``/``input_radius``) as well: starting from the smaller of the narrowest
    uniform width within budget and the path-metric allocation (when that one meets the
    budget), it lowers one layer by one step at a time (largest saving first) while
    the certificate (the smaller of the path-metric and bounds tiers) stays within the
    budget, until no single step does; the result is locally minimal for that
    certificate. About one bounds-tier certification per tried step.

    ``activations=B`` (bits, 2-8; needs ``domain``; budget form): activation quantizers
    too (:mod:`.activations`: the model is BatchNorm-folded, ranges from ``calibration``
    or the bounds tier over the domain), each a decision variable with widths
    ``activation_candidates`` (default ``B-4..B``) alongside the weight widths; the
    greedy descent of :mod:`.joint` with ``certifier`` (``"bounds"`` when
    ``"path-metric"`` is asked: the path-metric tier alone is vacuous for activation
    rounding on boxes). ``certifier="equivalence"`` (needs ``domain`` and ``epsilon``,
    the l1 budget; ``budget`` defaults to it): the narrowest widths proven
    ``epsilon``-equivalent by :func:`certcompress.equivalence.verify_equivalence`
    (``timeout`` seconds per try; an unknown verdict counts as not proven), same descent.
    """
    t0 = time.perf_counter()
    if certifier == "equivalence" or activations is not None:
        return _choose_jointly(model, budget, avg_bits, candidates, granularity, layers,
                               bias_bits, reference_inputs, search_steps, search_restarts,
                               seed, method, max_iterations, certifier, domain, activations,
                               activation_candidates, calibration, epsilon, timeout, t0)
    if epsilon is not None:
        raise ConfigurationError("epsilon= is the budget of certifier='equivalence'; with "
                                 f"certifier={certifier!r} pass budget=")
    registry = tier_registry()
    worst = [t.name for t in registry if t.scope == WORST_CASE]
    if not isinstance(certifier, str) or certifier not in worst:
        raise ConfigurationError(f"certifier must be a worst-case tier "
                                 f"({', '.join(map(repr, worst))}), got {certifier!r}")
    if certifier != "path-metric":
        if domain is None:
            raise ConfigurationError(f"certifier={certifier!r} needs domain=InputDomain.box(...):"
                                     " the tier certifies over a box of inputs")
        if budget is None:
            raise ConfigurationError(f"certifier={certifier!r} supports the budget form only; "
                                     "for avg_bits use the default certifier='path-metric'")
        input_shape, input_radius = domain.shape, domain.radius
    elif domain is not None:
        raise ConfigurationError("domain= is used by a certifier other than 'path-metric' "
                                 "(e.g. 'bounds'); with the path-metric certifier pass "
                                 "input_shape and input_radius")
    cands = check_candidates(candidates)
    _check_goal(budget, avg_bits, cands)
    check_granularity(granularity, "granularity")
    if bias_bits is not None:
        check_bits(bias_bits, "bias_bits")
    if method not in ("auto", "ilp", "greedy"):
        raise ConfigurationError(f"method must be 'auto', 'ilp' or 'greedy', got {method!r}")
    input_domain = domain
    dom = quant_domain(model, input_shape, input_radius)
    names = list(affine_layers(model)) if layers is None else list(layers)
    if not names:
        raise ConfigurationError(f"{type(model).__name__} has no layer to quantize")
    QuantConfig.from_bits(dict.fromkeys(names, cands[0]), granularity).validate(model)
    problem = Problem(model, dom, names, cands, granularity, bias_bits)
    run = _Run(problem, method, max_iterations)
    if certifier != "path-metric":
        assert budget is not None and input_domain is not None
        return _descend_with_bounds(model, problem, run, float(budget), input_domain,
                                    certifier, reference_inputs, search_steps, search_restarts, seed, t0)
    if budget is not None:
        choice = run.budget_form(float(budget))
    else:
        assert avg_bits is not None
        choice = run.size_form(float(avg_bits))
    qcfg = QuantConfig.from_bits(problem.bits(choice), granularity, bias_bits=bias_bits)
    qmodel = quantization_grid(model, qcfg).apply(model)
    cert = certify(model, qmodel, dom.input_shape, dom.radius,
                   reference_inputs=reference_inputs, search_steps=search_steps,
                   search_restarts=search_restarts, seed=seed)
    problem.ev.counts["certify"] += 1
    if budget is not None and cert.bound > budget:
        raise RuntimeError(  # the allocator's exact value and certify disagree: a bug
            f"internal error: the chosen allocation certifies {cert.bound:.17g} > budget "
            f"{budget:.17g}; please report it")
    return BitAllocation(
        config=qcfg, certificate=cert, model=qmodel, budget=budget, avg_bits_budget=avg_bits,
        candidates=tuple(cands), total_bits=problem.total_bits(choice),
        weights=int(problem.numel.sum()), locally_minimal=run.locally_minimal,
        method=run.method, iterations=len(run.history),
        passes=MappingProxyType(dict(problem.ev.counts)), seconds=time.perf_counter() - t0,
        sensitivity=run.sensitivity, history=tuple(run.history))


def _descend_with_bounds(model: nn.Module, problem: Problem, run: _Run, budget: float,
                         domain: InputDomain, tier: str, reference_inputs: Tensor | None,
                         search_steps: int, search_restarts: int, seed: int, t0: float
                         ) -> BitAllocation:
    """Greedy descent certified by the path-metric tier and ``tier`` over ``domain`` (see
    choose_bitwidths)."""
    cands, numel = list(problem.candidates), [int(n) for n in problem.numel]
    granularity, bias_bits = problem.granularity, problem.bias_bits
    n_layers = len(problem.layers)

    def certify_choice(ch: Sequence[int], final: bool = False
                       ) -> tuple[QuantConfig, nn.Module, Certificate]:
        cfg = QuantConfig.from_bits(problem.bits(ch), granularity, bias_bits=bias_bits)
        qm = quantization_grid(model, cfg).apply(model)
        # the tries are bounds only; the final certificate measures (reference inputs and
        # the search, as asked)
        cert = certify(model, qm, domain=domain, methods=("path-metric", tier),
                       reference_inputs=reference_inputs if final else None,
                       search_steps=search_steps if final else 0,
                       search_restarts=search_restarts, seed=seed)
        problem.ev.counts["certify"] += 1
        return cfg, qm, cert

    # starting points: the narrowest uniform width within budget, and the path-metric
    # allocation (its bound is at least the tiers' minimum, so it is within budget too)
    starts: list[list[int]] = []
    tries = 0
    for k in range(len(cands)):
        tries += 1
        bound = certify_choice([k] * n_layers)[2].bound
        if bound <= budget:
            starts.append([k] * n_layers)
            break
    else:
        raise ConfigurationError(
            f"budget {budget:.6g} is below the certified bound {bound:.6g} of every layer at "
            f"{cands[-1]} bits (the widest candidate): raise the budget or add a wider "
            "candidate width")
    try:
        starts.append([int(k) for k in run.budget_form(budget)])
    except ConfigurationError:  # the path-metric tier alone cannot meet the budget
        pass
    choice = min(starts, key=problem.total_bits)
    improved = True
    while improved:
        improved = False
        # largest saving first: layers by weight count, ties by position
        for i in sorted(range(len(choice)), key=lambda j: -numel[j] * (
                cands[choice[j]] - cands[max(choice[j] - 1, 0)])):
            if choice[i] == 0:
                continue
            trial = list(choice)
            trial[i] -= 1
            tries += 1
            if certify_choice(trial)[2].bound <= budget:
                choice, improved = trial, True
                break
    qcfg, qmodel, cert = certify_choice(choice, final=True)
    if cert.bound > budget:
        raise RuntimeError(f"internal error: the chosen allocation certifies {cert.bound:.17g}"
                           f" > budget {budget:.17g}; please report it")
    return BitAllocation(
        config=qcfg, certificate=cert, model=qmodel, budget=budget, avg_bits_budget=None,
        candidates=tuple(cands), total_bits=problem.total_bits(choice),
        weights=int(sum(numel)), locally_minimal=True, method=f"greedy descent ({tier} tier)",
        iterations=tries, passes=MappingProxyType(dict(problem.ev.counts)),
        seconds=time.perf_counter() - t0, sensitivity=run.sensitivity, history=())


def _choose_jointly(model: nn.Module, budget: float | None, avg_bits: float | None,
                    candidates: Iterable[int], granularity: str, layers: Iterable[str] | None,
                    bias_bits: int | None, reference_inputs: Tensor | None, search_steps: int,
                    search_restarts: int, seed: int, method: str, max_iterations: int,
                    certifier: str, domain: InputDomain | None, activations: int | None,
                    activation_candidates: Iterable[int] | None, calibration: Tensor | None,
                    epsilon: float | None, timeout: float, t0: float) -> BitAllocation:
    """choose_bitwidths with activations and/or the equivalence certifier (:mod:`.joint`)."""
    if certifier == "equivalence":
        if epsilon is None or isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) \
                or not math.isfinite(epsilon) or epsilon <= 0:
            raise ConfigurationError(f"certifier='equivalence' needs epsilon > 0 (the budget "
                                     f"on the l1 deviation), got {epsilon!r}")
        if budget is not None and budget != epsilon:
            raise ConfigurationError(f"budget={budget!r} and epsilon={epsilon!r} differ; with "
                                     "certifier='equivalence' give epsilon only")
        budget = float(epsilon)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ConfigurationError(f"timeout must be > 0 seconds, got {timeout!r}")
    else:
        worst = [t.name for t in tier_registry() if t.scope == WORST_CASE]
        if certifier not in worst:
            raise ConfigurationError(f"certifier must be a worst-case tier "
                                     f"({', '.join(map(repr, worst))}) or 'equivalence', got "
                                     f"{certifier!r}")
        if certifier == "path-metric":
            certifier = "bounds"
    if domain is None:
        raise ConfigurationError(f"{'activations=' if activations is not None else certifier}"
                                 " needs domain=InputDomain.box(...): the certificate is over "
                                 "a box of inputs")
    if budget is None or avg_bits is not None:
        raise ConfigurationError("activations= and certifier='equivalence' support the budget "
                                 "form only (budget= or epsilon=), not avg_bits=")
    cands = check_candidates(candidates)
    _check_goal(budget, None, cands)
    check_granularity(granularity, "granularity")
    if bias_bits is not None:
        check_bits(bias_bits, "bias_bits")
    folded = fold_batchnorm(model)
    names = list(affine_layers(folded)) if layers is None else list(layers)
    QuantConfig.from_bits(dict.fromkeys(names, cands[0]), granularity).validate(folded)
    problem = Problem(folded, quant_domain(folded, domain.shape, domain.radius), names, cands,
                      granularity, bias_bits)
    run = _Run(problem, method, max_iterations)
    res = descend_jointly(model, budget=float(budget), domain=domain, candidates=cands,
                          granularity=granularity, bias_bits=bias_bits, layers=names,
                          activations=activations, activation_candidates=None
                          if activation_candidates is None else list(activation_candidates),
                          calibration=calibration, certifier=certifier, timeout=float(timeout),
                          reference_inputs=reference_inputs, search_steps=search_steps,
                          search_restarts=search_restarts, seed=seed)
    bits = res.config.bits
    total = sum(int(problem.numel[i]) * bits[n] for i, n in enumerate(problem.layers))
    return BitAllocation(
        config=res.config, certificate=res.certificate, model=res.model, budget=float(budget),
        avg_bits_budget=None, candidates=tuple(cands), total_bits=total,
        weights=int(problem.numel.sum()), locally_minimal=res.locally_minimal,
        method=f"greedy descent ({certifier}{', activations' if activations else ''})",
        iterations=res.tries, passes=MappingProxyType(dict(problem.ev.counts)),
        seconds=time.perf_counter() - t0, sensitivity=run.sensitivity, history=(),
        activation_bits=MappingProxyType(dict(res.activation_bits)),
        equivalence=res.equivalence, original=res.original)


class _Run:
    """The iteration state of one allocation."""

    def __init__(self, problem: Problem, method: str, max_iterations: int) -> None:
        self.p = problem
        self.method_arg = method
        self.max_iterations = max(1, int(max_iterations))
        self.method = ""
        self.history: list[AllocationStep] = []
        self.locally_minimal: bool | None = None
        self.rejected: set[tuple[int, ...]] = set()
        self.bits = problem.bits_matrix()
        lin = problem.linearize(None)
        self.base_terms = problem.terms(lin)
        self.base_exp = lin.exp
        self.base_value = lin.value
        self.sensitivity = table_from_problem(problem, self.base_terms.tolist(), lin.exp,
                                              "gradient (float32 products)")
        self.top = np.full(len(problem.layers), len(problem.candidates) - 1)

    def _solve(self, objective: np.ndarray, constraint: np.ndarray, cap: float,
               start: np.ndarray | None) -> np.ndarray | None:
        x, how = solve_choice(objective, constraint, cap, start=start, method=self.method_arg)
        if x is not None:
            used = [m for m in self.method.split("+") if m]
            for m in how.split("+"):
                if m not in used:
                    used.append(m)
            self.method = "+".join(used)
        return x

    def _visit(self, choice: np.ndarray, budget: float | None, how: str) -> _Visit:
        lin = self.p.linearize(choice)
        terms = self.p.terms(lin)
        feasible = None if budget is None else self.p.feasible(lin.value, lin.exp, budget)
        v = _Visit(choice.copy(), math.ldexp(lin.value, lin.exp), lin.value, lin.exp, terms,
                   bool(feasible))
        self.history.append(AllocationStep(self.p.total_bits(choice),
                                           self.p.certified(lin.value, lin.exp), feasible, how))
        if feasible is False:
            self.rejected.add(tuple(int(c) for c in choice))
        return v

    # ------------------------------------------------------------------ budget form
    def _single_lowering(self, v: _Visit, budget: float) -> np.ndarray | None:
        """The single-layer change (to any lower width) with the most bits saved whose
        predicted bound stays within budget, or None: then ``v`` is locally minimal (no
        layer can even go one step lower). Predictions are exact up to float rounding;
        near-ties (within ``PREDICTION_TOLERANCE``) count as candidates and are settled by an exact visit,
        and configurations already certified infeasible are skipped."""
        thr = self.p.threshold(budget, v.exp)
        rows = np.arange(len(v.choice))
        pred = v.value + v.terms - v.terms[rows, v.choice][:, None]
        saved = self.bits[rows, v.choice][:, None] - self.bits
        ok = (pred <= thr + PREDICTION_TOLERANCE * abs(thr)) & (saved > 0)
        for i, k in zip(*np.nonzero(ok)):
            moved = v.choice.copy()
            moved[i] = k
            if tuple(int(c) for c in moved) in self.rejected:
                ok[i, k] = False
        if not ok.any():
            return None
        score = np.where(ok, saved, -np.inf)
        i, k = np.unravel_index(int(np.argmax(score)), score.shape)
        out = v.choice.copy()
        out[i] = k
        return out

    def budget_form(self, budget: float) -> np.ndarray:
        p = self.p
        thr0 = p.threshold(budget, self.base_exp) - self.base_value
        x = self._solve(self.bits, self.base_terms, thr0, None)
        choice = x if x is not None else self.top.copy()
        best: _Visit | None = None
        seen: set[tuple[int, ...]] = set()
        how = "ilp on single-layer bounds"
        for _ in range(self.max_iterations):
            v = self._visit(choice, budget, how)
            seen.add(tuple(int(c) for c in choice))
            if v.feasible and (best is None or _bits(self, v) < _bits(self, best)):
                best = v
            if not v.feasible and np.array_equal(choice, self.top):
                raise ConfigurationError(
                    f"budget {budget:.6g} is below the certified bound of quantizing every "
                    f"layer at the largest candidate width ({p.candidates[-1]} bits): "
                    f"{p.certified(v.value, v.exp):.6g}; raise the budget or add wider "
                    "candidates (e.g. 16)")
            cur = v.terms[np.arange(len(choice)), choice]
            thr = p.threshold(budget, v.exp) - v.value
            nxt = self._solve(self.bits, v.terms - cur[:, None], thr, choice)
            if nxt is None:
                nxt = self.top.copy() if not v.feasible else choice
                how = "repair: all layers at the widest candidate"
            else:
                how = "ilp on exact single-layer changes"
            if np.array_equal(nxt, choice) and v.feasible:
                nxt = self._single_lowering(v, budget)
                how = "descent: one layer lowered"
                if nxt is None:
                    self.locally_minimal = True
                    return choice
            if tuple(int(c) for c in nxt) in seen:
                break
            choice = nxt
        return self._descend(best, budget)

    def _descend(self, best: _Visit | None, budget: float) -> np.ndarray:
        """Fallback: from the best feasible configuration, lower one layer at a time
        (each move's bound is exact before it is taken, and re-certified after)."""
        if best is None:
            best = self._visit(self.top.copy(), budget, "all layers at the widest candidate")
            if not best.feasible:
                raise ConfigurationError(
                    f"budget {budget:.6g} is below the certified bound of quantizing every "
                    f"layer at {self.p.candidates[-1]} bits "
                    f"({self.p.certified(best.value, best.exp):.6g})")
        v = best
        for _ in range(self.max_iterations * 4):
            nxt = self._single_lowering(v, budget)
            if nxt is None:
                self.locally_minimal = True
                return v.choice
            w = self._visit(nxt, budget, "descent: one layer lowered")
            if w.feasible:
                v = w  # else it is now in self.rejected and the next move is tried
        self.locally_minimal = self._single_lowering(v, budget) is None
        return v.choice

    # ------------------------------------------------------------------ size form
    def size_form(self, avg_bits: float) -> np.ndarray:
        p = self.p
        cap = avg_bits * float(p.numel.sum()) * (1.0 + 1e-12)
        x = self._solve(self.base_terms, self.bits, cap, None)
        if x is None:
            raise ConfigurationError(f"avg_bits {avg_bits:g} cannot be met with candidates "
                                     f"{p.candidates}")
        choice = x
        best: _Visit | None = None
        seen: set[tuple[int, ...]] = set()
        how = "ilp on single-layer bounds"
        for _ in range(self.max_iterations):
            v = self._visit(choice, None, how)
            seen.add(tuple(int(c) for c in choice))
            if best is not None and v.value_abs >= best.value_abs:
                break
            best = v
            cur = v.terms[np.arange(len(choice)), choice]
            nxt = self._solve(v.terms - cur[:, None], self.bits, cap, choice)
            how = "ilp on exact single-layer changes"
            if nxt is None or tuple(int(c) for c in nxt) in seen:
                break
            choice = nxt
        assert best is not None
        return best.choice


def _bits(run: _Run, v: _Visit) -> int:
    return run.p.total_bits(v.choice)
