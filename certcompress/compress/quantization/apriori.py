"""The a-priori bound of a grid, before quantizing (docs/path-metrics.md, section 4).

Round-to-nearest on a grid of step ``delta`` that contains zero moves each weight by at
most ``delta/2`` without changing its sign, so with ``hi = |theta| + delta/2`` and
``lo = (|theta| - delta/2)_+`` on the quantized coordinates (``|theta|`` elsewhere)

    d(theta, theta_q) <= ||Phi(hi)||_1 - ||Phi(lo)||_1,

whatever values the rounding produces. ``hi`` and ``lo`` are built in module space
(with a ``2**-20`` relative margin covering the float rounding of ``w/s`` and ``q*s``),
folded through BatchNorm by the core's fold, and the difference is computed by the
core engine (``hi`` dominates ``lo``, so it is one difference pass). It is monotone in
``delta``, so the bits needed for a budget follow by bisection (:func:`bits_for_budget`).

Quantized biases: a folded bias ``a*b + c`` may change sign when ``|a*b + c| <
|a|*delta_b/2``; for those coordinates ``lo = 0`` and the exact path-metric of zeroing
them is added (triangle inequality), as the engine does for sign changes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import torch
from torch import Tensor, nn

from ...bounds import graph_path_metric
from ...bounds.numerics import opposite_signs, same_strict_signs
from ...errors import ConfigurationError
from ...ir.ops import AffineParams
from ._engine import Domain, Evaluator, quant_domain
from .config import QuantConfig, check_granularity
from .quantizers import (
    WEIGHT_BITS,
    _broadcast,
    affine_layers,
    channel_axis,
    grid_scale,
    param_name,
    weight_of,
)
from .sensitivity import check_candidates

__all__ = ["AprioriBound", "apriori_bound", "apriori_bound_for_steps", "bits_for_budget"]

_MARGIN = 2.0 ** -20


@dataclass(frozen=True)
class AprioriBound:
    """A bound, before quantizing, valid for every rounding onto the given grid steps.

    ``bound`` is in certified units (``max(r, 1)`` x path-metric bound); ``flip_term`` is
    the part due to folded biases that may change sign (0 without bias quantization).
    """

    bound: float
    path_metric: float
    flip_term: float
    input_shape: tuple[int, ...]
    radius: float
    steps: Mapping[str, Tensor] = field(repr=False, compare=False)


def _check_step(layer: str, step: object, module: nn.Module) -> Tensor:
    w = module.weight
    assert isinstance(w, Tensor)
    t = torch.as_tensor(step, dtype=torch.float64).reshape(-1)
    axis = channel_axis(module)
    if t.numel() not in (1, w.shape[axis]) or not bool(torch.isfinite(t).all()) \
            or bool((t <= 0).any()):
        raise ConfigurationError(
            f"steps['{layer}'] must be a positive finite number or one per output channel "
            f"({w.shape[axis]} values), got {step!r}")
    return t


class _Apriori:
    """One traced model; a-priori bounds for many step choices."""

    def __init__(self, model: nn.Module, domain: Domain, layers: Sequence[str]) -> None:
        self.model = model
        self.ev = Evaluator(model, domain, layers)
        self.mods = affine_layers(model)

    def bound(self, steps: Mapping[str, Tensor], bias_steps: Mapping[str, float]
              ) -> AprioriBound:
        hi: dict[str, Tensor] = {}
        lo: dict[str, Tensor] = {}
        for layer, step in steps.items():
            m = self.mods[layer]
            w = weight_of(m).detach().double().abs()
            axis = channel_axis(m) if step.numel() > 1 else None
            s = _broadcast(step, axis, w.dim()) * 0.5
            hi[param_name(layer, "weight")] = (w + s) * (1.0 + _MARGIN)
            lo[param_name(layer, "weight")] = (w - s - _MARGIN * (w + s)).clamp(min=0.0)
        for layer, sb in bias_steps.items():
            b = self.mods[layer].bias
            if not isinstance(b, Tensor):
                continue
            b64 = b.detach().double()
            r = 0.5 * sb + _MARGIN * (b64.abs() + sb)
            hi[param_name(layer, "bias")] = b64 + r
            lo[param_name(layer, "bias")] = b64 - r
        g = self.ev.g
        up, down = self.ev.graph(hi).params, self.ev.graph(lo).params
        bias_nodes = {node for n in bias_steps for node in self.ev.nodes_of.get(n, [])}
        p_hi: dict[str, AffineParams] = {}
        p_lo: dict[str, AffineParams] = {}
        ref: dict[str, AffineParams] = {}
        flips = 0
        for node, p in g.params.items():
            wh, wl = up[node].weight.abs(), down[node].weight.abs()
            if p.bias is None:
                p_hi[node], p_lo[node], ref[node] = (AffineParams(wh, None), AffineParams(wl, None),
                                                     p)
                continue
            v1, v2 = up[node].bias, down[node].bias
            assert v1 is not None and v2 is not None
            if node in bias_nodes:
                bh = torch.maximum(v1.abs(), v2.abs())
                bl = torch.where(same_strict_signs(v1, v2), torch.minimum(v1.abs(), v2.abs()),
                                 torch.zeros_like(v1))
                flip = opposite_signs(v1, v2) & (p.bias != 0)
                flips += int(flip.sum())
                ref[node] = AffineParams(p.weight, torch.where(flip, torch.zeros_like(p.bias),
                                                               p.bias))
            else:
                bh = bl = p.bias.abs()
                ref[node] = p
            p_hi[node], p_lo[node] = AffineParams(wh, bh), AffineParams(wl, bl)
        pm = graph_path_metric(g.with_params(p_hi), g.with_params(p_lo))
        self.ev.counts["difference"] += 1
        flip_term = 0.0
        if flips:
            flip_term = graph_path_metric(g, g.with_params(ref)).value
            self.ev.counts["difference"] += 1
        d = self.ev.domain
        total = pm.value + flip_term
        return AprioriBound(d.factor * total, total, flip_term, d.input_shape, d.radius,
                            MappingProxyType(dict(steps)))

    def grid_steps(self, qcfg: QuantConfig) -> tuple[dict[str, Tensor], dict[str, float]]:
        steps: dict[str, Tensor] = {}
        bias_steps: dict[str, float] = {}
        for layer, spec in qcfg.layers.items():
            m = self.mods[layer]
            scale, _ = grid_scale(weight_of(m), spec.bits, spec.granularity,
                                  channel_axis(m))
            steps[layer] = scale.double()
            b = getattr(m, "bias", None)
            if qcfg.bias_bits is not None and isinstance(b, Tensor):
                sb, _ = grid_scale(b, qcfg.bias_bits, "per-tensor", None)
                bias_steps[layer] = float(sb)
        return steps, bias_steps


def apriori_bound(model: nn.Module, qcfg: QuantConfig, input_shape: Sequence[int] | None = None,
                  input_radius: float | None = None) -> AprioriBound:
    """The a-priori bound for the grid ``qcfg`` gives (the steps the quantizer would use),
    computed before quantizing; always >= the certificate of :func:`quantize`."""
    qcfg.validate(model)
    a = _Apriori(model, quant_domain(model, input_shape, input_radius), list(qcfg.layers))
    return a.bound(*a.grid_steps(qcfg))


def apriori_bound_for_steps(model: nn.Module, steps: Mapping[str, float | Tensor],
                            input_shape: Sequence[int] | None = None,
                            input_radius: float | None = None, *,
                            bias_steps: Mapping[str, float] | None = None) -> AprioriBound:
    """The a-priori bound for arbitrary grid steps: ``steps[layer]`` is one step for the
    layer's weight or one per output channel; ``bias_steps[layer]`` one for its bias."""
    mods = affine_layers(model)
    bad = [n for n in [*steps, *(bias_steps or {})] if n not in mods]
    if bad:
        raise ConfigurationError(f"steps name layers {bad} that are not affine modules of "
                                 f"{type(model).__name__}")
    checked = {n: _check_step(n, s, mods[n]) for n, s in steps.items()}
    bsteps = {}
    for n, s in (bias_steps or {}).items():
        if not isinstance(s, (int, float)) or not math.isfinite(s) or s <= 0:
            raise ConfigurationError(f"bias_steps['{n}'] must be a positive finite number")
        bsteps[n] = float(s)
    a = _Apriori(model, quant_domain(model, input_shape, input_radius),
                 list(dict.fromkeys([*checked, *bsteps])))
    return a.bound(checked, bsteps)


def bits_for_budget(model: nn.Module, budget: float, *,
                    input_shape: Sequence[int] | None = None, input_radius: float | None = None,
                    granularity: str = "per-channel", candidates: Iterable[int] = WEIGHT_BITS,
                    layers: Iterable[str] | None = None, bias_bits: int | None = None
                    ) -> int | None:
    """The fewest bits, the same for every layer (or every layer in ``layers``), whose
    a-priori bound is within ``budget``; None if even the widest candidate exceeds it.
    Bisection over the candidates (the bound decreases as the step does)."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) \
            or not math.isfinite(budget) or budget <= 0:
        raise ConfigurationError(f"budget must be a finite number > 0, got {budget!r}")
    check_granularity(granularity, "granularity")
    cands = check_candidates(candidates)
    names = list(affine_layers(model)) if layers is None else list(layers)
    QuantConfig.from_bits(dict.fromkeys(names, cands[0]), granularity).validate(model)
    a = _Apriori(model, quant_domain(model, input_shape, input_radius), names)

    def fits(bits: int) -> bool:
        cfg = QuantConfig.from_bits(dict.fromkeys(names, bits), granularity, bias_bits=bias_bits)
        return a.bound(*a.grid_steps(cfg)).bound <= budget

    lo, hi = 0, len(cands) - 1
    if not fits(cands[hi]):
        return None
    while lo < hi:  # invariant: cands[hi] fits
        mid = (lo + hi) // 2
        if fits(cands[mid]):
            hi = mid
        else:
            lo = mid + 1
    return cands[hi]
