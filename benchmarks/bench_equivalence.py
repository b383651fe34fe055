"""Equivalence-verification benchmark (issue 15): branch-and-bound with the differential
single pass, on instances of the class of the ACAS-Xu-vs-float16 benchmark of NeuroDiff.

* ACAS-like: 5-input MLPs with 6 hidden layers of 50 ReLUs, trained in this run (seconds)
  to fit a smooth 5-D function (a lookup-table stand-in), paired with the same network
  with its weights cast to float16 (kept as float64 values). Regions as wide as an
  operational envelope: the full range of three inputs, narrow ranges of the other two.
  Verified / falsified / unknown counts, median and total seconds at epsilon 0.05 and
  0.01 (l_inf, per output), and the single-pass bound (the root region) against the
  bounds tier of ``certify`` (``certcompress.bounds.tiers.bounds_tier``).
* digits: a 64-100-100-10 MLP on scikit-learn's digits against its float16 cast, over
  +-3/255 boxes around test images (clipped to [0, 1]): single-pass l_inf bound against
  the bounds tier, and top-1 equivalence on each box.
* parallel: one hard instance on the serial search and with ``executor="local"`` (2
  workers).

Writes benchmarks/results/equivalence.json. Run:
``.venv/bin/python benchmarks/bench_equivalence.py`` (``--quick`` for a smaller run).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Any

import torch
from _common import write_results  # type: ignore[import-not-found]
from torch import nn

import certcompress as cc
from certcompress.bounds.propagation.engine import PropagationOptions
from certcompress.bounds.propagation.lowering import lower_pair
from certcompress.bounds.tiers import bounds_tier
from certcompress.demo.digits import load_digits
from certcompress.domain import InputDomain
from certcompress.equivalence.properties import EpsilonProperty
from certcompress.equivalence.search import Bounder

LO = torch.tensor([-0.33, -0.5, -0.5, -0.5, -0.5], dtype=torch.float64)
HI = torch.tensor([0.68, 0.5, 0.5, 0.5, 0.5], dtype=torch.float64)


def acas_like(seed: int, steps: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(5, 5, generator=g) * 2.0
    b = torch.randn(5, 5, generator=g) * 1.5
    c = torch.randn(5, 5, 5, generator=g) * 0.5

    def target(x: torch.Tensor) -> torch.Tensor:
        quad = torch.einsum("ni,kij,nj->nk", x, c, x)
        return torch.sin(x @ a.T) + 0.5 * torch.cos(x @ b.T) + quad

    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    d = 5
    for _ in range(6):
        layers += [nn.Linear(d, 50), nn.ReLU()]
        d = 50
    net = nn.Sequential(*layers, nn.Linear(50, 5))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    lo, hi = LO.float(), HI.float()
    for _ in range(steps):
        x = lo + (hi - lo) * torch.rand(2048, 5, generator=g)
        loss = ((net(x) - target(x)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.double().eval()


def float16_copy(net: nn.Module) -> nn.Module:
    out = copy.deepcopy(net)
    with torch.no_grad():
        for p in out.parameters():
            p.copy_(p.half().double())
    return out


def acas_regions(seed: int, n: int) -> list[InputDomain]:
    """Full range of three inputs, narrow (5% of the range) ranges of the other two."""
    g = torch.Generator().manual_seed(1000 + seed)
    out = []
    for _ in range(n):
        narrow = torch.randperm(5, generator=g)[:2]
        lo, hi = LO.clone(), HI.clone()
        for i in narrow.tolist():
            w = 0.05 * float(HI[i] - LO[i])
            c = float(LO[i]) + w / 2 + float(torch.rand((), generator=g)) * (
                float(HI[i] - LO[i]) - w)
            lo[i], hi[i] = c - w / 2, c + w / 2
        out.append(InputDomain.box(lo[None], hi[None], shape=(1, 5),
                                   description=f"full range except x{narrow.tolist()}"))
    return out


def single_pass(net: nn.Module, comp: nn.Module, dom: InputDomain) -> tuple[float, float]:
    """(l_inf bound of the equivalence single pass, seconds)."""
    pair = lower_pair(cc.trace(net, dom.shape), cc.trace(comp, dom.shape))
    b = Bounder(pair)
    prop = EpsilonProperty(pair.output_size, 1.0, "inf")
    t0 = time.perf_counter()
    lo, hi = dom.lower_tensor().reshape(1, -1), dom.upper_tensor().reshape(1, -1)
    _, cd, r = prop.rows(torch.zeros(1, pair.output_size, dtype=torch.float64))
    ub = b.bound(lo, hi, None, cd, r)[0]
    return float(ub.amax().clamp(min=0)), time.perf_counter() - t0


def tier_bound(net: nn.Module, comp: nn.Module, dom: InputDomain, intermediate: str
               ) -> tuple[float, float]:
    t0 = time.perf_counter()
    mb = bounds_tier(cc.trace(net, dom.shape), cc.trace(comp, dom.shape), dom,
                     PropagationOptions(intermediate=intermediate))  # type: ignore[arg-type]
    return max(mb.per_output), time.perf_counter() - t0


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    secs = [r["seconds"] for r in rows]
    return {"verified": sum(r["status"] == "verified" for r in rows),
            "falsified": sum(r["status"] == "falsified" for r in rows),
            "unknown": sum(r["status"] == "unknown" for r in rows), "instances": len(rows),
            "median_s": statistics.median(secs), "total_s": sum(secs), "max_s": max(secs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--nets", type=int, default=5)
    ap.add_argument("--regions", type=int, default=6, help="regions per network")
    args = ap.parse_args()
    torch.set_num_threads(1)
    n_nets, n_regions, steps = (2, 3, 400) if args.quick else (args.nets, args.regions, 1500)
    n_tier = 2 if args.quick else 5
    payload: dict[str, Any] = {"acas_like": {}, "digits": {}}

    # ------------------------------------------------------------------ ACAS-like
    instances = []
    for s in range(n_nets):
        net = acas_like(s, steps)
        comp = float16_copy(net)
        for k, dom in enumerate(acas_regions(s, n_regions)):
            instances.append((f"net{s}/region{k}", net, comp, dom))
    print(f"ACAS-like: {len(instances)} instances (6x50 ReLU MLPs vs float16)")
    sp_rows = []
    for name, net, comp, dom in instances[:n_tier]:
        ours, t_ours = single_pass(net, comp, dom)
        crown, t_crown = tier_bound(net, comp, dom, "crown")
        sp_rows.append({"instance": name, "single_pass": ours, "single_pass_s": t_ours,
                        "bounds_tier": crown, "bounds_tier_s": t_crown,
                        "ratio_tier_over_single": crown / ours if ours > 0 else None})
        print(f"  single pass {name}: {ours:.4g} ({t_ours:.2f} s)  bounds tier {crown:.4g} "
              f"({t_crown:.2f} s)")
    payload["acas_like"]["single_pass"] = sp_rows
    for eps in (0.05, 0.01):
        rows = []
        for name, net, comp, dom in instances:
            r = cc.verify_equivalence(net, comp, dom, epsilon=eps, timeout=args.timeout)
            rows.append({"instance": name, "status": r.status, "seconds": r.seconds,
                         "regions": r.regions, "bound": r.bound, "found": r.found})
        summ = summarize(rows)
        print(f"  eps={eps}: {summ}")
        payload["acas_like"][f"eps={eps}"] = {"summary": summ, "instances": rows}

    # ------------------------------------------------------------------ parallel
    name, net, comp, dom = instances[0]
    kw: dict[str, Any] = {"epsilon": 0.002, "timeout": args.timeout, "batch": 256,
                          "chunk": 64}
    ser = cc.verify_equivalence(net, comp, dom, **kw)
    loc = cc.verify_equivalence(net, comp, dom, executor="local", workers=2, **kw)
    par = {"instance": name, "epsilon": 0.002, "serial_s": ser.seconds,
           "local2_s": loc.seconds, "serial_status": ser.status, "local_status": loc.status,
           "regions": ser.regions, "same_regions": ser.regions == loc.regions,
           "speedup": ser.seconds / loc.seconds}
    print(f"  parallel: {par}")
    payload["parallel"] = par

    # ------------------------------------------------------------------ digits
    data = load_digits()
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 100), nn.ReLU(), nn.Linear(100, 100),
                        nn.ReLU(), nn.Linear(100, 10))
    opt = torch.optim.Adam(mlp.parameters(), lr=1e-3)
    for _ in range(30 if args.quick else 60):
        for i in range(0, len(data.y_train), 64):
            loss = nn.functional.cross_entropy(mlp(data.x_train[i:i + 64]),
                                               data.y_train[i:i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    mlp = mlp.double().eval()
    acc = float((mlp(data.x_test.double()).argmax(1) == data.y_test).double().mean())
    comp = float16_copy(mlp)
    shape = (1, 1, 8, 8)
    rows = []
    for i in range(5 if args.quick else 10):
        x = data.x_test[i:i + 1].double()
        dom = InputDomain.box((x - 3 / 255).clamp(0, 1), (x + 3 / 255).clamp(0, 1), shape=shape)
        ours, t_ours = single_pass(mlp, comp, dom)
        crown, t_crown = tier_bound(mlp, comp, dom, "crown")
        top1 = cc.verify_equivalence(mlp, comp, dom, property="top1", timeout=args.timeout)
        rows.append({"point": i, "single_pass": ours, "single_pass_s": t_ours,
                     "bounds_tier": crown, "bounds_tier_s": t_crown, "top1": top1.status,
                     "top1_s": top1.seconds})
    ratios = [r["bounds_tier"] / r["single_pass"] for r in rows]
    payload["digits"] = {"accuracy": acc, "points": rows,
                         "median_tier_over_single": statistics.median(ratios),
                         "median_single_pass": statistics.median(r["single_pass"] for r in rows),
                         "median_single_pass_s": statistics.median(r["single_pass_s"]
                                                                   for r in rows),
                         "top1_verified": sum(r["top1"] == "verified" for r in rows)}
    print(f"digits 64-100-100-10 (acc {acc:.3f}) vs float16, +-3/255: median single pass "
          f"{payload['digits']['median_single_pass']:.3g}, bounds tier / single pass "
          f"{payload['digits']['median_tier_over_single']:.2f}x, top-1 verified "
          f"{payload['digits']['top1_verified']}/{len(rows)}")
    print(f"written {write_results('equivalence', payload)}")


if __name__ == "__main__":
    main()
