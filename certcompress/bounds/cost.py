"""What each tier will cost at this size, before running it.

Certifying a deep network at a large input size can take minutes or more than the machine
has, and the expensive part is predictable from the graph alone. :func:`estimate_costs`
lowers the pair, counts the work of each tier in *forward-equivalents* (multiply-adds of
one forward pass of the original network) and estimates the memory it holds, then turns
forward-equivalents into seconds with a timed float64 forward pass. The estimates are
upper estimates where the work depends on the data:

``path-metric``
    a fixed handful of passes over the parameters (typically 5-15 forward passes).
``bounds`` with ``propagation="interval"``
    interval bounds on ``z``, ``z'`` and ``z - z'`` and their magnitudes at every node
    (about ten forward passes), plus the back-substitution of the output forms.
``bounds`` with ``propagation="crown"`` (the default), and one ``local`` certificate
    the same, plus one back-substitution row per bound of every *unstable* neuron of every
    ReLU input: up to ``6 n_i`` rows at a node of ``n_i`` neurons (three quantities, two
    sides), each costing about three passes through the nodes before it. The count
    assumes every neuron is unstable (the worst case); stable neurons cost nothing, so the
    real cost is often much lower. A node with more rows than ``max_rows`` keeps its
    interval bounds and costs nothing more.

Seconds come from timing the graph's float64 forward pass at batch one and at a batch of
32 (back-substitution rows are processed in chunks, so a row costs about one batched
pass). These are estimates, not bounds: small networks are dominated by per-call
overheads, and how many neurons are unstable depends on the domain.

Memory: the bounds of every node (six tensors), the ReLU relaxations, and for
back-substitution a working set of a few chunks of ``chunk_elements`` coefficients.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from .._io import JsonRecord
from ..ir.graph import ForwardInterpreter, Graph
from .propagation.engine import PropagationOptions
from .propagation.lowering import lower_pair
from .propagation.primitives import PAffine, PairNet, PReLU, numel
from .propagation.signs import resolve_sign_rows

__all__ = ["TierCost", "CostEstimate", "estimate_costs", "pair_costs"]

PATH_METRIC_PASSES = 15.0  # measured 5-15 forward-equivalents on the project's models
_INTERVAL_PASSES = 10.0  # z, c, d lower and upper, magnitudes of both networks
_ROW_PASSES = 3.0  # a row through an affine node: W^T on z, (W - W')^T and W'^T on d
_WORKING_CHUNKS = 6  # chunks of coefficients alive during back-substitution
_BYTES = 8  # float64


@dataclass(frozen=True)
class TierCost:
    """One tier's estimated cost: forward-equivalents (upper estimate), seconds (from a
    timed forward pass; None without one) and bytes of memory."""

    tier: str
    forward_equivalents: float
    seconds: float | None
    memory_bytes: int
    note: str
    seconds_at_least: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"tier": self.tier, "forward_equivalents": self.forward_equivalents,
                "seconds": self.seconds, "seconds_at_least": self.seconds_at_least,
                "memory_bytes": self.memory_bytes, "note": self.note}


@dataclass(frozen=True)
class CostEstimate(JsonRecord):
    """The cost of every tier for one model at one input shape."""

    model_name: str
    input_shape: tuple[int, ...]
    forward_seconds: float | None
    neurons: int
    tiers: tuple[TierCost, ...]

    def tier(self, name: str) -> TierCost:
        for t in self.tiers:
            if t.tier == name:
                return t
        raise KeyError(f"no tier '{name}' in the estimate; tiers: "
                       f"{', '.join(t.tier for t in self.tiers)}")

    def slow(self, seconds: float) -> tuple[TierCost, ...]:
        """The tiers estimated to take longer than ``seconds``."""
        return tuple(t for t in self.tiers if t.seconds is not None and t.seconds > seconds)

    def to_dict(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "input_shape": list(self.input_shape),
                "forward_seconds": self.forward_seconds, "neurons": self.neurons,
                "tiers": [t.to_dict() for t in self.tiers]}

    def summary(self) -> str:
        fwd = ("" if self.forward_seconds is None
               else f", one float64 forward pass {_duration(self.forward_seconds)}")
        lines = [f"expected cost for {self.model_name} at input shape {self.input_shape} "
                 f"({self.neurons:,} ReLU neurons{fwd}):"]
        for t in self.tiers:
            if t.seconds is None:
                secs = ""
            elif t.seconds_at_least is not None:
                secs = f", {_duration(t.seconds_at_least)} to {_duration(t.seconds)}"
            else:
                secs = f", ~{_duration(t.seconds)}"
            lines.append(f"  {t.tier:<18} ~{t.forward_equivalents:.3g} forward passes{secs}, "
                         f"~{_size(t.memory_bytes)}  ({t.note})")
        return "\n".join(lines)


def _duration(s: float) -> str:
    if s < 1:
        return f"{s * 1e3:.3g} ms"
    if s < 120:
        return f"{s:.3g} s"
    if s < 7200:
        return f"{s / 60:.3g} min"
    return f"{s / 3600:.3g} h"


def _size(b: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if b < 1024 or unit == "GB":
            return f"{b:.3g} {unit}"
        b /= 1024
    return f"{b:.3g} TB"  # pragma: no cover


def _node_work(pair: PairNet) -> list[float]:
    """Multiply-adds of each node in one pass: an affine node does one multiply-add per
    weight entry per output position (for a transposed convolution, per input position),
    every other node one operation per output."""
    work = []
    for node in pair.nodes:
        if isinstance(node, PAffine):
            per_row = node.weight_shape.numel() / max(int(node.weight_shape[0]), 1)
            transposed = bool(getattr(node.op, "transposed", False))
            positions = numel(node.in_shape) if transposed else node.numel
            work.append(float(positions) * max(per_row, 1.0))
        else:
            work.append(float(node.numel))
    return work


def pair_costs(pair: PairNet, options: PropagationOptions | None = None
               ) -> dict[str, float]:
    """The work of the bounds tier on ``pair``: ``passes`` (whole-network passes at batch
    one: the interval bounds), ``output_rows`` and ``crown_rows`` (back-substitution rows
    of the final forms and, in the worst case of every neuron unstable, of the ReLU
    inputs), and ``output_row_passes`` / ``crown_row_passes``: those rows weighted by the
    fraction of the network each one crosses, times the passes per row."""
    opts = options or PropagationOptions()
    work = _node_work(pair)
    total = max(sum(work), 1.0)
    prefix = [0.0] * len(work)
    running = 0.0
    for i, w in enumerate(work):  # nodes are in topological order
        running += w
        prefix[i] = running
    m = sum(pair.nodes[j].numel for j in pair.outputs)
    sign = 0
    if 0 < m <= opts.sign_vectors_up_to:  # every sign vector, or the tier's row budget
        budget = resolve_sign_rows(opts.sign_rows, sum(n.numel for n in pair.nodes), m)
        sign = 2 ** m if budget is None else min(2 ** m, budget)
    out_rows = 2 * m + sign
    rows, weighted = 0, 0.0
    for i in pair.pre_activations():
        n_rows = 6 * pair.nodes[i].numel
        if n_rows > opts.max_rows:
            continue  # kept at interval bounds
        rows += n_rows
        weighted += n_rows * _ROW_PASSES * prefix[i] / total
    return {"passes": _INTERVAL_PASSES, "output_rows": float(out_rows),
            "output_row_passes": out_rows * _ROW_PASSES, "crown_rows": float(rows),
            "crown_row_passes": weighted}


def _memory(pair: PairNet, options: PropagationOptions, crown: bool) -> int:
    per_node = sum(n.numel for n in pair.nodes)
    relu = sum(n.numel for n in pair.nodes if isinstance(n, PReLU))
    held = _BYTES * (6 * per_node + 4 * relu)
    if crown:
        held += _BYTES * _WORKING_CHUNKS * options.chunk_elements
    return int(held)


def _forward_seconds(graph: Graph, batch: int = 1) -> float:
    """Median time of one float64 pass of the graph at ``batch`` inputs."""
    x = torch.rand((batch, *graph.input_shape[1:]), dtype=torch.float64)
    run = ForwardInterpreter(graph)
    with torch.no_grad():
        run.run(x)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            run.run(x)
            times.append(time.perf_counter() - t0)
    return sorted(times)[1]


def estimate_costs(graph: Graph, other: Graph | None = None, *,
                   options: PropagationOptions | None = None, time_it: bool = True
                   ) -> CostEstimate:
    """The estimated cost of each tier for ``graph`` and its compressed ``other`` (the
    same graph when not given: the cost depends on the structure, not the values).

    With ``time_it`` (default) forward-equivalents become seconds by timing the graph's
    float64 forward pass at batch 1 (whole passes) and at a batch of 32 (a
    back-substitution row costs about a batched pass per row, since rows are processed in
    chunks). The CROWN estimate is a range: from the interval pass alone (every neuron
    stable) to every neuron unstable."""
    opts = options or PropagationOptions()
    pair = lower_pair(graph, other if other is not None else graph)
    c = pair_costs(pair, opts)
    t1 = _forward_seconds(graph) if time_it else None
    per_row = _forward_seconds(graph, 32) / 32 if time_it else None
    neurons = sum(n.numel for n in pair.nodes if isinstance(n, PReLU))
    skipped = sum(1 for i in pair.pre_activations() if 6 * pair.nodes[i].numel > opts.max_rows)

    def secs(passes: float, row_passes: float) -> float | None:
        return None if t1 is None or per_row is None else passes * t1 + row_passes * per_row

    interval_fe = c["passes"] + c["output_row_passes"]
    crown_fe = interval_fe + c["crown_row_passes"]
    interval_s = secs(c["passes"], c["output_row_passes"])
    crown_s = secs(c["passes"], c["output_row_passes"] + c["crown_row_passes"])
    crown_note = (f"up to {int(c['crown_rows']):,} rows if every neuron is unstable"
                  + (f"; {skipped} wide node(s) over max_rows={opts.max_rows:,} keep "
                     "interval bounds" if skipped else ""))
    params = sum(p.numel() for p in graph.params.values())
    tiers = (
        TierCost("path-metric", PATH_METRIC_PASSES, secs(PATH_METRIC_PASSES, 0.0),
                 _BYTES * 4 * params, "parameters only; worst case over a ball, usually loose"),
        TierCost("bounds (interval)", interval_fe, interval_s, _memory(pair, opts, crown=False),
                 f"propagation='interval'; {int(c['output_rows']):,} output rows"),
        TierCost("bounds (crown)", crown_fe, crown_s, _memory(pair, opts, True), crown_note,
                 seconds_at_least=interval_s),
        TierCost("local, per point", crown_fe, crown_s, _memory(pair, opts, True),
                 "CROWN over one small ball: usually few unstable neurons",
                 seconds_at_least=interval_s),
    )
    if not all(math.isfinite(t.forward_equivalents) for t in tiers):  # pragma: no cover
        raise ValueError("non-finite cost estimate")
    return CostEstimate(graph.model_name, tuple(graph.input_shape), t1, neurons, tiers)
