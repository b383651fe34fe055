"""Core benchmark (issue 2): time of path_norm and of certify (a 50% magnitude
pruning, no adversarial search) as ratios to one float64 forward pass of the same
model at batch 1, for torchvision resnet18 and resnet50 at 224x224, measured in one run.

Targets: path_norm <= 1.5x, certify <= 3x. Run: ``.venv/bin/python benchmarks/bench_core.py``.

Tracing the pair (issue 14): ``two_traces_and_digests`` is what certify did before
``trace_pair`` (two full traces, each with its trace check, then two SHA-256 digests);
``trace_pair`` captures the original once, rebinds its graph to the pruned copy (same
module tree), checks both and hashes both in a worker thread meanwhile. Both are
measured in the same run, as ratios to the same forward pass.
"""

from __future__ import annotations

import argparse
import copy

import torch
import torchvision
from _common import best_time, write_results  # type: ignore[import-not-found]

import certcompress as cc
from certcompress.capture.pair import trace_pair
from certcompress.demo.digits import magnitude_prune_copy
from certcompress.digest import parameter_digest


def bench(name: str, size: int, repeat: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    pruned = magnitude_prune_copy(model, 0.5)
    m64 = copy.deepcopy(model).double()
    x = torch.randn(1, 3, size, size, dtype=torch.float64)
    shape = (1, 3, size, size)

    def forward() -> None:
        with torch.no_grad():
            m64(x)

    t_fwd = best_time(forward, repeat)
    t_trace = best_time(lambda: cc.trace(model, shape), repeat)
    t_pn = best_time(lambda: cc.path_norm(model, shape), repeat)
    g, g2 = cc.trace(model, shape), cc.trace(pruned, shape)
    # the difference pass alone: three float64 convolutions per layer (lo, and the two
    # terms of d' = A_lo(d) + A_dW(a + d)) against the forward pass's one
    t_pm_graphs = best_time(lambda: cc.path_metric(g, g2), repeat)
    def two_traces_and_digests() -> None:
        cc.trace(model, shape), cc.trace(pruned, shape)
        parameter_digest(model), parameter_digest(pruned)

    def pair() -> None:
        trace_pair(model, pruned, shape).digests()

    t_two = best_time(two_traces_and_digests, repeat)
    t_pair = best_time(pair, repeat)
    reused = trace_pair(model, pruned, shape).reused
    t_cert = best_time(lambda: cc.certify(model, pruned, shape, 2.64, search_steps=0), repeat)
    cert = cc.certify(model, pruned, shape, 2.64, search_steps=0)
    row = {"forward_f64_s": t_fwd, "trace_s": t_trace, "path_norm_s": t_pn,
           "certify_s": t_cert, "path_norm_ratio": t_pn / t_fwd,
           "certify_ratio": t_cert / t_fwd, "trace_ratio": t_trace / t_fwd,
           "path_metric_on_graphs_ratio": t_pm_graphs / t_fwd,
           "path_norm": cc.path_norm(model, shape), "certified_bound": cert.bound,
           "path_metric_exact": cert.path_metric_exact,
           "two_traces_and_digests_ratio": t_two / t_fwd, "trace_pair_ratio": t_pair / t_fwd,
           "trace_pair_reused": reused,
           "path_metric_tier_forward_equivalents": cert.by_method["path-metric"].seconds / t_fwd}
    print(f"{name:9s} {size}x{size}: forward(f64) {t_fwd * 1e3:7.1f} ms | trace "
          f"{row['trace_ratio']:.2f}x | path_norm {row['path_norm_ratio']:.2f}x (target <= 1.5) "
          f"| certify {row['certify_ratio']:.2f}x (target <= 3; of which path-metric on traced "
          f"graphs {row['path_metric_on_graphs_ratio']:.2f}x) | path-norm "
          f"{row['path_norm']:.3e}, bound {cert.bound:.3e}")
    print(f"{'':9s} tracing the pair: two traces + digests {row['two_traces_and_digests_ratio']:.2f}x"
          f" -> trace_pair {row['trace_pair_ratio']:.2f}x (capture reused: {reused}); "
          f"path-metric tier {row['path_metric_tier_forward_equivalents']:.2f}x")
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    a = p.parse_args()
    rows = {m: bench(m, a.size, a.repeat) for m in a.models}
    path = write_results("core", {"size": a.size, "results": rows})
    print(f"results written to {path}")


if __name__ == "__main__":
    main()
