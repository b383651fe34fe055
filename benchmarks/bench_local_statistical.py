"""Local and statistical certificates (issue 7, parts 3 and 4) on the digits CNN.

The CNN of ``certcompress.demo.digits`` (two 3x3 convolutions with BatchNorm and a residual add,
max-pooling, linear head) is trained on scikit-learn's digits (inputs in [0, 1]) and
magnitude-pruned (``--sparsity``, default 50%). Reported, all measured in this run:

* local: the fraction of test points whose top-1 decision is certified unchanged on the
  l_inf ball of radius ``--eps`` (default 0.02) inside [0, 1]^64, the certified l1
  deviation on the balls next to what gradient ascent (PGD) finds inside the first
  ``--attack`` balls, and the cost per point in forward-pass equivalents (FPE: the
  call's time over one float64 forward pass of the original at batch 1; CPU time and
  wall time, since the machine may be shared);
* statistical: the certificate on the held-out test split (threshold ``--threshold``,
  confidence 95%, labels included).

Run: ``.venv/bin/python benchmarks/bench_local_statistical.py`` (``--points 450`` for
the whole test split; the default is the first 100 test points).
"""

from __future__ import annotations

import argparse
import copy
import time
from typing import Any

import numpy as np
import torch
from _common import write_results  # type: ignore[import-not-found]

from certcompress.bounds.local import certify_local
from certcompress.bounds.statistical import certify_statistical
from certcompress.demo.digits import (
    DigitsCNN,
    accuracy,
    load_digits,
    magnitude_prune_copy,
    train_classifier,
)
from certcompress.measure import adversarial_deviation, float64_function


def _forward_time(model: torch.nn.Module, repeat: int = 200) -> tuple[float, float]:
    m64 = copy.deepcopy(model).double().eval()
    x = torch.rand((1, 1, 8, 8), dtype=torch.float64)
    walls, cpus = [], []
    with torch.no_grad():
        m64(x)
        for _ in range(repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            m64(x)
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
    return min(walls), max(min(cpus), 1e-7)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--eps", type=float, default=0.02)
    ap.add_argument("--points", type=int, default=100)
    ap.add_argument("--attack", type=int, default=20, help="balls attacked by PGD")
    ap.add_argument("--threshold", type=float, default=20.0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    data = load_digits()
    model = train_classifier(DigitsCNN(), data.x_train, data.y_train, progress=False)
    pruned = magnitude_prune_copy(model, args.sparsity)
    acc = (accuracy(model, data.x_test, data.y_test), accuracy(pruned, data.x_test, data.y_test))
    fwd_wall, fwd_cpu = _forward_time(model)

    pts = data.x_test[:args.points]
    t0, c0 = time.perf_counter(), time.process_time()
    local = certify_local(model, pruned, pts, args.eps, domain_lower=0.0, domain_upper=1.0,
                          progress=True)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = local.n_points

    # gradient ascent inside the first balls: the bound must stay above what it finds
    f, fc = float64_function(model), float64_function(pruned)
    found = []
    for i in range(min(args.attack, n)):
        x = pts[i:i + 1].double()
        lo, hi = (x - args.eps).clamp(0, 1), (x + args.eps).clamp(0, 1)
        adv = adversarial_deviation(f, fc, (1, 1, 8, 8), lo[0], hi[0], steps=40, restarts=8,
                                    starts=x, seed=i)
        if adv.max_deviation > local.deviation_bound[i] * (1 + 1e-9):
            raise SystemExit(f"UNSOUND: point {i}: PGD found {adv.max_deviation} above the "
                             f"bound {local.deviation_bound[i]}")
        found.append(adv.max_deviation)
    ratios = np.asarray(local.deviation_bound[:len(found)]) / np.asarray(found)

    stat = certify_statistical(model, pruned, data.x_test, delta=0.05,
                               threshold=args.threshold, quantile=0.95, labels=data.y_test)
    res: dict[str, Any] = {
        "sparsity": args.sparsity, "eps": args.eps, "accuracy": acc,
        "forward_wall_s": fwd_wall, "forward_cpu_s": fwd_cpu,
        "local": {
            "points": n, "fraction_decision_unchanged": local.fraction_certified,
            "fraction_original_robust": float(np.mean(local.original_robust)),
            "deviation_bound_median": float(np.median(local.deviation_bound)),
            "deviation_bound_max": float(np.max(local.deviation_bound)),
            "deviation_at_point_median": float(np.median(local.deviation_at_point)),
            "pgd_found_median": float(np.median(found)) if found else None,
            "bound_over_pgd_median": float(np.median(ratios)) if found else None,
            "bound_over_pgd_max": float(np.max(ratios)) if found else None,
            "vacuous_points": int(sum(local.vacuous)),
            "wall_s_per_point": wall / n, "cpu_s_per_point": cpu / n,
            "fpe_per_point_wall": wall / n / fwd_wall, "fpe_per_point_cpu": cpu / n / fwd_cpu,
        },
        "statistical": stat.to_dict(),
    }
    path = write_results("local_statistical", res)
    print(local.summary())
    print(stat.summary())
    loc = res["local"]
    print(f"\naccuracy original {acc[0]:.4f}, pruned {acc[1]:.4f}")
    print(f"decision certified unchanged at eps={args.eps}: {loc['fraction_decision_unchanged']:.3f}"
          f" of {n} test points; bound/PGD median {loc['bound_over_pgd_median']:.3g} "
          f"(max {loc['bound_over_pgd_max']:.3g}) on {len(found)} balls")
    print(f"cost per point: {loc['wall_s_per_point']:.3g} s wall ({loc['fpe_per_point_wall']:.3g} "
          f"FPE), {loc['cpu_s_per_point']:.3g} s CPU ({loc['fpe_per_point_cpu']:.3g} FPE)")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
