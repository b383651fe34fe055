"""Bound tiers on a CUDA GPU against the CPU (issue 15, part 2: "Run on CUDA when a GPU is
present"; docs/bounds.md, "On a GPU").

The pair of ``bench_scale_tiers.py``: torchvision resnet18 (random init, seed 0,
``num_classes=10``, eval) and its twin pruned 30% by magnitude per weight tensor, input
``1x3x32x32``. Cases, each run on the CPU (``--cpu-threads`` torch threads, default 2:
the project's target machine) and on ``cuda``, each in its own process (a first CUDA
call's set-up is counted: it is what a user waits for):

* ``bounds-interval-wide``: the bounds tier, interval intermediate bounds, ``[-1, 1]^3072``;
* ``bounds-crown-small``: the bounds tier with CROWN at every unstable neuron, the
  +-1/255 box around a random point (> 300 s on 2 CPU cores: docs/bounds.md);
* ``local``: ``certify_local`` at one point, eps 1/255, default options;
* ``local-crown-full``: the same with ``PropagationOptions()`` (CROWN everywhere, every
  sign vector: > 300 s on 2 CPU cores);
* ``mlp-bounds``: a 784-100-100-10 MLP against its float16 copy, the bounds tier over a
  +-3/255 box (where ``device="auto"`` keeps the CPU: launches cost more than they save).

Reported per case and device: wall seconds (tracing included), the l1 bound and the
largest per-output bound, the GPU's bound over the CPU's (the same float64 bound up to
the order of summation, and the GPU's ``2^-31`` margin), and whether the CPU re-check of
the GPU's bounds-tier entry accepts it (``compare_values``, the re-check's own test). A
CPU case that runs past ``--timeout`` is recorded as such.

Run (on a machine with a GPU): ``PYTHONPATH=. python benchmarks/bench_gpu.py [--cases
...] [--timeout 300]``; results in ``benchmarks/results/gpu.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from typing import Any

from _common import write_results  # type: ignore[import-not-found]

CASES = ("mlp-bounds", "bounds-interval-wide", "local", "bounds-crown-small",
         "local-crown-full")
SIZE = 32
EPS = 1.0 / 255


def _resnet_pair() -> tuple[Any, Any]:
    import torch
    import torchvision  # optional benchmark dependency

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    twin = torchvision.models.resnet18(num_classes=10).eval()
    twin.load_state_dict(model.state_dict())
    with torch.no_grad():
        for p in twin.parameters():
            if p.dim() >= 2:
                cut = p.abs().flatten().kthvalue(int(0.3 * p.numel())).values
                p[p.abs() <= cut] = 0.0
    return model, twin


def _run(case: str, device: str, threads: int) -> dict[str, Any]:
    """One case on one device in this process (the child)."""
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    import certcompress as cc
    from certcompress.bounds.propagation.engine import PropagationOptions
    from certcompress.bounds.tiers import bounds_tier

    out: dict[str, Any] = {"case": case, "device": device, "threads": threads}
    if device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name(0)
    if case == "mlp-bounds":
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(),
                              nn.Linear(100, 10)).eval()
        comp = copy.deepcopy(model)
        comp.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
        shape: tuple[int, ...] = (1, 784)
        x = torch.rand(shape, generator=torch.Generator().manual_seed(1)).double()
        dom = cc.InputDomain.box((x - 3 / 255).clamp(0, 1), (x + 3 / 255).clamp(0, 1),
                                 shape=shape)
    else:
        model, comp = _resnet_pair()
        shape = (1, 3, SIZE, SIZE)
        x = (torch.rand(shape, generator=torch.Generator().manual_seed(1)) * 2 - 1).double()
        small = cc.InputDomain.box((x - EPS).clamp(-1, 1), (x + EPS).clamp(-1, 1), shape=shape)
        dom = cc.InputDomain.box(-1.0, 1.0, shape=shape) if case.endswith("wide") else small
    t0 = time.perf_counter()
    if case.startswith("local"):
        # the defaults for a pair this size (interval bounds at the ReLU inputs), or CROWN
        # at every unstable neuron and every sign vector
        opts = PropagationOptions(device=device, sign_rows=None) \
            if case == "local-crown-full" else \
            PropagationOptions(crown_rows_per_node=0, device=device)
        lc0 = cc.certify_local(model, comp, x, EPS, progress=False, propagation=opts,
                               domain=cc.InputDomain.box(-1.0, 1.0, shape=shape))
        out.update(seconds=time.perf_counter() - t0, bound_l1=lc0.deviation_bound[0],
                   decision_unchanged=lc0.decision_unchanged[0],
                   at_point_l1=lc0.deviation_at_point[0], rounding=lc0.rounding)
        return out
    inter = "interval" if "interval" in case else "crown"
    opts = PropagationOptions(intermediate=inter, device=device)  # type: ignore[arg-type]
    g, g2 = cc.trace(model, shape), cc.trace(comp, shape)
    mb = bounds_tier(g, g2, dom, opts)
    out.update(seconds=time.perf_counter() - t0, bound_l1=mb.bound,
               per_output=list(mb.per_output), details_device=mb.details.get("device"))
    if device.startswith("cuda"):
        out["cuda_max_memory_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return out


def _spawn(case: str, device: str, threads: int, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", case, "--device", device,
           "--cpu-threads", str(threads)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ))
    except subprocess.TimeoutExpired:
        return {"case": case, "device": device, "status": f"timeout after {timeout:.0f} s"}
    if proc.returncode != 0:
        return {"case": case, "device": device,
                "status": f"failed (exit {proc.returncode}): {proc.stderr.strip()[-600:]}"}
    fig = json.loads(proc.stdout.strip().splitlines()[-1])
    fig["status"] = "ok"
    return fig


def _compare(cpu: dict[str, Any], gpu: dict[str, Any]) -> dict[str, Any]:
    from certcompress.bounds.tierbase import compare_values

    if cpu.get("status") != "ok" or gpu.get("status") != "ok":
        return {}
    out: dict[str, Any] = {"speedup": cpu["seconds"] / gpu["seconds"],
                           "bound_gpu_over_cpu": gpu["bound_l1"] / cpu["bound_l1"]}
    if "per_output" in cpu:
        problems: list[str] = []
        compare_values("bound", gpu["bound_l1"], cpu["bound_l1"], problems)
        compare_values("per-output", tuple(gpu["per_output"]), tuple(cpu["per_output"]),
                       problems)
        out["cpu_recheck_accepts_gpu_entry"] = not problems
        out["cpu_recheck_problems"] = problems
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    ap.add_argument("--cpu-threads", type=int, default=2)
    ap.add_argument("--cpu-cases", nargs="+", default=list(CASES), choices=CASES,
                    help="the cases also run on the CPU (the CROWN-everywhere ones take "
                         "> 300 s there)")
    ap.add_argument("--timeout", type=float, default=300.0)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_run(args.child, args.device, args.cpu_threads)))
        return
    rows = []
    for case in args.cases:
        figs = {}
        for device in ("cuda", "cpu"):
            if device == "cpu" and case not in args.cpu_cases:
                figs[device] = {"case": case, "device": device, "status": "not run"}
                continue
            figs[device] = _spawn(case, device, args.cpu_threads, args.timeout)
            f = figs[device]
            sec = f"{f['seconds']:.2f} s" if "seconds" in f else f["status"][:80]
            print(f"{case:22s} {device:5s} {sec:>12s} l1 {f.get('bound_l1', float('nan')):.6g}",
                  flush=True)
        cmp = _compare(figs["cpu"], figs["cuda"])
        print(f"{case:22s} {cmp}", flush=True)
        rows.append({"case": case, **{d: figs[d] for d in figs}, **cmp})
    path = write_results("gpu", {"cases": rows, "cpu_threads": args.cpu_threads,
                                 "load_average_1min": os.getloadavg()[0]})
    print(f"written {path}")


if __name__ == "__main__":
    main()
