"""Trace once, then evaluate quantized variants by swapping parameters.

The model is traced with BatchNorm *unfolded* (``gu``); any module-space parameter
values (quantized weights, rescaled BatchNorm) are written into ``gu`` and folded with
the core's own :func:`~certcompress.ir.passes.fold_batchnorm`, which yields exactly the
parameters tracing the modified model would give (same code, same float64 products).
Path-metrics come from the core engine (:func:`graph_path_metric`).

For allocation the engine also differentiates the path-metric. Let ``F(P)`` be the
path-norm of non-negative parameters ``P``. Every path crosses a graph node at most
once, so ``F`` is affine in each node's parameter block when the others are fixed.
The min/max bound ``B(lo, delta) = F(lo + delta) - F(lo)`` is therefore affine in each
layer's ``(lo_l, delta_l)``: one difference pass and its backward pass give ``B`` and
the *exact* bound after changing any single layer,
``B' = B + <dB/dlo_l, lo'_l - lo_l> + <dB/ddelta_l, delta'_l - delta_l>``.
At the float model (``delta = 0``) this is the path-norm gradient, and the bound of
quantizing one layer alone is ``<dF/d|theta_l|, | |q_l| - |theta_l| |>``.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor, nn

from ...bounds import DifferencePass, MagnitudePass, PathMetric, graph_path_metric
from ...bounds.passes import graph_float_slack
from ...capture import trace as capture_trace
from ...ir.graph import Graph
from ...ir.ops import AffineOp, AffineParams, ChannelAffineOp
from ...ir.passes import fold_batchnorm
from ...resolve import resolve_domain
from .quantizers import affine_layers, param_name, weight_of

__all__ = ["Domain", "quant_domain", "Evaluator", "Linearization"]

K = TypeVar("K")


@dataclass(frozen=True)
class Domain:
    """Input shape (batch first) and radius ``r`` of ``||x||_inf <= r``."""

    input_shape: tuple[int, ...]
    radius: float

    @property
    def factor(self) -> float:
        return max(self.radius, 1.0)


def quant_domain(model: nn.Module, input_shape: Sequence[int] | None,
                 input_radius: float | None) -> Domain:
    """The certified ball (:func:`certcompress.resolve.resolve_domain`: a missing shape or
    radius comes from an installed plugin's input spec) as the engine's shape and radius."""
    dom = resolve_domain(model, input_shape, input_radius)
    return Domain(dom.shape, dom.radius)


@dataclass(frozen=True)
class Linearization:
    """The min/max bound at one configuration and its exact single-layer derivatives.

    ``value`` is ``B`` in units of ``2**exp``; ``h_lo[l]`` and ``h_delta[l]`` are
    ``dB/dlo`` and ``dB/ddelta`` of layer ``l`` mapped to the module weight's layout (same
    units), so a candidate with signed error ``e = |q| - |w|`` (module space) has
    ``T = <h_lo, min(e, 0)> + <h_delta, |e|>`` and changing layer ``l`` alone from
    ``T_old`` to ``T_new`` gives ``B + T_new - T_old`` exactly.
    """

    value: float
    exp: int
    h_lo: Mapping[str, Tensor]
    h_delta: Mapping[str, Tensor]


class Evaluator:
    """One traced model; path-metrics of module-space parameter variants."""

    def __init__(self, model: nn.Module, domain: Domain, layers: Iterable[str] | None = None
                 ) -> None:
        self.model = model
        self.domain = domain
        self.counts: collections.Counter[str] = collections.Counter()
        self.gu = capture_trace(model, domain.input_shape, fold_bn=False)
        self.counts["trace"] += 1
        self.g = fold_batchnorm(self.gu)
        known = affine_layers(model)
        self.layers = list(known) if layers is None else list(layers)
        self.nodes_of: dict[str, list[str]] = {name: [] for name in self.layers}
        self._param_node: dict[str, tuple[str, int]] = {}
        for n in self.gu.nodes:
            if not isinstance(n.op, AffineOp) or isinstance(n.op, ChannelAffineOp):
                continue
            if n.name not in self.gu.params or not n.param_names:
                continue
            self._param_node[n.param_names[0]] = (n.name, 0)
            if len(n.param_names) > 1 and self.gu.params[n.name].bias is not None:
                self._param_node[n.param_names[1]] = (n.name, 1)
            for name in self.layers:
                if n.param_names[0] == param_name(name, "weight"):
                    self.nodes_of[name].append(n.name)
        self.slack_rel, self.slack_abs = graph_float_slack(self.g, difference=True)
        self._multipliers: dict[str, Tensor] | None = None

    # ------------------------------------------------------------------ graphs
    def node_params(self, values: Mapping[str, Tensor]) -> dict[str, AffineParams]:
        """``gu`` parameters with the module-space tensors ``values`` (by qualified
        parameter name) written in, as float64."""
        params = dict(self.gu.params)
        for pname, t in values.items():
            where = self._param_node.get(pname)
            if where is None:
                continue  # a parameter no traced node reads: it cannot change the function
            node, slot = where
            p = params[node]
            t64 = t.detach().to(torch.float64)
            params[node] = AffineParams(t64, p.bias) if slot == 0 else AffineParams(p.weight, t64)
        return params

    def graph(self, values: Mapping[str, Tensor],
              overrides: Mapping[str, AffineParams] | None = None) -> Graph:
        """The folded graph of the model with ``values`` (and raw ``gu`` node overrides)."""
        params = self.node_params(values)
        if overrides:
            params.update(overrides)
        return fold_batchnorm(self.gu.with_params(params))

    def path_metric(self, values: Mapping[str, Tensor], *, original: Graph | None = None,
                    overrides: Mapping[str, AffineParams] | None = None) -> PathMetric:
        """The core engine's path-metric between ``original`` (default: the model) and
        the model with ``values``."""
        self.counts["difference"] += 1
        return graph_path_metric(original if original is not None else self.g,
                                 self.graph(values, overrides))

    def certified(self, pm: PathMetric) -> float:
        return self.domain.factor * pm.value

    # ------------------------------------------------------------------ folding
    def multipliers(self) -> dict[str, Tensor]:
        """``|a|`` per node in the weight layout: folded weight = module weight x ``a``
        (BatchNorm scales; ones without BatchNorm), from one probe fold."""
        if self._multipliers is None:
            probe = {}
            for nodes in self.nodes_of.values():
                for node in nodes:
                    p = self.gu.params[node]
                    probe[node] = AffineParams(torch.ones_like(p.weight),
                                               None if p.bias is None else torch.zeros_like(p.bias))
            params = dict(self.gu.params)
            params.update(probe)
            folded = fold_batchnorm(self.gu.with_params(params)).params
            self._multipliers = {node: folded[node].weight.abs() for node in probe}
        return self._multipliers

    # ------------------------------------------------------------------ gradients
    def _layer_grads(self, grads: Mapping[str, Tensor | None]) -> dict[str, Tensor]:
        mult = self.multipliers()
        out: dict[str, Tensor] = {}
        for name, nodes in self.nodes_of.items():
            acc: Tensor | None = None
            for node in nodes:
                gr = grads.get(node)
                if gr is None:
                    gr = torch.zeros_like(self.g.params[node].weight)
                term = gr * mult[node]
                acc = term if acc is None else acc + term
            if acc is None:
                acc = torch.zeros(tuple(self._weight(name).shape), dtype=torch.float64)
            out[name] = acc
        return out

    def _weight(self, layer: str) -> Tensor:
        return weight_of(affine_layers(self.model)[layer])

    def at_float(self) -> Linearization:
        """Linearization at the float model (one magnitude pass and its backward)."""
        self.counts["magnitude"] += 1
        self.counts["magnitude_backward"] += 1
        leaves: dict[str, Tensor] = {}
        params: dict[str, AffineParams] = {}
        for node, p in self.g.params.items():
            w = p.weight.abs()
            if any(node in ns for ns in self.nodes_of.values()):
                w = w.clone().requires_grad_(True)
                leaves[node] = w
            params[node] = AffineParams(w, None if p.bias is None else p.bias.abs())
        outs = MagnitudePass(self.g, params).run()
        e = max(s.exp for s in outs)
        total = sum(s.t.sum() * 2.0 ** (s.exp - e) for s in outs)
        grads = _grad(total, leaves)
        h = self._layer_grads(grads)
        zero = {k: torch.zeros_like(v) for k, v in h.items()}
        return Linearization(0.0, e, zero, h)

    def at(self, values: Mapping[str, Tensor], reference: Mapping[str, AffineParams] | None = None,
           offset: float = 0.0) -> Linearization:
        """Linearization at the model with ``values`` (one difference pass and its
        backward). ``reference`` replaces the original folded parameters (sign-agreeing
        parameters when some folded biases flip; ``offset`` is then the exact
        path-metric from the original to it, in absolute units)."""
        self.counts["difference"] += 1
        self.counts["difference_backward"] += 1
        ref = reference if reference is not None else self.g.params
        q = self.graph(values).params
        lo: dict[str, AffineParams] = {}
        delta: dict[str, AffineParams] = {}
        lo_leaves: dict[str, Tensor] = {}
        d_leaves: dict[str, Tensor] = {}
        tracked = {n for ns in self.nodes_of.values() for n in ns}
        for node, pa in ref.items():
            pb = q[node]
            wa, wb = pa.weight.abs(), pb.weight.abs()
            wl = torch.minimum(wa, wb)
            wd = torch.maximum(wa, wb) - wl
            bl = bd = None
            if pa.bias is not None and pb.bias is not None:
                ba, bb = pa.bias.abs(), pb.bias.abs()
                bl = torch.minimum(ba, bb)
                bd = torch.maximum(ba, bb) - bl
            if node in tracked:
                wl = wl.clone().requires_grad_(True)
                if wd.numel() and not bool(wd.any()):
                    # The pass skips a node whose delta is all zero, which would leave no
                    # derivative; a subnormal entry makes it run (its effect is < 1e-300
                    # and only ever raises the bound).
                    wd = wd.clone()
                    wd.view(-1)[0] = 5e-324
                wd = wd.clone().requires_grad_(True)
                lo_leaves[node], d_leaves[node] = wl, wd
            lo[node] = AffineParams(wl, bl)
            delta[node] = AffineParams(wd, bd)
        outs = DifferencePass(self.g, lo, delta).run()
        e = max(d.exp for _, d in outs)
        total = sum(d.t.sum() * 2.0 ** (d.exp - e) for _, d in outs)
        value = math.fsum(float(x) * 2.0 ** (d.exp - e) for _, d in outs
                          for x in d.t.detach().reshape(-1).tolist())
        value += math.ldexp(offset, -e)
        both = _grad(total, {**{("lo", k): v for k, v in lo_leaves.items()},
                             **{("d", k): v for k, v in d_leaves.items()}})
        g_lo = {k: both[("lo", k)] for k in lo_leaves}
        g_d = {k: both[("d", k)] for k in d_leaves}
        return Linearization(value, e, self._layer_grads(g_lo), self._layer_grads(g_d))


def _grad(total: Tensor | float, leaves: Mapping[K, Tensor]) -> dict[K, Tensor | None]:
    """Gradients of ``total`` with respect to every leaf, in one backward pass."""
    if not leaves:
        return {}
    names = list(leaves)
    if not isinstance(total, Tensor) or not total.requires_grad:
        return dict.fromkeys(names)
    grads = torch.autograd.grad(total, [leaves[n] for n in names], allow_unused=True)
    return dict(zip(names, grads))

