"""ReLU splitting against input splitting (issue 15 part 3, docs/equivalence.md "ReLU
splitting"): a 64-100-100-10 MLP on scikit-learn's digits against its float16 cast, an
8-bit (per-tensor symmetric, round to nearest) copy and a 30% magnitude-pruned copy,
over +-r boxes (clipped to [0, 1]) around test points; ``verify_equivalence`` with
each of ``--splits`` (default ``input``, ``relu``, ``auto``; one thread, serial), for
eps-equivalence (l_inf) and top-1. Counts of verified / falsified / unknown and the
seconds per instance. ``--max-regions`` with a large ``--timeout`` gives a region budget
(the same runs at any machine load; the machine is shared).

epsilon per box: halfway between the worst deviation the root region's attack finds
and the single-pass bound (a question one pass cannot answer). Top-1 over wider boxes.

Usage: python benchmarks/bench_relu_split.py [--points 20] [--timeout 3] [--max-regions N]
    [--pairs float16 int8 pruned30] [--splits input relu auto] [--out NAME] [--quick]
Results: benchmarks/results/NAME.json (default relu_split).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from typing import Any

import torch
from _common import write_results  # type: ignore[import-not-found]
from bench_equivalence import digits_mlp, float16_copy  # type: ignore[import-not-found]
from torch import nn

import certcompress as cc
from certcompress.demo.digits import magnitude_prune_copy
from certcompress.domain import InputDomain


def int8_copy(net: nn.Module) -> nn.Module:
    """Weights per tensor to 8 bits (symmetric, scale max|w| / 127, round to nearest);
    biases kept."""
    out = copy.deepcopy(net)
    with torch.no_grad():
        for m in out.modules():
            if isinstance(m, nn.Linear):
                s = float(m.weight.abs().max()) / 127.0
                m.weight.copy_((m.weight / s).round().clamp(-127, 127) * s)
    return out


def boxes(data: Any, n: int, radius: float) -> list[InputDomain]:
    out = []
    for i in range(n):
        x = data.x_test[i:i + 1].double()
        out.append(InputDomain.box((x - radius).clamp(0, 1), (x + radius).clamp(0, 1),
                                   shape=(1, 1, 8, 8)))
    return out


def run(net: nn.Module, comp: nn.Module, doms: list[InputDomain], split: str,
        timeout: float, max_regions: int = 200_000, **prop: Any) -> dict[str, Any]:
    rows = []
    for dom in doms:
        r = cc.verify_equivalence(net, comp, dom, timeout=timeout, split=split,
                                  max_regions=max_regions, **prop)
        rows.append({"status": r.status, "seconds": r.seconds, "regions": r.regions,
                     "bound": r.bound, "found": r.found,
                     "relu_splits": r.details.get("relu_splits"),
                     "infeasible": r.details.get("infeasible_domains")})
    secs = [r["seconds"] for r in rows]
    return {"verified": sum(r["status"] == "verified" for r in rows),
            "falsified": sum(r["status"] == "falsified" for r in rows),
            "unknown": sum(r["status"] == "unknown" for r in rows),
            "median_s": statistics.median(secs), "total_s": sum(secs), "instances": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=3.0)
    ap.add_argument("--inf-radius", type=float, default=3.0, help="in units of 1/255")
    ap.add_argument("--top1-radii", type=float, nargs="+", default=[8.0, 12.0],
                    help="in units of 1/255")
    ap.add_argument("--pairs", nargs="+", default=["float16", "int8", "pruned30"])
    ap.add_argument("--splits", nargs="+", default=["input", "relu", "auto"])
    ap.add_argument("--max-regions", type=int, default=200_000,
                    help="region budget per instance (with a large --timeout: the same "
                         "run at any machine load)")
    ap.add_argument("--out", default="relu_split", help="results name")
    ap.add_argument("--quick", action="store_true", help="5 points, 30 epochs")
    args = ap.parse_args()
    torch.set_num_threads(1)
    points = 5 if args.quick else args.points
    t0 = time.perf_counter()
    net, data, acc = digits_mlp(30 if args.quick else 60)
    pairs = {"float16": float16_copy(net), "int8": int8_copy(net),
             "pruned30": magnitude_prune_copy(net, 0.3)}
    payload: dict[str, Any] = {"accuracy": acc, "points": points, "timeout": args.timeout,
                               "max_regions": args.max_regions, "splits": args.splits,
                               "load_before": os.getloadavg(), "pairs": {}}
    print(f"digits 64-100-100-10, test accuracy {acc:.3f}; {points} points, timeout "
          f"{args.timeout} s, {args.max_regions} regions per instance; load "
          f"{os.getloadavg()[0]:.2f}")
    budget = {"max_regions": args.max_regions}
    for name in args.pairs:
        comp = pairs[name]
        entry: dict[str, Any] = {}
        # eps-equivalence (l_inf): per box, epsilon halfway between the worst deviation
        # the root's attack finds and the single-pass bound (what one pass cannot prove)
        doms = boxes(data, points, args.inf_radius / 255)
        eps = []
        for d in doms:
            root = cc.verify_equivalence(net, comp, d, epsilon=1e9, timeout=5)
            assert root.bound is not None and root.found is not None
            eps.append(0.5 * (root.bound + root.found))
        for split in args.splits:
            rows = [run(net, comp, [d], split, args.timeout, epsilon=e, norm="inf", **budget)
                    for d, e in zip(doms, eps)]
            res = _merge(rows)
            key = f"inf r{args.inf_radius:g}/255 {split}"
            entry[key] = res
            _line(name, key, res)
        for radius in args.top1_radii:
            doms = boxes(data, points, radius / 255)
            for split in args.splits:
                res = run(net, comp, doms, split, args.timeout, property="top1", **budget)
                key = f"top1 r{radius:g}/255 {split}"
                entry[key] = res
                _line(name, key, res)
        payload["pairs"][name] = entry
    payload["seconds"] = time.perf_counter() - t0
    payload["load_after"] = os.getloadavg()
    path = write_results(args.out, payload)
    print(f"wrote {path} ({payload['seconds']:.0f} s)")


def _merge(rows: list[dict[str, Any]]) -> dict[str, Any]:
    inst = [i for r in rows for i in r["instances"]]
    secs = [i["seconds"] for i in inst]
    return {k: sum(i["status"] == k for i in inst) for k in ("verified", "falsified",
                                                              "unknown")} | {
        "median_s": statistics.median(secs), "total_s": sum(secs), "instances": inst}


def _line(name: str, key: str, res: dict[str, Any]) -> None:
    print(f"{name:8s} {key:20s} verified {res['verified']:2d} falsified "
          f"{res['falsified']:2d} unknown {res['unknown']:2d}  median {res['median_s']:.2f} s "
          f"total {res['total_s']:.1f} s  load {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
