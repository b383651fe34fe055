"""Quantization benchmark (issue 4): cost of ``choose_bitwidths`` for torchvision
resnet18 (``weights=None``, 224x224, 6 candidate widths) in forward-pass equivalents, and
the weight bits it saves against uniform 8-bit at the same certified bound.

Forward-pass equivalents (FPE): time of the whole call (tracing, sensitivities,
allocation, exact certification and repair, and the final ``certify`` of the quantized
model) divided by one float64 forward pass of the model at batch 1, both measured in
this run (best of several forward passes, before and after; CPU time and wall time).
Exhaustive per-layer search would need one certification per layer and width
(21 x 6 = 126 for resnet18).

Exhaustive per-layer search is also timed in this run's units: one certification of a
single-layer quantization on the already traced graph (one core-engine path-metric,
``Evaluator.path_metric``, best of 2) times layers x widths, reported as
``exhaustive_fpe`` next to the allocator's FPE.

Two runs:

* ``savings``: budget = the certified bound of onnxruntime's default int8 weights
  (uniform 8-bit per-channel), candidates 4 5 6 7 8 16: bits saved at that bound.
* ``cost``: budget = the certified bound of uniform 6-bit, candidates 2 3 4 5 6 8.

Run: ``.venv/bin/python benchmarks/bench_quantization.py`` (``--size 112`` for a quick run).
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from collections.abc import Callable
from typing import Any

import torch
import torchvision
from _common import write_results  # type: ignore[import-not-found]

from certcompress.compress.quantization import QuantConfig, choose_bitwidths, quantize
from certcompress.compress.quantization._engine import Domain, Evaluator
from certcompress.compress.quantization.grid import quantization_grid


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def _forward_time(model: torch.nn.Module, shape: tuple[int, ...], repeat: int) -> tuple[float, float]:
    m64 = copy.deepcopy(model).double()
    x = torch.randn(shape, dtype=torch.float64)
    with torch.no_grad():
        m64(x)
        walls, cpus = [], []
        for _ in range(repeat):
            _, w, c = _timed(lambda: m64(x))
            walls.append(w)
            cpus.append(c)
    return min(walls), min(cpus)


def _single_certification(model: torch.nn.Module, shape: tuple[int, ...], radius: float
                          ) -> tuple[float, float]:
    """Best (wall, cpu) of one path-metric on the traced graph for one layer quantized:
    the unit of an exhaustive per-layer search (which would need layers x widths)."""
    ev = Evaluator(model, Domain(shape, radius))
    layer = ev.layers[len(ev.layers) // 2]
    grid = quantization_grid(model, QuantConfig.from_bits({layer: 4}))
    walls, cpus = [], []
    for _ in range(2):
        _, w, c = _timed(lambda: ev.path_metric(grid.values()))
        walls.append(w)
        cpus.append(c)
    return min(walls), min(cpus)


def _run(model: torch.nn.Module, shape: tuple[int, ...], radius: float, budget: float,
         candidates: tuple[int, ...], fwd: tuple[float, float]) -> dict[str, Any]:
    al, wall, cpu = _timed(lambda: choose_bitwidths(
        model, budget, candidates=candidates, input_shape=shape, input_radius=radius))
    row = {"candidates": list(candidates), "budget": budget, "certified_bound": al.bound,
           "within_budget": al.bound <= budget, "total_bits": al.total_bits,
           "uniform8_bits": al.uniform8_bits, "average_bits": al.average_bits,
           "bits_saved_vs_uniform8": al.uniform8_bits - al.total_bits,
           "fraction_saved_vs_uniform8": 1 - al.total_bits / al.uniform8_bits,
           "bits": al.bits, "locally_minimal": al.locally_minimal,
           "exact_certifications": al.iterations, "passes": dict(al.passes),
           "method": al.method, "seconds_wall": wall, "seconds_cpu": cpu,
           "fpe_wall": wall / fwd[0], "fpe_cpu": cpu / fwd[1],
           "sensitivity_passes_exhaustive": len(al.bits) * len(candidates)}
    print(f"  candidates {list(candidates)}: {al.average_bits:.3f} bits/weight "
          f"({row['fraction_saved_vs_uniform8']:.1%} fewer bits than uniform 8), bound "
          f"{al.bound:.4g} <= {budget:.4g}; {al.iterations} exact certification(s), "
          f"{row['fpe_wall']:.1f} FPE wall / {row['fpe_cpu']:.1f} FPE cpu "
          f"(exhaustive per-layer search: {row['sensitivity_passes_exhaustive']} certifications)")
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeat", type=int, default=5)
    a = p.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    shape, radius = (1, 3, a.size, a.size), 2.64  # ImageNet normalization: |x| <= 2.64
    load = os.getloadavg()[0]
    f0 = _forward_time(model, shape, a.repeat)
    (_, c8), w8, _ = _timed(lambda: quantize(model, QuantConfig.uniform(model, 8), shape,
                                             radius, search_steps=0))
    _, c6 = quantize(model, QuantConfig.uniform(model, 6), shape, radius, search_steps=0)
    print(f"resnet18 {a.size}x{a.size}: uniform int8 per-channel certified bound {c8.bound:.4g} "
          f"(quantize+certify {w8:.2f} s); uniform 6-bit {c6.bound:.4g}")
    savings = _run(model, shape, radius, c8.bound, (4, 5, 6, 7, 8, 16), f0)
    cost = _run(model, shape, radius, c6.bound, (2, 3, 4, 5, 6, 8), f0)
    single = _single_certification(model, shape, radius)
    f1 = _forward_time(model, shape, a.repeat)
    fwd = (min(f0[0], f1[0]), min(f0[1], f1[1]))
    for row in (savings, cost):  # ratios against the best forward time of the run
        row["fpe_wall"] = row["seconds_wall"] / fwd[0]
        row["fpe_cpu"] = row["seconds_cpu"] / fwd[1]
        n = row["sensitivity_passes_exhaustive"]
        row["exhaustive_fpe_wall"] = n * single[0] / fwd[0]
        row["exhaustive_fpe_cpu"] = n * single[1] / fwd[1]
        row["speedup_vs_exhaustive_cpu"] = row["exhaustive_fpe_cpu"] / row["fpe_cpu"]
        # the unit: one certification of a candidate (exhaustive needs n of them)
        row["certification_equivalents_wall"] = row["seconds_wall"] / single[0]
        row["certification_equivalents_cpu"] = row["seconds_cpu"] / single[1]
    print(f"one single-layer certification on the traced graph: {single[0] / fwd[0]:.1f} FPE "
          f"wall / {single[1] / fwd[1]:.1f} FPE cpu; exhaustive per-layer search "
          f"({savings['sensitivity_passes_exhaustive']} certifications): "
          f"{savings['exhaustive_fpe_cpu']:.0f} FPE cpu")
    for label, row in (("savings", savings), ("cost", cost)):
        print(f"{label} run in single-certification units: "
              f"{row['certification_equivalents_cpu']:.1f} cpu / "
              f"{row['certification_equivalents_wall']:.1f} wall (exhaustive: "
              f"{row['sensitivity_passes_exhaustive']})")
    print(f"forward float64 batch 1: {fwd[0] * 1e3:.0f} ms wall, {fwd[1] * 1e3:.0f} ms cpu; "
          f"FPE (final): savings run {savings['fpe_wall']:.1f} wall / {savings['fpe_cpu']:.1f} "
          f"cpu, cost run {cost['fpe_wall']:.1f} / {cost['fpe_cpu']:.1f}; load average "
          f"{load:.1f} -> {os.getloadavg()[0]:.1f}")
    path = write_results("quantization", {
        "model": "torchvision resnet18 (weights=None, seed 0)", "input_shape": list(shape),
        "radius": radius, "forward_f64_s_wall": fwd[0], "forward_f64_s_cpu": fwd[1],
        "single_certification_s_wall": single[0], "single_certification_s_cpu": single[1],
        "uniform8_bound": c8.bound, "uniform6_bound": c6.bound,
        "load_average_start": load, "load_average_end": os.getloadavg()[0],
        "savings_at_int8_bound": savings, "cost_at_uniform6_bound": cost})
    print(f"results written to {path}")


if __name__ == "__main__":
    main()
