"""Benchmark of certcompress.meanfield (issue 6).

1. Time of ``mf.estimate`` for n=500, L=16, M=256 (d=64, K=256, digits odd-even, default
   EstimateOptions: 12 checkpoints) as a multiple of one full-batch training step.
2. Wall and CPU time of the default sweep, ``mf.sweep()`` (the designed n x label-noise
   sweep with seeds 0 1 2), the same as ``certcompress meanfield sweep``, with its rank
   agreement and recommendation; ``--grid`` times a grid over depths x scalings
   (mean-field sqrt none) instead, ``--depths/--width/--n/--steps`` (defaults: depths
   4 8 16 32, M=128, n=500, 300 steps: the grid ``sweep(depths=...)`` fills in).
3. The two Gram implementations at n=100, L=16, M=256 (closed form vs torch.func
   per-sample Jacobians), as a ratio.

Prints the figures measured in this run and writes benchmarks/results/meanfield.json.
Timings on a shared machine vary with its load: the load average is recorded.

    python benchmarks/bench_meanfield.py            # both parts
    python benchmarks/bench_meanfield.py --no-sweep # estimate ratio only (~1 min)
    python benchmarks/bench_meanfield.py --design 0 1 2  # the default sweep only
    python benchmarks/bench_meanfield.py --grid --depths 4 8 16 --n 300 --steps 150 --width 64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from certcompress import meanfield as mf
from certcompress._io import atomic_write_text


def _step_seconds(net: mf.ScaledResNet, data: mf.DataSplit, steps: int = 20) -> float:
    run = mf.train(net, data.X_train, data.y_train, steps=steps, record_every=steps)
    return run.seconds_per_step


def bench_estimate(repeats: int) -> dict[str, Any]:
    data = mf.load_digits_task("odd-even", n_train=500, seed=0)
    net = mf.ScaledResNet(d=64, depth=16, width=256, head_width=256, scaling="mean-field")
    run = mf.train(net, data.X_train, data.y_train, steps=300, record_every=25)
    est_times, step_times = [], [run.seconds_per_step]
    for r in range(repeats):
        t0 = time.perf_counter()
        mf.estimate(run, data.X_train, data.y_train, data.X_test, data.y_test, 0.05, seed=r)
        est_times.append(time.perf_counter() - t0)
        step_times.append(_step_seconds(net, data))  # interleaved: same machine load
    step = statistics.median(step_times)
    est = statistics.median(est_times)
    return {"n": 500, "depth": 16, "width": 256, "head_width": 256, "d": 64,
            "checkpoints_used": min(12, len(run.checkpoints)),
            "estimate_seconds": est_times, "step_seconds": step_times,
            "estimate_median_s": est, "step_median_s": step, "ratio": est / step}


def bench_gram() -> dict[str, object]:
    data = mf.load_digits_task("odd-even", n_train=100, seed=0)
    net = mf.ScaledResNet(d=64, depth=16, width=256, head_width=256, scaling="mean-field")
    times = {}
    for method in ("structured", "jacobian"):
        t0 = time.perf_counter()
        mf.gram_matrices(net, data.X_train, method=method)  # type: ignore[arg-type]
        times[method] = time.perf_counter() - t0
    return {"n": 100, "depth": 16, "width": 256, "structured_s": times["structured"],
            "jacobian_s": times["jacobian"], "ratio": times["jacobian"] / times["structured"]}


def bench_sweep(depths: list[int], width: int, n: int, steps: int) -> dict[str, object]:
    t0 = time.perf_counter()
    table = mf.sweep(depths=depths, scalings=["mean-field", "sqrt", "none"], widths=[width],
                     ns=[n], data="digits",
                     options=mf.SweepOptions(steps=steps, record_every=max(steps // 6, 1)),
                     progress=False)
    wall = time.perf_counter() - t0
    mfrows = table[table["in_scope"].astype(bool)]
    return {"depths": depths, "width": width, "n": n, "steps": steps,
            "configurations": len(table), "wall_seconds": wall,
            "in_scope": len(mfrows),
            "gap_estimate_in_scope": [float(v) for v in mfrows["gap_estimate"]],
            "measured_gap": [float(v) for v in table["measured_gap"]],
            "w2_bound_residual": [float(v) for v in table["w2_bound_residual"]],
            "spearman_kernel_measure": table.attrs["spearman"]["kernel_measure"]["rho"],
            "train_seconds": float(table["train_seconds"].sum()),
            "estimate_seconds": float(table["estimate_seconds"].sum()),
            "spearman_gap_estimate": table.attrs["spearman"]["gap_estimate"]["rho"]}


# the design before the n = 200 cells were added (where the estimates were selected, seeds 0-2)
_BEFORE = tuple(f"n={n} noise={q:g}" for n in (50, 100, 400) for q in mf.DESIGN_NOISES) + (
    "L=16", "alpha=0.25", "alpha=4", "scaling=sqrt L=16", "scaling=none L=16", "init=standard",
    "init=paired", "head-only", "lazy: standard init, beta=10")


def _subset_agreement(table: Any, names: tuple[str, ...]) -> dict[str, object]:
    """Spearman over per-configuration means (in-scope configurations) restricted to ``names``."""
    cols = [c for c in mf.AGREEMENT_COLUMNS if c in mf.THEORY_COLUMNS]
    means = mf.design_means(table, ["measured_gap", *cols])
    sub = means[means.index.isin(names) & means["in_scope"]]
    out: dict[str, object] = {}
    for col in cols:
        r = mf.spearman_agreement(sub, col)
        ratio = (sub[col] / sub["measured_gap"]).to_numpy()
        out[col] = {"rho": r.rho, "pvalue": r.pvalue, "n_points": r.n_configs,
                    "ratio_median": float(statistics.median(ratio)) if len(ratio) else None,
                    "ratio_min": float(ratio.min()) if len(ratio) else None,
                    "ratio_max": float(ratio.max()) if len(ratio) else None}
    return out


def bench_design(seeds: list[int]) -> dict[str, object]:
    """The default sweep (the designed one; issue 18 benchmark): wall and CPU time, rank
    agreement (whole design, the n x noise grid, the design before the n = 200 cells),
    its seed-bootstrap interval, the gap groups, recommendation."""
    load = os.getloadavg()
    w0, c0 = time.perf_counter(), time.process_time()
    table = mf.sweep(seeds=seeds, progress=False)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    a = table.attrs
    grid = tuple(f"n={n} noise={q:g}" for n in mf.DESIGN_NS for q in mf.DESIGN_NOISES)
    return {"seeds": seeds, "runs": len(table), "wall_seconds": wall, "cpu_seconds": cpu,
            "load_before": load, "load_after": os.getloadavg(),
            "in_scope_designs": a["in_scope_designs"], "gap_span": a["gap_span"],
            "spearman_means": a["spearman_means"], "spearman_rows": a["spearman"],
            "spearman_means_bootstrap": a["spearman_means_bootstrap"],
            "spearman_means_grid": _subset_agreement(table, grid),
            "spearman_means_before_n200": _subset_agreement(table, _BEFORE),
            "gap_groups": a["gap_groups"], "by_config": a["by_config"],
            "ratio": a["ratio"], "best_estimate": a["best_estimate"],
            "recommendation": a["recommendation"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--no-gram", action="store_true")
    parser.add_argument("--no-estimate", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--depths", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--grid", action="store_true",
                        help="part 2 times the grid of --depths/--width/--n/--steps instead "
                             "of the default sweep")
    parser.add_argument("--design", type=int, nargs="*", default=None, metavar="SEED",
                        help="only the default sweep with these seeds (default 0 1 2)")
    args = parser.parse_args()
    if args.design is not None:
        seeds = args.design or list(mf.DEFAULT_SEEDS)
        res = bench_design(seeds)
        sp = res["spearman_means"][mf.RECOMMENDED_ESTIMATE]  # type: ignore[index]
        bs = res["spearman_means_bootstrap"].get(mf.RECOMMENDED_ESTIMATE, {})  # type: ignore[attr-defined]
        print(f"default sweep, seeds {seeds}: {res['runs']} runs, {res['wall_seconds']:.0f} s wall, "
              f"{res['cpu_seconds']:.0f} CPU-s (load {res['load_before'][0]:.1f}); Spearman "  # type: ignore[index]
              f"{mf.RECOMMENDED_ESTIMATE} over {sp['n_points']} in-scope design means = "
              f"{sp['rho']:.3f} (p = {sp['pvalue']:.2g}; seed bootstrap 95% "
              f"{bs.get('lo', float('nan')):.2f}-{bs.get('hi', float('nan')):.2f}); gap span "
              f"{res['gap_span']:.1f}x")
        for part in ("spearman_means_grid", "spearman_means_before_n200"):
            g = res[part][mf.RECOMMENDED_ESTIMATE]  # type: ignore[index]
            print(f"  {part}: {g['rho']:.3f} (p = {g['pvalue']:.2g}, {g['n_points']} configurations)")
        out = Path(__file__).resolve().parent / "results"
        out.mkdir(exist_ok=True)
        path = atomic_write_text(out / "meanfield_design.json",
                                 json.dumps(res, indent=2, default=str) + "\n")
        print(f"wrote {path}")
        return
    env = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "torch": torch.__version__, "python": platform.python_version(),
           "load_before": os.getloadavg()}
    result: dict[str, object] = {"env": env}
    if not args.no_estimate:
        e = bench_estimate(args.repeats)
        result["estimate"] = e
        print(f"estimate (n=500, L=16, M=256): {e['estimate_median_s']:.2f} s = "
              f"{e['ratio']:.0f} x one training step ({1e3 * e['step_median_s']:.1f} ms)")
    if not args.no_gram:
        g = bench_gram()
        result["gram"] = g
        print(f"Gram matrices (n=100, L=16, M=256): closed form {g['structured_s']:.2f} s, "
              f"torch.func Jacobians {g['jacobian_s']:.2f} s: {g['ratio']:.0f}x")
    if not args.no_sweep and not args.grid:
        d = bench_design(list(mf.DEFAULT_SEEDS))
        result["sweep"] = d
        sp = d["spearman_means"][mf.RECOMMENDED_ESTIMATE]  # type: ignore[index]
        print(f"default sweep ({d['runs']} runs): {d['wall_seconds']:.0f} s wall, "
              f"{d['cpu_seconds']:.0f} CPU-s on {env['cpus']} cores; Spearman "
              f"{mf.RECOMMENDED_ESTIMATE} = {sp['rho']:.3f} (p = {sp['pvalue']:.2g})")
    if not args.no_sweep and args.grid:
        s = bench_sweep(args.depths, args.width, args.n, args.steps)
        result["sweep"] = s
        print(f"sweep ({s['configurations']} configurations, depths {args.depths}, M={args.width}, "
              f"n={args.n}, {args.steps} steps): {s['wall_seconds']:.0f} s wall "
              f"(train {s['train_seconds']:.0f} s, estimate {s['estimate_seconds']:.0f} s) "
              f"on {env['cpus']} cores")
    env["load_after"] = os.getloadavg()
    print(f"load average before {env['load_before']}, after {env['load_after']}")
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    name = "meanfield.json" if not args.no_estimate else "meanfield_sweep_gram.json"
    path = atomic_write_text(out / name, json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
