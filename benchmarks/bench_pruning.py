"""Pruning benchmark (issue 3), measured in one run:

1. path-magnitude scoring time as a ratio to one float64 forward pass (batch 1) of
   torchvision resnet18 at 224x224 (weights=None): the engine's scores on the traced
   graph (one magnitude forward and one backward pass; target <= 4x) and the public call
   ``cc.path_magnitude_scores(model, shape)``, which also traces the model;
2. the forward passes the budget search spends, against the target
   ``2 * log2(number of weights) + 2``.

Run: ``.venv/bin/python benchmarks/bench_pruning.py`` (writes results/pruning.json).
"""

from __future__ import annotations

import argparse
import copy
import math
import time

import torch
import torchvision
from _common import best_time, write_results  # type: ignore[import-not-found]

import certcompress as cc
from certcompress.bounds.pathnorm import path_magnitude_scores
from certcompress.compress.pruning import search_sparsity


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--budget-fraction", type=float, default=0.01,
                   help="budget as a fraction of the bound of pruning every weight")
    a = p.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    shape = (1, 3, a.size, a.size)
    radius = 2.64  # ImageNet normalization of pixels in [0, 1]
    m64 = copy.deepcopy(model).double()
    x = torch.randn(shape, dtype=torch.float64)

    def forward() -> None:
        with torch.no_grad():
            m64(x)

    graph = cc.trace(model, shape)
    t_fwd = best_time(forward, a.repeat)
    t_scores = best_time(lambda: path_magnitude_scores(graph), a.repeat)
    t_api = best_time(lambda: cc.path_magnitude_scores(model, shape), a.repeat)
    n_weights = sum(m.weight.numel() for m in model.modules()
                    if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    budget = a.budget_fraction * radius * cc.path_norm(graph)
    t0 = time.perf_counter()
    res = search_sparsity(model, budget, "path-magnitude", shape, radius)
    t_search = time.perf_counter() - t0
    target_passes = 2 * math.log2(n_weights) + 2
    row = {
        "forward_f64_s": t_fwd, "scores_s": t_scores, "scores_with_trace_s": t_api,
        "scores_ratio": t_scores / t_fwd, "scores_with_trace_ratio": t_api / t_fwd,
        "scores_target_ratio": 4.0, "weights": n_weights, "budget": budget,
        "search_forward_passes": res.forward_passes,
        "search_backward_passes": res.backward_passes,
        "search_certified_steps": len(res.steps), "search_target_passes": target_passes,
        "search_s": t_search, "search_sparsity": res.sparsity, "search_bound": res.bound,
        "search_next_bound": res.next_bound,
    }
    print(f"resnet18 {a.size}x{a.size}: forward(f64) {t_fwd * 1e3:.1f} ms | path-magnitude "
          f"scores {row['scores_ratio']:.2f}x (target <= 4; with tracing "
          f"{row['scores_with_trace_ratio']:.2f}x)")
    print(f"budget search ({a.budget_fraction:g} x r x path-norm = {budget:.4g}): sparsity "
          f"{res.sparsity:.4%} certified {res.bound:.7g}, next step {res.next_bound:.7g}; "
          f"{res.forward_passes} forward + {res.backward_passes} backward passes "
          f"(target <= {target_passes:.1f} for {n_weights:,} weights) in {t_search:.1f} s")
    path = write_results("pruning", {"size": a.size, "model": "resnet18", "results": row})
    print(f"results written to {path}")


if __name__ == "__main__":
    main()
