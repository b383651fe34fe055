"""Per-layer sensitivity in certified units: the certified bound of quantizing one layer
alone at each candidate width (all other layers in float).

Because the path-norm is affine in each layer's parameters (``_engine``), the whole
table follows from one magnitude pass and its backward pass (``method="gradient"``):
entry ``(l, b)`` is ``max(r, 1) * <dF/d|theta_l|, | |q_l,b| - |theta_l| |>`` plus the
engine's float slack, which in exact arithmetic equals the engine's bound for that
quantization, ``max(r, 1) * (||Phi(max)||_1 - ||Phi(min)||_1)``, the same number
:func:`certcompress.certify` would give (up to float64 rounding of the backward pass).
``method="passes"`` runs the core engine once per entry instead (layers x widths passes).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from ..._io import atomic_write_text
from ...errors import ConfigurationError
from ._engine import Domain, quant_domain
from ._problem import Problem
from .config import QuantConfig, check_bits, check_granularity
from .quantizers import affine_layers

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["SensitivityTable", "sensitivity_table", "check_candidates"]


def check_candidates(candidates: Iterable[int]) -> list[int]:
    """Sorted distinct candidate widths, each validated."""
    try:
        cands = list(candidates)
    except TypeError:
        raise ConfigurationError(f"candidates must be a list of bit widths, got "
                                 f"{candidates!r}") from None
    if not cands:
        raise ConfigurationError("candidates must name at least one bit width")
    for b in cands:
        check_bits(b, "every entry of candidates")
    return sorted(set(cands))


@dataclass(frozen=True)
class SensitivityTable:
    """``bounds[i][k]``: certified bound (``||f(x) - f'(x)||_1`` over the domain) when only
    layer ``layers[i]`` is quantized, to ``candidates[k]`` bits."""

    layers: tuple[str, ...]
    candidates: tuple[int, ...]
    weights: tuple[int, ...]
    bounds: tuple[tuple[float, ...], ...]
    granularity: str
    input_shape: tuple[int, ...]
    radius: float
    method: str

    def bound(self, layer: str, bits: int) -> float:
        if layer not in self.layers:
            raise ConfigurationError(f"layer '{layer}' is not in the sensitivity table")
        if bits not in self.candidates:
            raise ConfigurationError(f"{bits} bits is not a candidate of the table "
                                     f"({list(self.candidates)})")
        return self.bounds[self.layers.index(layer)][self.candidates.index(bits)]

    def to_frame(self) -> pd.DataFrame:
        """One row per layer: its weight count and the bound at each width."""
        import pandas as pd

        data: dict[str, object] = {"layer": list(self.layers), "weights": list(self.weights)}
        for k, b in enumerate(self.candidates):
            data[f"bound@{b}bit"] = [row[k] for row in self.bounds]
        return pd.DataFrame(data).set_index("layer")

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        return atomic_write_text(path, self.to_frame().to_csv())

    def __str__(self) -> str:
        return self.to_frame().to_string(float_format=lambda v: f"{v:.4g}")


def table_from_problem(problem: Problem, terms: Sequence[Sequence[float]], exp: int,
                       method: str) -> SensitivityTable:
    rows = tuple(tuple(problem.certified(float(v), exp) for v in row) for row in terms)
    d = problem.domain
    return SensitivityTable(tuple(problem.layers), tuple(problem.candidates),
                            tuple(int(n) for n in problem.numel), rows, problem.granularity,
                            d.input_shape, d.radius, method)


def sensitivity_table(model: nn.Module, candidates: Iterable[int] = (2, 3, 4, 5, 6, 8), *,
                      input_shape: Sequence[int] | None = None,
                      input_radius: float | None = None, granularity: str = "per-channel",
                      layers: Iterable[str] | None = None, method: str = "gradient"
                      ) -> SensitivityTable:
    """The per-layer table in certified units (see the module docstring)."""
    cands = check_candidates(candidates)
    check_granularity(granularity, "granularity")
    if method not in ("gradient", "passes"):
        raise ConfigurationError(f"method must be 'gradient' or 'passes', got {method!r}")
    domain: Domain = quant_domain(model, input_shape, input_radius)
    names = list(affine_layers(model)) if layers is None else list(layers)
    QuantConfig.from_bits(dict.fromkeys(names, cands[0]), granularity).validate(model)
    problem = Problem(model, domain, names, cands, granularity, None)
    if method == "gradient":
        lin = problem.linearize(None)
        return table_from_problem(problem, problem.terms(lin, exact=True).tolist(), lin.exp,
                                  "gradient")
    rows = []
    for i, _ in enumerate(names):
        row = []
        for k in range(len(cands)):
            g = problem.grids[i][k]
            row.append(problem.ev.certified(problem.ev.path_metric({g.param: g.values()})))
        rows.append(tuple(row))
    d = problem.domain
    return SensitivityTable(tuple(names), tuple(cands), tuple(int(n) for n in problem.numel),
                            tuple(rows), granularity, d.input_shape, d.radius, "passes")
