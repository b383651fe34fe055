"""Bound tiers at scale (issue 15, part 2): torchvision resnet18 at 1x3x32x32.

The pair: resnet18 (random init pinned by seed 0, ``num_classes=10``, eval mode) and its
twin with every weight tensor of dimension >= 2 pruned 30% by magnitude (per tensor).

Cases, each run in a fresh subprocess (so that its peak RSS is its own):

* ``bounds-<intermediate>-<box>``: the bounds tier (``certcompress.bounds.tiers.bounds_tier``)
  with ``PropagationOptions(intermediate="interval" | "crown")`` over the box ``small``
  (+-1/255 around a random point in [-1, 1]) or ``wide`` ([-1, 1]^3072);
* ``bounds-interval-<box>-nosign``: the same with ``sign_vectors_up_to=0`` (the l1 bound
  is the sum of the per-output bounds: no 2^10 sign-vector rows);
* ``bounds-interval-<box>-allsigns``: the same with ``sign_rows=None``: every one of the
  2^10 sign vectors (the flat enumeration, what main did before the row budget); the
  plain case uses the default ``sign_rows="auto"`` (about 200 rows of best-first
  branch-and-bound over partial sign vectors for this pair);
* ``local-crown``: ``cc.certify_local`` with its default options at one point,
  eps = 1/255, inside [-1, 1] (for this pair: interval bounds at the ReLU inputs,
  ``crown_rows_per_node=0``, and the automatic sign-row budget);
  ``local-crown-full``: the same with ``PropagationOptions()`` (CROWN for every unstable
  neuron, every sign vector: what main did);
* ``local-small-budgets``: the CROWN row budget on a pair where the unbudgeted run
  finishes: a random-init CNN (conv 3->16 and 16->32, stride 2, ReLU, linear to 10) at
  3x32x32 and its 30%-pruned twin, ``certify_local`` at 2 points, eps = 1/255, with
  ``crown_rows_per_node`` None, 256, 64, 16, 4 and 0 (``sign_rows=None``): bound, time,
  ratio to the unbudgeted bound, and the deviation PGD finds on the same balls.

Reported per case: wall time of the call (tracing and lowering included: what a user
waits for), peak RSS of the process (``ru_maxrss``; it includes ~0.7 GB for importing
torch, torchvision and certcompress, reported as ``baseline_mb``) and the increase over
that baseline, each against the issue's targets (a bounds-tier pass <= 20 s and <= 1 GB,
a local certificate <= 10 s per point; for the bounds cases ``peak_mb`` is taken when
the tier returns, and ``peak_mb_process`` at the end, after the deviation check at the
point, which converts both models to float64 in place), the resident memory after each step
(``rss_after_mb``: ``VmRSS`` after importing torch, torchvision and certcompress, after
building the two models, after tracing both, with ``peak_through_tracing`` the
``VmHWM`` then, and at the end), the device, the torch thread count and the
1-minute load average before and after (the machine may be shared: other processes
inflate every figure). A case that does not finish within ``--timeout`` seconds is
recorded as a timeout (its peak RSS is then unknown). ``--malloc-mmap-threshold BYTES``
runs the children with glibc's ``MALLOC_MMAP_THRESHOLD_`` fixed (recorded as
``malloc_mmap_threshold``): glibc otherwise raises its threshold up to 32 MB as large
blocks are freed, and freed tensors below it stay in the process's heap, so the default
peak RSS counts what the allocator keeps as well as what is live; the targets are judged
on the default runs.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_scale_tiers.py [--threads 1 2]
[--cases ...] [--timeout 300] [--tag after]``; results in
``benchmarks/results/scale_tiers.json`` (merged by tag and case, so that a "before" and an
"after" run sit side by side).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

from _common import RESULTS, write_results  # type: ignore[import-not-found]

CASES = ("bounds-interval-small", "bounds-interval-wide", "bounds-crown-small",
         "bounds-crown-wide", "local-crown", "bounds-interval-small-nosign",
         "bounds-interval-wide-nosign", "bounds-interval-small-allsigns",
         "bounds-interval-wide-allsigns", "local-crown-full", "local-small-budgets")
#: run when ``--cases`` is not given (the others run past the targets by minutes)
DEFAULT_CASES = ("bounds-interval-small", "bounds-interval-wide",
                 "bounds-interval-small-nosign", "bounds-interval-wide-nosign",
                 "local-crown", "local-small-budgets")
CROWN_BUDGETS = (None, 256, 64, 16, 4, 0)
TARGET_S = {"bounds": 20.0, "local": 10.0}
TARGET_MB = {"bounds": 1024.0, "local": None}
SIZE = 32
SPARSITY = 0.3
EPS = 1.0 / 255


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def _status_mb(key: str) -> float | None:
    """``VmRSS`` (resident now) or ``VmHWM`` (its peak so far) of this process, in MB;
    None where ``/proc`` is not available."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _small_budgets(threads: int) -> dict[str, Any]:
    """The ``local-small-budgets`` case (module docstring)."""
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    import certcompress as cc
    from certcompress.bounds.propagation.engine import PropagationOptions
    from certcompress.measure import adversarial_deviation, float64_function

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
                          nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(32 * 8 * 8, 10)).eval()
    comp = _pruned_twin(model, nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(32 * 8 * 8, 10)).eval())
    gen = torch.Generator().manual_seed(1)
    points = (torch.rand((2, 3, SIZE, SIZE), generator=gen) * 2 - 1).double()
    dom = cc.InputDomain.box(-1.0, 1.0, shape=(1, 3, SIZE, SIZE))
    f, g = float64_function(model), float64_function(comp)
    found = []
    for x in points:
        lo, hi = (x - EPS).clamp(-1, 1).unsqueeze(0), (x + EPS).clamp(-1, 1).unsqueeze(0)
        adv = adversarial_deviation(f, g, (1, 3, SIZE, SIZE), lo, hi, steps=40, restarts=4,
                                    starts=x.unsqueeze(0))
        found.append(float(adv.max_deviation))
    rows = []
    for budget in CROWN_BUDGETS:
        opts = PropagationOptions(crown_rows_per_node=budget, sign_rows=None)
        t0 = time.perf_counter()
        lc = cc.certify_local(model, comp, points, EPS, domain=dom, progress=False,
                              propagation=opts)
        rows.append({"crown_rows_per_node": budget, "seconds": time.perf_counter() - t0,
                     "bound_l1": list(lc.deviation_bound),
                     "decision_unchanged": list(lc.decision_unchanged)})
    full = rows[0]["bound_l1"]
    for r in rows:
        r["ratio_to_unbudgeted"] = [b / a for a, b in zip(full, r["bound_l1"])]
        r["ratio_to_found"] = [b / max(v, 1e-300) for b, v in zip(r["bound_l1"], found)]
    return {"case": "local-small-budgets", "threads": threads, "device": "cpu",
            "pgd_found_l1": found, "budgets": rows,
            "seconds": sum(r["seconds"] for r in rows)}


def _pruned_twin(model: Any, twin: Any) -> Any:
    """``twin`` loaded with ``model``'s weights, every weight tensor of dimension >= 2
    pruned ``SPARSITY`` by magnitude (per tensor)."""
    import torch

    twin.load_state_dict(model.state_dict())
    with torch.no_grad():
        for p in twin.parameters():
            if p.dim() >= 2:
                k = int(SPARSITY * p.numel())
                cut = p.abs().flatten().kthvalue(k).values
                p[p.abs() <= cut] = 0.0
    return twin


def _run_case(case: str, threads: int) -> dict[str, Any]:
    """One case in this process (the child): returns its figures."""
    import torch

    rss: dict[str, float | None] = {"torch": _status_mb("VmRSS")}
    import torchvision  # optional benchmark dependency

    rss["torchvision"] = _status_mb("VmRSS")
    torch.set_num_threads(threads)
    import certcompress as cc
    from certcompress.bounds.propagation.engine import PropagationOptions
    from certcompress.bounds.tiers import bounds_tier
    from certcompress.domain import InputDomain

    rss["certcompress"] = _status_mb("VmRSS")
    if case == "local-small-budgets":
        return _small_budgets(threads)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    comp = _pruned_twin(model, torchvision.models.resnet18(num_classes=10).eval())
    rss["models"] = _status_mb("VmRSS")
    shape = (1, 3, SIZE, SIZE)
    gen = torch.Generator().manual_seed(1)
    point = (torch.rand(shape, generator=gen) * 2 - 1).double()
    device = "cpu"
    baseline = _peak_mb()
    out: dict[str, Any] = {"case": case, "threads": threads, "device": device}
    if case.startswith("bounds-"):
        _, inter, box = case.split("-")[:3]
        signs = 0 if case.endswith("-nosign") else PropagationOptions().sign_vectors_up_to
        if box == "small":
            lo, hi = (point - EPS).clamp(-1, 1), (point + EPS).clamp(-1, 1)
            dom = InputDomain.box(lo, hi, shape=shape)
        else:
            dom = InputDomain.box(-1.0, 1.0, shape=shape)
        t0 = time.perf_counter()
        g, g2 = cc.trace(model, shape), cc.trace(comp, shape)
        t1 = time.perf_counter()
        rss["traced"], rss["peak_through_tracing"] = _status_mb("VmRSS"), _status_mb("VmHWM")
        opts = PropagationOptions(intermediate=inter,  # type: ignore[arg-type]
                                  sign_vectors_up_to=signs,
                                  sign_rows=None if case.endswith("-allsigns") else "auto")
        mb = bounds_tier(g, g2, dom, opts)
        t2 = time.perf_counter()
        out["peak_mb_tier"] = _peak_mb()  # before the deviation check below
        out.update(seconds=t2 - t0, trace_seconds=t1 - t0, tier_seconds=t2 - t1,
                   bound_l1=mb.bound, per_output_max=max(mb.per_output),
                   details={k: v for k, v in mb.details.items()
                            if isinstance(v, (int, float, bool, str))})
        with torch.no_grad():
            f = (model.double()(point) - comp.double()(point)).abs().sum()
        out["found_at_point_l1"] = float(f)
    else:
        dom = InputDomain.box(-1.0, 1.0, shape=shape)
        t0 = time.perf_counter()
        opts = PropagationOptions() if case == "local-crown-full" else None
        lc = cc.certify_local(model, comp, point, EPS, domain=dom, progress=False,
                              propagation=opts)
        out.update(seconds=time.perf_counter() - t0, bound_l1=lc.deviation_bound[0],
                   found_at_point_l1=lc.deviation_at_point[0],
                   decision_unchanged=lc.decision_unchanged[0], method=lc.method)
    rss["end"] = _status_mb("VmRSS")
    out["rss_after_mb"] = rss
    out["baseline_mb"] = baseline
    out["peak_mb"] = _peak_mb()
    out["increase_mb"] = out["peak_mb"] - baseline
    if "peak_mb_tier" in out:  # the target is about the tier pass (tracing included)
        out["peak_mb_process"] = out["peak_mb"]
        out["peak_mb"] = out.pop("peak_mb_tier")
        out["increase_mb"] = out["peak_mb"] - baseline
    return out


def _verdict(fig: dict[str, Any]) -> dict[str, Any]:
    if fig["case"] == "local-small-budgets":
        return {"time_pass": None}
    kind = "bounds" if fig["case"].startswith("bounds-") else "local"
    v: dict[str, Any] = {"target_seconds": TARGET_S[kind],
                         "time_pass": bool(fig.get("seconds") is not None
                                           and fig["seconds"] <= TARGET_S[kind])}
    if TARGET_MB[kind] is not None:
        v["target_mb"] = TARGET_MB[kind]
        v["memory_pass"] = bool(fig.get("peak_mb") is not None
                                and fig["peak_mb"] <= TARGET_MB[kind])
    return v


def _spawn(case: str, threads: int, timeout: float, mmap_threshold: int | None = None
           ) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", case, "--threads", str(threads)]
    env = dict(os.environ)
    if mmap_threshold is not None:  # glibc: a fixed threshold, no dynamic raising
        env["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env=env)
    except subprocess.TimeoutExpired:
        return {"case": case, "threads": threads, "seconds": None, "peak_mb": None,
                "status": f"timeout after {timeout:.0f} s"}
    if proc.returncode != 0:
        return {"case": case, "threads": threads, "seconds": None, "peak_mb": None,
                "status": f"failed (exit {proc.returncode}): {proc.stderr.strip()[-400:]}"}
    fig = json.loads(proc.stdout.strip().splitlines()[-1])
    fig["status"] = "ok"
    fig["malloc_mmap_threshold"] = mmap_threshold
    fig["process_seconds"] = time.perf_counter() - t0
    return fig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES), choices=CASES)
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--tag", default="after", help="the key the figures are stored under")
    ap.add_argument("--malloc-mmap-threshold", type=int, default=None, metavar="BYTES",
                    help="run the cases with glibc's MALLOC_MMAP_THRESHOLD_ fixed at BYTES "
                         "(a detail: how much of the peak is freed memory the allocator "
                         "keeps; the targets are judged without it)")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_run_case(args.child, args.threads[0])))
        return
    path = RESULTS / "scale_tiers.json"
    old: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    runs: dict[str, Any] = dict(old.get("runs", {}))
    rows = []
    load_before = os.getloadavg()[0]
    for case in args.cases:
        for th in args.threads:
            fig = _spawn(case, th, args.timeout, args.malloc_mmap_threshold)
            fig.update(_verdict(fig))
            fig["load_average_1min"] = os.getloadavg()[0]
            rows.append(fig)
            sec = "timeout" if fig.get("seconds") is None else f"{fig['seconds']:.1f} s"
            mb = "?" if fig.get("peak_mb") is None else f"{fig['peak_mb']:.0f} MB"
            if fig.get("peak_mb_process") is not None:
                mb += f" ({fig['peak_mb_process']:.0f} MB at exit)"
            print(f"{case:24s} threads={th} {sec:>10s} {mb:>8s} time_pass={fig['time_pass']} "
                  f"memory_pass={fig.get('memory_pass', '-')} {fig['status'][:60]}", flush=True)
    new = {(r["case"], r["threads"]) for r in rows}
    kept = [r for r in runs.get(args.tag, {}).get("cases", [])
            if (r["case"], r["threads"]) not in new]
    runs[args.tag] = {"cases": kept + rows, "load_average_1min_before": load_before,
                      "load_average_1min_after": os.getloadavg()[0], "device": "cpu",
                      "uptime": subprocess.run(["uptime"], capture_output=True,
                                               text=True).stdout.strip()}
    write_results("scale_tiers", {
        "model": "torchvision resnet18, num_classes=10, random init (seed 0), eval; twin: "
                 f"{int(SPARSITY * 100)}% magnitude pruning per weight tensor",
        "input_shape": [1, 3, SIZE, SIZE], "eps_small_box": EPS,
        "targets": {"bounds_tier_seconds": 20.0, "bounds_tier_peak_mb": 1024.0,
                    "local_certificate_seconds_per_point": 10.0},
        "runs": runs})


if __name__ == "__main__":
    main()
