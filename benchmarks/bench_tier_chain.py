"""The ``bounds`` tier on an ACAS-like table pair before and after routing chain pairs
through the differential single pass (``PropagationOptions(chain=False)`` is the engine
alone, as before; the default takes per output and for the l1 bound the smaller of both).

One 6x50 ReLU MLP fitted to a 5-D lookup table (``acas_table`` of bench_equivalence.py,
``--steps`` Adam steps) against its float16 cast, over ``--regions`` regions of
``acas_regions`` (full range of three inputs, 5% of the range of two). Per region: the
l_inf bound (largest per-output bound) and l1 bound of each, their seconds (best of
``--repeat``), and the largest deviation found by the shared attack of the tests
(tests/_soundness.py is not imported: random vertices, uniform points and the centre);
every bound is checked to be at least the found deviation.

Writes benchmarks/results/tier_chain.json. Run:
``PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_tier_chain.py`` (``--regions N``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import torch
from _common import write_results  # type: ignore[import-not-found]
from bench_equivalence import acas_regions, acas_table, float16_copy  # type: ignore[import-not-found]
from torch import nn

import certcompress as cc
from certcompress.bounds.propagation.engine import PropagationOptions
from certcompress.bounds.tiers import bounds_tier
from certcompress.domain import InputDomain


def found_dev(net: nn.Module, comp: nn.Module, dom: InputDomain, seed: int
              ) -> tuple[float, float]:
    """Largest (l_inf, l1) deviation at 4096 random vertices, 4096 uniform points and the
    centre: lower bounds of the true ones."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = dom.lower_tensor().reshape(1, -1), dom.upper_tensor().reshape(1, -1)
    u = torch.rand(4096, lo.shape[1], generator=g, dtype=torch.float64)
    v = torch.rand(4096, lo.shape[1], generator=g) < 0.5
    x = torch.cat([lo + (hi - lo) * u, torch.where(v, hi, lo), (lo + hi) / 2])
    x = torch.minimum(torch.maximum(x, lo), hi)
    with torch.no_grad():
        d = (net(x) - comp(x)).abs()
    return float(d.max()), float(d.sum(1).max())


def run(net: nn.Module, comp: nn.Module, dom: InputDomain, chain: bool, repeat: int
        ) -> tuple[float, float, float, dict[str, Any]]:
    g, gc = cc.trace(net, dom.shape), cc.trace(comp, dom.shape)
    best = float("inf")
    mb = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        mb = bounds_tier(g, gc, dom, PropagationOptions(chain=chain))
        best = min(best, time.perf_counter() - t0)
    assert mb is not None
    return max(mb.per_output), mb.bound, best, dict(mb.details)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1000, help="training steps of the table net")
    ap.add_argument("--regions", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    load0 = os.getloadavg()
    net = acas_table(0, args.steps)
    comp = float16_copy(net)
    rows = []
    for k, dom in enumerate(acas_regions(0, args.regions)):
        f_inf, f_l1 = found_dev(net, comp, dom, k)
        e_inf, e_l1, e_s, _ = run(net, comp, dom, False, args.repeat)
        c_inf, c_l1, c_s, det = run(net, comp, dom, True, args.repeat)
        for name, v, f in (("engine l_inf", e_inf, f_inf), ("routed l_inf", c_inf, f_inf),
                           ("engine l1", e_l1, f_l1), ("routed l1", c_l1, f_l1)):
            if v < f:
                raise AssertionError(f"region {k}: {name} bound {v!r} below found {f!r}")
        row = {"region": k, "domain": dom.describe(), "found_linf": f_inf, "found_l1": f_l1,
               "engine_linf": e_inf, "engine_l1": e_l1, "engine_s": e_s,
               "routed_linf": c_inf, "routed_l1": c_l1, "routed_s": c_s,
               "chain_bound_l1": det.get("chain_bound"),
               "differential_single_pass": det.get("differential_single_pass")}
        rows.append(row)
        print(f"region {k} ({dom.describe()}): found l_inf {f_inf:.4g}; engine alone "
              f"{e_inf:.4g} ({e_s:.2f} s), routed {c_inf:.4g} ({c_s:.2f} s), ratio "
              f"{c_inf / e_inf:.4f}; l1 {e_l1:.4g} -> {c_l1:.4g}", flush=True)
    ratio = [r["routed_linf"] / r["engine_linf"] for r in rows]
    summary = {"regions": len(rows), "median_ratio_linf": statistics.median(ratio),
               "min_ratio_linf": min(ratio), "max_ratio_linf": max(ratio),
               "median_engine_s": statistics.median(r["engine_s"] for r in rows),
               "median_routed_s": statistics.median(r["routed_s"] for r in rows),
               "load_average_start": load0, "load_average_end": os.getloadavg()}
    print(summary)
    print(f"written {write_results('tier_chain', {'steps': args.steps, 'summary': summary, 'rows': rows})}")


if __name__ == "__main__":
    main()
