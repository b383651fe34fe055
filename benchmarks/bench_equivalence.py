"""Equivalence-verification benchmark (issue 15): branch-and-bound with the differential
single pass, on instances of the class of the ACAS-Xu-vs-float16 benchmark of NeuroDiff.

* ACAS-like, two families of 5-input MLPs with 6 hidden layers of 50 ReLUs, trained in
  this run and paired with the same network with its weights cast to float16 (kept as
  float64 values), over regions as wide as an operational envelope (the full range of
  three inputs, narrow ranges of the other two):
  - ``smooth``: fitted to a smooth 5-D function (seconds of training; easy: the root
    single-pass bound is ~4x epsilon = 0.05);
  - ``table``: fitted to a 5-D lookup table (random values on an 8^5 grid, multilinear
    interpolation, as the ACAS-Xu networks fit their score tables); sharper, so larger
    weights and many more switching ReLUs (the root bound is ~60x epsilon = 0.05, the
    interval bound ~600x), closer to the public networks.
  Verified / falsified / unknown counts, median and total seconds at epsilon 0.05 and
  0.01 (l_inf, per output), after (``verify_equivalence``) and, with ``--before``, with
  the configuration before this round (the smaller of two whole back-substitution passes
  per row, ``relaxation="min2"``, and the split on the worst row alone,
  ``split="worst"``; the same search otherwise); the single-pass bound (the root region)
  against the bounds tier of ``certify`` (``certcompress.bounds.tiers.bounds_tier``).
* digits: a 64-100-100-10 MLP on scikit-learn's digits against its float16 cast, over
  +-3/255 boxes around test images (clipped to [0, 1]): single-pass l_inf bound (this
  relaxation, the two-pass one, the pre-part-1 one) against the bounds tier, and top-1
  equivalence on each box.
* parallel: the serial search against ``executor="local"`` (warm helper processes kept
  between calls, and cold: started during the call) and ``executor="ray"`` (``--workers``
  2, counting the calling process; Ray started with 2 CPUs), interleaved and repeated,
  with the load average around each run: one table instance, and several table
  instances one after the other in one process (as ``equiv-batch`` runs them).

Writes benchmarks/results/equivalence.json. Run:
``.venv/bin/python benchmarks/bench_equivalence.py`` (``--quick`` for a smaller run).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import os
import statistics
import time
from collections.abc import Callable
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
from certcompress.equivalence import close_pools
from certcompress.equivalence.chain import ChainState, chain_from_pair
from certcompress.equivalence.parallel import warm_pools
from certcompress.equivalence.properties import EpsilonProperty
from certcompress.equivalence.search import Bounder, SearchConfig, run_search

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

    return _fit(target, seed, steps, g, cosine=False)


def acas_table(seed: int, steps: int, grid: int = 8) -> nn.Module:
    """A 6x50 ReLU MLP fitted to a 5-D lookup table: random scores on a ``grid``^5 grid
    over the input box, multilinear interpolation between the grid points."""
    g = torch.Generator().manual_seed(seed)
    table = torch.randn((grid,) * 5 + (5,), generator=g)
    corners = torch.tensor(list(itertools.product((0, 1), repeat=5)))
    lo, hi = LO.float(), HI.float()

    def target(x: torch.Tensor) -> torch.Tensor:
        u = (x - lo) / (hi - lo) * (grid - 1)
        i0 = u.floor().clamp(0, grid - 2).long()
        f = u - i0
        out = torch.zeros(x.shape[0], 5)
        for c in corners:
            w = torch.where(c.bool(), f, 1 - f).prod(1, keepdim=True)
            out = out + w * table[tuple((i0 + c).T)]
        return out

    return _fit(target, seed, steps, g, cosine=True)


def _fit(target: Callable[[torch.Tensor], torch.Tensor], seed: int, steps: int,
         g: torch.Generator, *, cosine: bool) -> nn.Module:
    """A 6x50 ReLU MLP (5 inputs, 5 outputs) fitted to ``target`` on uniform points of the
    box by Adam (cosine-annealed when ``cosine``); float64, eval mode."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    d = 5
    for _ in range(6):
        layers += [nn.Linear(d, 50), nn.ReLU()]
        d = 50
    net = nn.Sequential(*layers, nn.Linear(50, 5))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if cosine else None
    lo, hi = LO.float(), HI.float()
    for _ in range(steps):
        x = lo + (hi - lo) * torch.rand(2048, 5, generator=g)
        loss = ((net(x) - target(x)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
    return net.double().eval()


def digits_mlp(epochs: int) -> tuple[nn.Module, Any, float]:
    """A 64-100-100-10 MLP trained on scikit-learn's digits (seed 0, Adam, batches of 64),
    in float64 and eval mode, its digits data and its test accuracy."""
    data = load_digits()
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 100), nn.ReLU(), nn.Linear(100, 100),
                        nn.ReLU(), nn.Linear(100, 10))
    opt = torch.optim.Adam(mlp.parameters(), lr=1e-3)
    for _ in range(epochs):
        for i in range(0, len(data.y_train), 64):
            loss = nn.functional.cross_entropy(mlp(data.x_train[i:i + 64]),
                                               data.y_train[i:i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    mlp = mlp.double().eval()
    acc = float((mlp(data.x_test.double()).argmax(1) == data.y_test).double().mean())
    return mlp, data, acc


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


def single_pass(net: nn.Module, comp: nn.Module, dom: InputDomain,
                relaxation: str = "choose", optimize: int = 0) -> tuple[float, float]:
    """(l_inf bound of the equivalence single pass, seconds). ``relaxation``: of the ReLU
    pairs (``"choose"``: per neuron, one pass; ``"min2"``: the smaller of two whole
    passes, before this round; ``"default"``: before issue 15 part 1); ``optimize``:
    slope-optimization steps on the output rows."""
    pair = lower_pair(cc.trace(net, dom.shape), cc.trace(comp, dom.shape))
    chain = chain_from_pair(pair)
    assert chain is not None
    prop = EpsilonProperty(pair.output_size, 1.0, "inf")
    t0 = time.perf_counter()
    lo, hi = dom.lower_tensor().reshape(1, -1), dom.upper_tensor().reshape(1, -1)
    _, cd, r = prop.rows(torch.zeros(1, pair.output_size, dtype=torch.float64))
    state = ChainState(chain, lo, hi, intermediate="crown", quantities=("z", "d"),
                       relaxation=relaxation)
    ub = state.upper_bounds(None, cd, torch.zeros(r, dtype=torch.long), optimize=optimize)[0]
    return float(ub.amax().clamp(min=0)), time.perf_counter() - t0


def verify_before(net: nn.Module, comp: nn.Module, dom: InputDomain, eps: float,
                  timeout: float) -> dict[str, Any]:
    """The search with the configuration before this round: the two-pass relaxation and
    the worst-row split (same search, same budget); ``verify_equivalence``'s keys."""
    pair = lower_pair(cc.trace(net, dom.shape), cc.trace(comp, dom.shape))
    prop = EpsilonProperty(pair.output_size, eps, "inf")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = run_search(Bounder(pair, relaxation="min2"), prop,
                         dom.lower_tensor().reshape(-1), dom.upper_tensor().reshape(-1),
                         SearchConfig(timeout=timeout, split="worst"))
    finally:
        torch.set_num_threads(threads)
    return res


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


def run_family(instances: list[tuple[str, nn.Module, nn.Module, InputDomain]], eps: float,
               args: argparse.Namespace, before: bool) -> dict[str, Any]:
    rows = []
    for name, net, comp, dom in instances:
        if before:
            r = verify_before(net, comp, dom, eps, args.timeout)
            rows.append({"instance": name, "status": r["status"], "seconds": r["seconds"],
                         "regions": r["regions"], "found": r["found"]})
        else:
            v = cc.verify_equivalence(net, comp, dom, epsilon=eps, timeout=args.timeout,
                                      split_candidates=args.split_candidates,
                                      optimize_steps=args.optimize)
            rows.append({"instance": name, "status": v.status, "seconds": v.seconds,
                         "regions": v.regions, "bound": v.bound, "found": v.found})
    return {"summary": summarize(rows), "instances": rows}


ARMS_DOC = {
    "serial": "executor=None",
    "local_warm": "executor='local', helper processes kept from the previous (local_cold) "
                  "run",
    "local_cold": "executor='local' after close_pools(): the helper starts during the call",
    "ray": "executor='ray' in a Ray instance of --workers CPUs started before the runs, "
           "its workers warmed by an untimed call",
}


def _parallel_arms(args: argparse.Namespace) -> tuple[list[tuple[str, str | None]], Any]:
    """The arms (name, executor) and the Ray module (None without Ray; started here)."""
    # local_cold leaves its helpers running: local_warm, next, uses them
    arms: list[tuple[str, str | None]] = [("serial", None), ("local_cold", "local"),
                                          ("local_warm", "local")]
    ray: Any = None
    try:
        import ray  # optional heavy dependency
    except ImportError:
        print("  parallel: Ray is not installed, no ray arm")
    if ray is not None:
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
        arms.append(("ray", "ray"))
    return arms, ray


def _helper_cpu() -> dict[int, float]:
    """CPU seconds (user + system) of each warm local helper process (Linux /proc)."""
    out = {}
    for pids in warm_pools().values():
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def _timed(arm: str, executor: str | None, instances: list[tuple[str, nn.Module, nn.Module,
                                                                 InputDomain]],
           kw: dict[str, Any], workers: int) -> dict[str, Any]:
    """Verify ``instances`` one after the other in this process on one arm; with the CPU
    seconds of the caller (every thread of this process) and of the local helpers (a
    cold helper's include its start-up), which the load of other processes does not
    inflate as it does the wall time."""
    if arm == "local_cold":
        close_pools()
    load0 = os.getloadavg()[0]
    h0 = _helper_cpu()
    c0 = time.process_time()
    t = time.perf_counter()
    res = [cc.verify_equivalence(net, comp, dom, **kw) if executor is None else
           cc.verify_equivalence(net, comp, dom, executor=executor, workers=workers, **kw)
           for _, net, comp, dom in instances]
    wall = time.perf_counter() - t
    caller_cpu = time.process_time() - c0
    h1 = _helper_cpu()
    return {"arm": arm, "wall_s": wall, "caller_cpu_s": caller_cpu,
            "helper_cpu_s": sum(v - h0.get(pid, 0.0) for pid, v in h1.items())
            if executor == "local" else None,
            "load_average": (load0, os.getloadavg()[0]),
            "results": [(r.status, r.regions, r.bound, r.found, r.counterexample)
                        for r in res],
            "seconds": [r.seconds for r in res],
            "chunks": [r.details.get("chunks") for r in res],
            "helpers_warm": [r.details.get("helpers_warm") for r in res]}


def parallel(families: dict[str, list[tuple[str, nn.Module, nn.Module, InputDomain]]],
             args: argparse.Namespace) -> dict[str, Any]:
    """Serial against the parallel executors (``ARMS_DOC``), interleaved (serial,
    local_cold, local_warm, ray, serial, ...) ``--parallel-repeat`` times with the load
    average around each run (the machine may be shared: the ratios are of the medians):
    ``single``, the first table instance at ``--parallel-epsilon``; ``batch``, the first
    ``--parallel-instances`` table instances one after the other in this process (as
    ``equiv-batch`` runs them: warm helpers pay their start-up once)."""
    table = families["table"] or families["smooth"]
    kw: dict[str, Any] = {"epsilon": args.parallel_epsilon, "timeout": args.timeout,
                          "batch": 256, "chunk": 64}
    arms, ray = _parallel_arms(args)
    out: dict[str, Any] = {"epsilon": args.parallel_epsilon, "workers": args.workers,
                           "arms": {a: ARMS_DOC[a] for a, _ in arms}}
    try:
        for part, instances in (("single", table[:1]),
                                ("batch", table[:args.parallel_instances])):
            if part not in args.parallel_parts.split(","):
                continue
            # warm Ray's workers (untimed)
            for arm, executor in arms:
                if arm == "ray":
                    _timed(arm, executor, instances[:1], kw, args.workers)
            runs = []
            for _ in range(args.parallel_repeat):
                for arm, executor in arms:
                    runs.append(_timed(arm, executor, instances, kw, args.workers))
                    r = runs[-1]
                    print(f"  parallel {part} {arm}: {r['wall_s']:.2f} s (CPU caller "
                          f"{r['caller_cpu_s']:.2f} s, helpers {r['helper_cpu_s']}), load "
                          f"{r['load_average'][0]:.2f}-{r['load_average'][1]:.2f}, "
                          f"regions {[x[1] for x in r['results']]}, chunks {r['chunks']}",
                          flush=True)
            med = {arm: statistics.median(r["wall_s"] for r in runs if r["arm"] == arm)
                   for arm, _ in arms}
            same = len({repr(r["results"]) for r in runs}) == 1
            out[part] = {"instances": [n for n, *_ in instances], "runs": runs,
                         "median_wall_s": med, "same_results_on_every_arm": same,
                         "speedup": {a: med["serial"] / med[a] for a in med if a != "serial"}}
            print(f"  parallel {part}: medians {med}, speed-up {out[part]['speedup']}, "
                  f"same results {same}", flush=True)
    finally:
        if ray is not None:
            ray.shutdown()
        close_pools()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--nets", type=int, default=2, help="smooth-family networks")
    ap.add_argument("--regions", type=int, default=6, help="regions per smooth network")
    ap.add_argument("--table-nets", type=int, default=1, help="table-family networks")
    ap.add_argument("--table-regions", type=int, default=3,
                    help="regions per table network")
    ap.add_argument("--table-steps", type=int, default=3000)
    ap.add_argument("--before", action="store_true",
                    help="also run the configuration before this round (two-pass "
                         "relaxation, worst-row split) on the same instances")
    ap.add_argument("--split-candidates", type=int, default=1,
                    help="strong branching over this many dimensions (1: off)")
    ap.add_argument("--optimize", type=int, default=0,
                    help="slope-optimization steps per region")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--parallel-epsilon", type=float, default=0.05,
                    help="epsilon of the parallel run (on the first table instance)")
    ap.add_argument("--parallel-repeat", type=int, default=3,
                    help="interleaved repeats of the parallel arms")
    ap.add_argument("--parallel-instances", type=int, default=3,
                    help="table instances of the parallel batch part (one process)")
    ap.add_argument("--parallel-parts", default="single,batch",
                    help="parts of the parallel run: single and/or batch")
    args = ap.parse_args()
    torch.set_num_threads(1)
    n_nets, n_regions, steps = (1, 3, 400) if args.quick else (args.nets, args.regions, 1500)
    t_nets, t_regions, t_steps = ((1, 1, 1000) if args.quick else
                                  (args.table_nets, args.table_regions, args.table_steps))
    payload: dict[str, Any] = {"acas_like": {}, "digits": {},
                               "load_average_start": os.getloadavg()}

    # ------------------------------------------------------------------ ACAS-like
    families: dict[str, list[tuple[str, nn.Module, nn.Module, InputDomain]]] = {
        "smooth": [], "table": []}
    for s in range(n_nets):
        net = acas_like(s, steps)
        comp = float16_copy(net)
        for k, dom in enumerate(acas_regions(s, n_regions)):
            families["smooth"].append((f"smooth{s}/region{k}", net, comp, dom))
    for s in range(t_nets):
        net = acas_table(s, t_steps)
        comp = float16_copy(net)
        for k, dom in enumerate(acas_regions(s, t_regions)):
            families["table"].append((f"table{s}/region{k}", net, comp, dom))
    for fam, instances in families.items():
        print(f"ACAS-like {fam}: {len(instances)} instances (6x50 ReLU MLPs vs float16)")
        out: dict[str, Any] = {}
        sp_rows = []
        for name, net, comp, dom in instances[:2]:
            ours, t_ours = single_pass(net, comp, dom)
            two, t_two = single_pass(net, comp, dom, relaxation="min2")
            base, _ = single_pass(net, comp, dom, relaxation="default")
            ib, t_ib = tier_bound(net, comp, dom, "interval")
            crown, t_crown = tier_bound(net, comp, dom, "crown")
            sp_rows.append({"instance": name, "single_pass": ours, "single_pass_s": t_ours,
                            "single_pass_min2": two, "single_pass_min2_s": t_two,
                            "single_pass_default": base, "bounds_tier_crown": crown,
                            "bounds_tier_crown_s": t_crown, "bounds_tier_interval": ib})
            print(f"  single pass {name}: {ours:.4g} ({t_ours:.2f} s; two passes {two:.4g} "
                  f"({t_two:.2f} s), pre-part-1 {base:.4g}) bounds tier crown {crown:.4g}, "
                  f"interval {ib:.4g}")
        out["single_pass"] = sp_rows
        for eps in (0.05, 0.01):
            for before in ((False, True) if args.before else (False,)):
                key = f"eps={eps}" + (" before" if before else "")
                out[key] = run_family(instances, eps, args, before)
                print(f"  {fam} {key}: {out[key]['summary']}", flush=True)
        payload["acas_like"][fam] = out

    # ------------------------------------------------------------------ parallel
    payload["parallel"] = parallel(families, args)

    # ------------------------------------------------------------------ digits
    mlp, data, acc = digits_mlp(30 if args.quick else 60)
    comp = float16_copy(mlp)
    shape = (1, 1, 8, 8)
    rows = []
    for i in range(5 if args.quick else 10):
        x = data.x_test[i:i + 1].double()
        dom = InputDomain.box((x - 3 / 255).clamp(0, 1), (x + 3 / 255).clamp(0, 1), shape=shape)
        ours, t_ours = single_pass(mlp, comp, dom)
        two, t_two = single_pass(mlp, comp, dom, relaxation="min2")
        before, _ = single_pass(mlp, comp, dom, relaxation="default")
        opt, t_opt = single_pass(mlp, comp, dom, optimize=20)
        crown, t_crown = tier_bound(mlp, comp, dom, "crown")
        # input splitting, as when these figures were first taken; split="auto" (ReLU
        # splitting here) is compared in bench_relu_split.py
        top1 = cc.verify_equivalence(mlp, comp, dom, property="top1", split="input",
                                     timeout=min(args.timeout, 60.0))
        rows.append({"point": i, "single_pass": ours, "single_pass_s": t_ours,
                     "single_pass_min2": two, "single_pass_min2_s": t_two,
                     "single_pass_before": before, "single_pass_opt20": opt,
                     "single_pass_opt20_s": t_opt,
                     "bounds_tier": crown, "bounds_tier_s": t_crown, "top1": top1.status,
                     "top1_s": top1.seconds})
    ratios = [r["bounds_tier"] / r["single_pass"] for r in rows]
    payload["digits"] = {"accuracy": acc, "points": rows,
                         "median_tier_over_single": statistics.median(ratios),
                         "median_single_pass": statistics.median(r["single_pass"] for r in rows),
                         "median_single_pass_before": statistics.median(
                             r["single_pass_before"] for r in rows),
                         "median_single_pass_min2": statistics.median(
                             r["single_pass_min2"] for r in rows),
                         "median_single_pass_min2_s": statistics.median(
                             r["single_pass_min2_s"] for r in rows),
                         "median_single_pass_opt20": statistics.median(
                             r["single_pass_opt20"] for r in rows),
                         "median_single_pass_s": statistics.median(r["single_pass_s"]
                                                                   for r in rows),
                         "top1_verified": sum(r["top1"] == "verified" for r in rows)}
    print(f"digits 64-100-100-10 (acc {acc:.3f}) vs float16, +-3/255: median single pass "
          f"{payload['digits']['median_single_pass']:.4g} in "
          f"{payload['digits']['median_single_pass_s']:.3f} s (two passes "
          f"{payload['digits']['median_single_pass_min2']:.4g} in "
          f"{payload['digits']['median_single_pass_min2_s']:.3f} s, pre-part-1 "
          f"{payload['digits']['median_single_pass_before']:.3g}, 20 opt steps "
          f"{payload['digits']['median_single_pass_opt20']:.3g}), bounds tier / single pass "
          f"{payload['digits']['median_tier_over_single']:.2f}x, top-1 verified "
          f"{payload['digits']['top1_verified']}/{len(rows)}")
    print(f"written {write_results('equivalence', payload)}")


if __name__ == "__main__":
    main()
