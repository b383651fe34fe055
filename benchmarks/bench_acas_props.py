"""ACAS-faithful equivalence benchmark (issue 15): the files and the commands of the
ACAS-Xu-vs-float16 benchmark of ReluDiff/NeuroDiff, on networks trained here.

* ``--nets`` K ACAS-like networks (5 inputs, 6 hidden layers of 50 ReLUs, 5 outputs),
  each fitted to a 5-D lookup table (``acas_table`` of bench_equivalence.py, ``--steps``
  Adam steps), and their float16 truncations (weights and biases rounded to float16,
  as ReluDiff's ``round_nnet.py`` does);
* each written as ``.nnet`` (the Reluplex/NNet text format, with the ACAS-Xu
  normalization header) and as ONNX like VNN-COMP's ACAS-Xu files (input ``[1, 1, 1,
  5]``, Flatten, Sub, MatMul, Add, Relu; float32 initializers), plus, for the first
  network, its float16 truncation as an ONNX graph with float16 initializers behind
  ``Cast`` nodes;
* the normalized input boxes of the Reluplex properties phi1, phi3 and phi4 as VNN-LIB
  (``prop_1.vnnlib`` ...; the boxes of VNN-COMP's ACAS-Xu specs, checked against the raw
  boxes and the ACAS-Xu normalization in tests/onnx_import/test_nnet.py);
* ``certcompress equiv-batch`` (one process per CSV) on the ``.nnet`` instances at
  epsilon 0.05 and 0.01, on the ONNX instances at 0.05 (the same verdicts expected), the
  Cast variant at 0.05; ``certcompress equiv`` once per instance (a new process each) on
  a few instances, to measure the per-process start-up (import, load, trace);
* the output scale of the trained networks over each box (sampled), the worst deviation
  found and the certified bound per instance, and an extrapolation to the 129 instances
  of the public benchmark (45 phi1, 42 phi3, 42 phi4), stated as such.

Writes benchmarks/results/acas_props.json (atomically). Run:
``.venv/bin/python benchmarks/bench_acas_props.py`` (``--quick``: 1 network, fewer steps).
The same measurement on the public ACAS-Xu ``.nnet`` files (supplied by the user, never
downloaded): bench_acas_public.py ``--nnet-dir DIR``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from _common import write_results  # type: ignore[import-not-found]
from bench_equivalence import acas_table, float16_copy  # type: ignore[import-not-found]
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from certcompress.capture.nnet import write_nnet

ROOT = Path(__file__).resolve().parent.parent
# The ACAS-Xu normalization (header of ACASXU_run2a_*.nnet): raw units ft, rad, rad,
# ft/s, ft/s; the networks compute on (x - mean) / range.
# (the public run2a files have 499.0 as the first minimum; it clips nothing in the
# property boxes, whose rho is at least 1500)
ACAS_MINS = [499.0, -3.141593, -3.141593, 100.0, 0.0]
ACAS_MAXES = [60760.0, 3.141593, 3.141593, 1200.0, 1200.0]
ACAS_MEANS = [19791.091, 0.0, 0.0, 650.0, 600.0, 7.5188840201]
ACAS_RANGES = [60261.0, 6.28318530718, 6.28318530718, 1100.0, 1200.0, 373.94992]
# Normalized input boxes of the Reluplex properties (Katz et al. 2017), as in VNN-COMP's
# prop_1/3/4.vnnlib and ReluVal/ReluDiff's load_inputs after normalization.
PROPS: dict[str, list[tuple[float, float]]] = {
    "prop_1": [(0.6, 0.6798577687), (-0.5, 0.5), (-0.5, 0.5), (0.45, 0.5), (-0.5, -0.45)],
    "prop_3": [(-0.3035311561, -0.2985528119), (-0.0095492966, 0.0095492966),
               (0.4933803236, 0.5), (0.3, 0.5), (0.3, 0.5)],
    "prop_4": [(-0.3035311561, -0.2985528119), (-0.0095492966, 0.0095492966), (0.0, 0.0),
               (0.3181818182, 0.5), (0.0833333333, 0.1666666667)],
}
# instances of the public benchmark per property (ReluDiff/NeuroDiff: phi1 on all 45
# networks, phi3 and phi4 on 42)
PUBLIC = {"prop_1": 45, "prop_3": 42, "prop_4": 42}


def write_vnnlib(path: Path, box: list[tuple[float, float]]) -> None:
    """An input box as VNN-LIB (the output constraint is not used by equivalence)."""
    lines = [f"; normalized input box of ACAS-Xu {path.stem}"]
    lines += [f"(declare-const X_{i} Real)" for i in range(5)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(5)]
    for i, (lo, hi) in enumerate(box):
        lines += [f"(assert (<= X_{i} {hi!r}))", f"(assert (>= X_{i} {lo!r}))"]
    lines.append("(assert (<= Y_0 Y_1))")
    path.write_text("\n".join(lines) + "\n")


def write_onnx(path: Path, net: nn.Module, *, float16_cast: bool = False) -> None:
    """``net`` (Linear/ReLU Sequential) as a VNN-COMP-like ACAS-Xu graph: X [1, 1, 1, 5]
    -> Flatten -> Sub (zero offset) -> (MatMul, Add, Relu) x 6 -> MatMul, Add. With
    ``float16_cast`` every weight and bias is a float16 initializer behind a Cast to
    float32 (the values must be float16-exact)."""
    linears = [m for m in net if isinstance(m, nn.Linear)]
    nodes = [helper.make_node("Flatten", ["X"], ["flat"], axis=1),
             helper.make_node("Sub", ["flat", "offset"], ["h0"])]
    inits = [numpy_helper.from_array(np.zeros(5, np.float32), "offset")]
    cur = "h0"
    for k, lin in enumerate(linears):
        w = lin.weight.detach().double().numpy().T
        b = lin.bias.detach().double().numpy()
        for name, arr in ((f"W{k}", w), (f"B{k}", b)):
            if float16_cast:
                half = arr.astype(np.float16)
                assert np.array_equal(half.astype(np.float64), arr), name
                inits.append(numpy_helper.from_array(half, name + "_f16"))
                nodes.append(helper.make_node("Cast", [name + "_f16"], [name],
                                              to=TensorProto.FLOAT))
            else:
                single = arr.astype(np.float32)
                assert np.array_equal(single.astype(np.float64), arr), name
                inits.append(numpy_helper.from_array(single, name))
        nodes.append(helper.make_node("MatMul", [cur, f"W{k}"], [f"m{k}"]))
        out = "Y" if k == len(linears) - 1 else f"a{k}"
        nodes.append(helper.make_node("Add", [f"m{k}", f"B{k}"], [out]))
        if k < len(linears) - 1:
            nodes.append(helper.make_node("Relu", [out], [f"r{k}"]))
            cur = f"r{k}"
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 1, 1, 5])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 5])
    model = helper.make_model(helper.make_graph(nodes, "acas_like", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def cli(args: list[str], timeout: float, threads: int | None = None
        ) -> tuple[int, float, str]:
    """Run ``certcompress ARGS`` in a new process; (exit status, wall seconds, output).
    ``threads``: torch's intra-op threads there (OMP_NUM_THREADS; default: torch's)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "certcompress.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, time.perf_counter() - t0, proc.stdout + proc.stderr


def batch(work: Path, name: str, lines: list[str], eps: float, timeout: float,
          threads: int | None = None) -> dict[str, Any]:
    """``certcompress equiv-batch`` on ``lines`` in one process."""
    inst = work / f"{name}.csv"
    inst.write_text("\n".join(lines) + "\n")
    out = work / f"{name}_eps{eps}.out.csv"
    load0 = os.getloadavg()[0]
    rc, wall, text = cli(["equiv-batch", str(inst), "--epsilon", str(eps), "--timeout",
                          str(timeout), "--no-progress", "--out", str(out)],
                         timeout=timeout * len(lines) + 600, threads=threads)
    if rc not in (0, 3, 4):
        raise RuntimeError(f"equiv-batch failed ({rc}):\n{text}")
    with out.open() as f:
        rows = [dict(r) for r in csv.DictReader(f)]
    for r in rows:
        for k in ("bound", "found", "seconds"):
            r[k] = float(r[k])
        r["regions"] = int(r["regions"])
        for k in ("original", "compressed", "vnnlib"):
            r[k] = Path(r[k]).name
    secs = [r["seconds"] for r in rows]
    summary = {"instances": len(rows), "epsilon": eps, "threads": threads or "default",
               "verified": sum(r["status"] == "verified" for r in rows),
               "falsified": sum(r["status"] == "falsified" for r in rows),
               "unknown": sum(r["status"] == "unknown" for r in rows),
               "median_s": statistics.median(secs), "total_s": sum(secs),
               "max_s": max(secs), "process_wall_s": wall,
               "process_overhead_s": wall - sum(secs),
               "load_average": [load0, os.getloadavg()[0]]}
    print(f"  {name} eps={eps} threads={threads}: {summary}", flush=True)
    return {"summary": summary, "rows": rows}


def output_scale(net: nn.Module, comp: nn.Module, box: list[tuple[float, float]],
                 n: int = 20000) -> dict[str, float]:
    """Sampled output magnitude of ``net`` and deviation from ``comp`` over ``box``."""
    g = torch.Generator().manual_seed(0)
    lo = torch.tensor([b[0] for b in box], dtype=torch.float64)
    hi = torch.tensor([b[1] for b in box], dtype=torch.float64)
    x = lo + (hi - lo) * torch.rand(n, 5, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y, yc = net(x), comp(x)
    return {"max_abs_output": float(y.abs().max()), "output_std": float(y.std()),
            "output_spread": float((y.max(0).values - y.min(0).values).max()),
            "sampled_max_deviation": float((y - yc).abs().max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--nets", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2000, help="Adam steps per network")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per instance")
    ap.add_argument("--single", type=int, default=3,
                    help="instances also run by one equiv process each")
    ap.add_argument("--keep", type=Path, default=None,
                    help="write the instance files here (default: a temporary folder)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    n_nets, steps = (1, 300) if args.quick else (args.nets, args.steps)
    work = args.keep if args.keep is not None else Path(tempfile.mkdtemp(prefix="acas_"))
    work.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {"nets": n_nets, "steps": steps, "timeout_s": args.timeout,
                               "load_average_start": os.getloadavg()}
    print(f"instance files in {work}; load average {os.getloadavg()}")

    # ------------------------------------------------------------------ files
    nets = []
    t0 = time.perf_counter()
    for s in range(n_nets):
        net = acas_table(s, steps)
        nets.append((net, float16_copy(net)))
    payload["training_s"] = time.perf_counter() - t0
    print(f"trained {n_nets} networks x {steps} steps in {payload['training_s']:.1f} s")
    for p, box in PROPS.items():
        write_vnnlib(work / f"{p}.vnnlib", box)
    norm = {"input_mins": ACAS_MINS, "input_maxes": ACAS_MAXES, "means": ACAS_MEANS,
            "ranges": ACAS_RANGES}
    nnet_lines, onnx_lines, cast_lines = [], [], []
    scale = []
    for s, (net, comp) in enumerate(nets):
        a, b = f"acas_like_{s}", f"acas_like_{s}_16bit"
        write_nnet(work / f"{a}.nnet", net, header=f"ACAS-like network {s}", **norm)
        write_nnet(work / f"{b}.nnet", comp, header=f"float16 truncation of {a}", **norm)
        write_onnx(work / f"{a}.onnx", net)
        write_onnx(work / f"{b}.onnx", comp)
        if s == 0:
            write_onnx(work / f"{b}_cast.onnx", comp, float16_cast=True)
        for p, box in PROPS.items():
            nnet_lines.append(f"{a}.nnet,{b}.nnet,{p}.vnnlib")
            onnx_lines.append(f"{a}.onnx,{b}.onnx,{p}.vnnlib")
            if s == 0:
                cast_lines.append(f"{a}.onnx,{b}_cast.onnx,{p}.vnnlib")
            scale.append({"network": s, "property": p, **output_scale(net, comp, box)})
    payload["output_scale"] = scale
    print("output scale (sampled):", json.dumps(scale))

    # ------------------------------------------------------------------ equiv-batch
    runs: dict[str, Any] = {}
    for eps in (0.05, 0.01):
        runs[f"nnet eps={eps}"] = batch(work, "instances_nnet", nnet_lines, eps, args.timeout)
    runs["nnet eps=0.05 threads=1"] = batch(work, "instances_nnet", nnet_lines, 0.05,
                                            args.timeout, threads=1)
    runs["nnet eps=0.01 threads=1"] = batch(work, "instances_nnet", nnet_lines, 0.01,
                                            args.timeout, threads=1)
    runs["onnx eps=0.05"] = batch(work, "instances_onnx", onnx_lines, 0.05, args.timeout)
    runs["onnx_cast eps=0.05"] = batch(work, "instances_cast", cast_lines, 0.05,
                                       args.timeout)
    payload["equiv_batch"] = runs
    same = [(x["status"], y["status"]) for x, y in zip(runs["nnet eps=0.05"]["rows"],
                                                       runs["onnx eps=0.05"]["rows"])]
    payload["nnet_onnx_same_verdicts"] = all(x == y for x, y in same)

    # ------------------------------------------------------------------ equiv per process
    single = []
    for line in nnet_lines[:args.single]:
        a, b, spec = line.split(",")
        for eps in (0.05, 0.01):
            res = work / "single.json"
            load0 = os.getloadavg()[0]
            rc, wall, text = cli(["equiv", str(work / a), str(work / b), "--vnnlib",
                                  str(work / spec), "--epsilon", str(eps), "--timeout",
                                  str(args.timeout), "--no-progress", "--out", str(res)],
                                 timeout=args.timeout + 600)
            if rc not in (0, 3, 4):
                raise RuntimeError(f"equiv failed ({rc}):\n{text}")
            data = json.loads(res.read_text())
            single.append({"instance": line, "epsilon": eps, "status": data["status"],
                           "search_s": data["seconds"], "process_wall_s": wall,
                           "overhead_s": wall - data["seconds"], "load_average": load0})
            print(f"  equiv {line} eps={eps}: {single[-1]}", flush=True)
    # a process that only starts, loads, traces and proves a model against itself
    a, _, spec = nnet_lines[0].split(",")
    rc, wall_self, _ = cli(["equiv", str(work / a), str(work / a), "--vnnlib",
                            str(work / spec), "--epsilon", "0.05", "--no-progress"], 600)
    payload["equiv_single"] = single
    payload["self_pair_process_s"] = wall_self
    overhead = statistics.median(r["overhead_s"] for r in single)
    payload["startup_overhead_median_s"] = overhead

    # ------------------------------------------------------------------ extrapolation
    extra: dict[str, Any] = {}
    for key in ("nnet eps=0.05", "nnet eps=0.01", "nnet eps=0.05 threads=1",
                "nnet eps=0.01 threads=1"):
        rows = runs[key]["rows"]
        per_prop = {p: statistics.mean(r["seconds"] for r in rows if r["vnnlib"] == f"{p}.vnnlib")
                    for p in PROPS}
        search = sum(per_prop[p] * PUBLIC[p] for p in PROPS)
        verified = {p: statistics.mean(r["status"] == "verified" for r in rows
                                       if r["vnnlib"] == f"{p}.vnnlib") for p in PROPS}
        extra[key] = {
            "note": ("extrapolated: the mean search seconds of our instances per property "
                     "times the public benchmark's instance count per property (45/42/42); "
                     "our networks are not the ACAS-Xu networks (see output_scale)"),
            "search_s_129": search,
            "batch_total_s_129": search + runs[key]["summary"]["process_overhead_s"],
            "per_process_total_s_129": search + 129 * overhead,
            "verified_fraction_by_property": verified,
            "expected_verified_129": sum(verified[p] * PUBLIC[p] for p in PROPS)}
    payload["extrapolation_129"] = extra
    payload["load_average_end"] = os.getloadavg()
    print(json.dumps(extra, indent=1))
    print(f"written {write_results('acas_props', payload)}")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
