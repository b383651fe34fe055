"""The allocation problem: candidate grids of every layer, and their bound terms.

Holds, for each layer ``l`` and candidate width ``b``, the quantized weights and the
signed module-space error ``e = |q| - |w|``; given a :class:`Linearization` it returns the
matrix ``T[l, b]`` of exact single-layer bound terms (see ``_engine``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ...bounds.numerics import opposite_signs
from ...ir.ops import AffineParams
from ._engine import Domain, Evaluator, Linearization
from .quantizers import (
    QuantizedWeights,
    affine_layers,
    channel_absmax,
    channel_axis,
    param_name,
    raw_grid,
    weight_of,
)

Choice = Sequence[int] | np.ndarray  # candidate index per layer

__all__ = ["Problem"]

_CACHE_BYTES = 1 << 30  # cache the float32 errors up to 1 GiB, recompute beyond
PREDICTION_TOLERANCE = 1e-4  # relative accuracy of predicted bounds (float32 products)


class Problem:
    """Candidate grids of ``layers`` at widths ``candidates`` (ascending)."""

    def __init__(self, model: nn.Module, domain: Domain, layers: Sequence[str],
                 candidates: Sequence[int], granularity: str, bias_bits: int | None) -> None:
        self.model = model
        self.domain = domain
        self.layers = list(layers)
        self.candidates = list(candidates)
        self.granularity = granularity
        self.bias_bits = bias_bits
        self.ev = Evaluator(model, domain, self.layers)
        mods = affine_layers(model)
        self.numel = np.array([weight_of(mods[n]).numel() for n in self.layers],
                              dtype=np.int64)
        self.grids: list[list[QuantizedWeights]] = []
        self._abs_w: list[Tensor] = []
        for name in self.layers:
            m = mods[name]
            w = m.weight
            assert isinstance(w, Tensor)
            wname = param_name(name, "weight")
            amax = channel_absmax(w, granularity, channel_axis(m))
            self.grids.append([raw_grid(w, b, granularity, channel_axis(m), param=wname,
                                        layer=name, absmax=amax) for b in self.candidates])
            self._abs_w.append(w.detach().abs())
        self.bias_values: dict[str, Tensor] = {}
        if bias_bits is not None:
            for name in self.layers:
                b = getattr(mods[name], "bias", None)
                if isinstance(b, Tensor):
                    bname = param_name(name, "bias")
                    self.bias_values[bname] = raw_grid(
                        b, bias_bits, "per-tensor", None, param=bname, layer=name).values()
        total = int(self.numel.sum()) * len(self.candidates) * 8
        self._cache: dict[int, tuple[Tensor, Tensor]] | None = (
            {} if total <= _CACHE_BYTES else None)
        self.reference, self.offset = self._sign_agreeing()

    # ------------------------------------------------------------------ configurations
    def values(self, choice: Choice) -> dict[str, Tensor]:
        """Module-space quantized tensors of the configuration ``choice`` (candidate
        index per layer)."""
        out = dict(self.bias_values)
        for i, k in enumerate(choice):
            g = self.grids[i][int(k)]
            out[g.param] = g.values()
        return out

    def bits(self, choice: Choice) -> dict[str, int]:
        return {n: self.candidates[int(k)] for n, k in zip(self.layers, choice)}

    def total_bits(self, choice: Choice) -> int:
        return int(sum(int(n) * self.candidates[int(k)] for n, k in zip(self.numel, choice)))

    def bits_matrix(self) -> np.ndarray:
        return self.numel[:, None].astype(np.float64) * np.array(self.candidates, dtype=np.float64)

    # ------------------------------------------------------------------ bound terms
    def _errors(self, i: int) -> tuple[Tensor, Tensor]:
        """``(|E|, E^-)`` of layer ``i``: for every candidate, ``|e|`` and ``max(-e, 0)`` of
        the signed errors ``e = |q| - |w|``, ``(K, n)`` float32 (cached up to a memory
        limit)."""
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        aw = self._abs_w[i].reshape(-1)
        e = torch.empty((len(self.candidates), aw.numel()), dtype=aw.dtype)
        for k, g in enumerate(self.grids[i]):
            torch.sub(g.values().reshape(-1).abs_(), aw, out=e[k])
        e = e.float()
        out = (e.abs(), e.neg_().clamp_(min=0.0))
        if self._cache is not None:
            self._cache[i] = out
        return out

    def error(self, i: int, k: int) -> Tensor:
        """Signed error ``|q| - |w|`` of layer ``i`` at candidate ``k`` (float64, exact)."""
        g = self.grids[i][k]
        return g.values().double().abs() - self._abs_w[i].double()

    def terms(self, lin: Linearization, exact: bool = False) -> np.ndarray:
        """``T[l, k]`` in units of ``2**lin.exp``: ``T = <h_delta, |e|> - <h_lo, e^->`` with
        ``e^- = max(-e, 0)``.
        ``exact``: float64 throughout; otherwise float32 products (relative accuracy
        about ``PREDICTION_TOLERANCE``; decisions are confirmed by exact passes)."""
        t = np.zeros((len(self.layers), len(self.candidates)))
        for i, name in enumerate(self.layers):
            hd = lin.h_delta[name].reshape(-1)
            hl = lin.h_lo[name].reshape(-1)
            scale = float(hd.abs().max())
            if not math.isfinite(scale):
                raise ArithmeticError(f"non-finite bound derivative for layer '{name}'")
            if scale == 0.0:
                continue
            lo_used = bool(hl.any())
            if exact:
                for k in range(len(self.candidates)):
                    e = self.error(i, k).reshape(-1)
                    v = torch.dot(hd, e.abs())
                    if lo_used:
                        v = v - torch.dot(hl, (e.abs() - e) * 0.5)
                    t[i, k] = float(v)
                continue
            ae, en = self._errors(i)
            v32 = torch.mv(ae, (hd / scale).float())
            if lo_used:
                v32 = v32 - torch.mv(en, (hl / scale).float())
            t[i] = v32.double().numpy() * scale
        return t

    def linearize(self, choice: Choice | None) -> Linearization:
        """Linearization at ``choice`` (None: the float model, weights unquantized)."""
        if choice is None and not self.bias_values:
            return self.ev.at_float()
        values = self.bias_values if choice is None else self.values(choice)
        return self.ev.at(values, self.reference, self.offset)

    # ------------------------------------------------------------------ certified units
    def slack(self) -> tuple[float, float]:
        rel, abs_ = self.ev.slack_rel, self.ev.slack_abs
        if self.reference is not None:  # the engine's triangle method
            return 2 * rel + rel * rel, 2 * abs_
        return rel, abs_

    def certified(self, value: float, exp: int) -> float:
        """Certified bound for a computed path-metric ``value * 2**exp``, with the same
        float operations as :func:`certcompress.certify` (so the comparison with a
        budget agrees with the certificate's)."""
        rel, abs_ = self.slack()
        return self.domain.factor * (math.ldexp(value, exp) * (1.0 + rel) + abs_)

    def feasible(self, value: float, exp: int, budget: float) -> bool:
        return self.certified(value, exp) <= budget

    def threshold(self, budget: float, exp: int) -> float:
        """The computed value (units ``2**exp``) whose certified bound is the budget, for
        predictions (decisions are confirmed with :meth:`feasible`)."""
        rel, abs_ = self.slack()
        return math.ldexp((budget / self.domain.factor - abs_) / (1.0 + rel), -exp)

    # ------------------------------------------------------------------ biases
    def _sign_agreeing(self) -> tuple[dict[str, AffineParams] | None, float]:
        """With quantized biases a folded bias ``a*b + c`` can change sign; the engine
        then goes through the sign-agreeing parameters (original with those biases
        zeroed). Returns them and the exact path-metric to them (None, 0 if no flip)."""
        if not self.bias_values:
            return None, 0.0
        g, q = self.ev.g.params, self.ev.graph(self.bias_values).params
        ref: dict[str, AffineParams] = {}
        flips = 0
        for node, pa in g.items():
            pb = q[node]
            if pa.bias is None or pb.bias is None:
                ref[node] = pa
                continue
            bad = opposite_signs(pa.bias, pb.bias)
            flips += int(bad.sum())
            ref[node] = AffineParams(pa.weight, torch.where(bad, torch.zeros_like(pa.bias),
                                                            pa.bias))
        if not flips:
            return None, 0.0
        from ...bounds import graph_path_metric

        pm = graph_path_metric(self.ev.g, self.ev.g.with_params(ref))
        self.ev.counts["difference"] += 1
        return ref, pm.computed

