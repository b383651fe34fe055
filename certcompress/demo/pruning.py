"""The pruning section of the README's main job (``certcompress demo``): a certified
path-magnitude pruning plan next to magnitude pruning, where the bound goes layer by
layer, and a budget search for the sparsest plan whose certificate is not vacuous."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..certificate import Certificate
from ..compress.pruning.apply import prune
from ..compress.pruning.plan import PruningPlan
from ..compress.pruning.search import SparsitySearch, search_sparsity
from ..compress.pruning.sensitivity import layer_sensitivity
from ..domain import InputDomain
from ..errors import ConfigurationError
from ..measure import deviations, float64_function
from .digits import DigitsData, accuracy

__all__ = ["demo_section", "PruningDemo"]


@dataclass(frozen=True, eq=False)
class PruningDemo:
    """What :func:`demo_section` showed: the certified plan and its certificate, the
    magnitude plan's certificate at the same sparsity, accuracies (None without labels),
    the budget used and the search result."""

    plan: PruningPlan
    pruned: nn.Module
    certificate: Certificate
    magnitude_certificate: Certificate
    dense_accuracy: float | None
    pruned_accuracy: float | None
    magnitude_accuracy: float | None
    budget: float
    search: SparsitySearch


def demo_section(model: nn.Module, data: DigitsData | Tensor, *, labels: Tensor | None = None,
                 input_shape: Sequence[int] = (1, 1, 8, 8), input_radius: float = 1.0,
                 sparsity: float = 0.5, budget: float | None = None,
                 out_dir: str | Path | None = None, search_steps: int = 20, seed: int = 0,
                 domain: InputDomain | None = None,
                 print_fn: Callable[[str], None] = print) -> PruningDemo:
    """Print the pruning section and return what it showed.

    ``data``: a :class:`~certcompress.demo.digits.DigitsData` (its test split is used, with
    labels) or an input tensor (``labels`` optional). ``budget`` defaults to the largest
    ``||f(x)||_1`` on the data, so the search finds the sparsest plan whose certificate is
    not vacuous. With ``domain`` (an :class:`~certcompress.InputDomain` box) the budget
    search certifies every step with the bound-propagation tier over that box as well
    (``certifier="bounds"``). With ``out_dir`` the plan and certificates are written there.
    """
    y: Tensor | None
    if isinstance(data, DigitsData):
        x, y = data.x_test, data.y_test
    elif isinstance(data, Tensor):
        x, y = data, labels
    else:
        raise ConfigurationError(f"data must be DigitsData or a tensor, got {type(data).__name__}")
    shape = tuple(input_shape)
    x = x.reshape((-1,) + shape[1:])

    def acc(m: nn.Module) -> float | None:
        return None if y is None else accuracy(m, x, y)

    plan = PruningPlan.path_magnitude(model, sparsity, input_shape=shape)
    pruned, cert = prune(model, plan, shape, input_radius, reference_inputs=x,
                         search_steps=search_steps, seed=seed)
    mplan = PruningPlan.magnitude(model, sparsity)
    mpruned, mcert = prune(model, mplan, shape, input_radius, reference_inputs=x,
                           search_steps=search_steps, seed=seed)
    dense, p_acc, m_acc = acc(model), acc(pruned), acc(mpruned)

    def fmt(a: float | None) -> str:
        return "n/a" if a is None else f"{a:.3f}"

    m = cert.measurements
    print_fn(f"pruning plan: {plan.describe()} (inputs {shape}, ||x||_inf <= {input_radius:g})")
    print_fn(f"  certified bound {cert.bound:.4g} on ||f(x) - f'(x)||_1; measured on "
             f"{m.reference_count} inputs: max {m.deviation_max:.4g}, mean "
             f"{m.deviation_mean:.4g}; gradient ascent found {m.adversarial_max:.4g}"
             + ("; VACUOUS (above the output scale " f"{m.output_scale:.4g})"
                if cert.vacuous else ""))
    print_fn(f"  accuracy dense {fmt(dense)} -> path-magnitude {fmt(p_acc)} "
             f"(magnitude at the same sparsity: {fmt(m_acc)}, certified bound "
             f"{mcert.bound:.4g})")
    table = layer_sensitivity(model, plan, shape, input_radius)
    print_fn("  where the bound goes (certified bound of pruning each layer alone):")
    for row in table.itertuples():
        print_fn(f"    {row.layer:<24} {row.pruned:>7,}/{row.weights:<7,} pruned  bound "
                 f"{row.bound:10.4g}  ({row.share:.0%} of the sum)")
    if budget is None:
        with torch.no_grad():
            _, scale = deviations(float64_function(model), float64_function(model), x)
        budget = float(scale.max())
        why = "the largest ||f(x)||_1 on the data: below it the certificate is not vacuous"
    else:
        why = "given"
    found = search_sparsity(model, budget, "path-magnitude", shape,
                            None if domain is not None else input_radius, seed=seed,
                            certifier="path-metric" if domain is None else "bounds",
                            domain=domain)
    nxt = ("every weight fits" if found.next_bound is None else
           f"next step {found.next_sparsity:.4%} certified at {found.next_bound:.4g} > budget")
    tier = ("path-metric tier" if domain is None
            else f"path-metric and bound-propagation tiers over {domain.description}")
    print_fn(f"budget search for budget {budget:.4g} ({why}), certified by the {tier}:")
    print_fn(f"  sparsest path-magnitude plan within budget: sparsity {found.sparsity:.4%} "
             f"({found.pruned:,} weights), certified {found.bound:.4g}; {nxt}; "
             f"{found.forward_passes} forward passes"
             + ("" if domain is None else " of the path-metric engine, plus one "
                "bound-propagation run per step"))
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        plan.save(out / "pruning_plan.json")
        cert.save(out / "pruning_certificate.json")
        found.plan.save(out / "budget_plan.json")
        print_fn(f"  plan, certificate and budget plan written to {out}")
    return PruningDemo(plan=plan, pruned=pruned, certificate=cert, magnitude_certificate=mcert,
                       dense_accuracy=dense, pruned_accuracy=p_acc, magnitude_accuracy=m_acc,
                       budget=float(budget), search=found)
