"""The public ACAS-Xu equivalence benchmark of ReluDiff/NeuroDiff (issue 15), run on
``.nnet`` files the user supplies: ``--nnet-dir DIR`` (this script never downloads).

The public benchmark pairs each ACAS-Xu network (``ACASXU_run2a_I_J_batch_2000.nnet``,
45 networks, 5 inputs, 6 hidden layers of 50 ReLUs, 5 outputs; distributed with Reluplex,
e.g. its repository's ``nnet/`` folder) with its float16 truncation, over the normalized
input boxes of the Reluplex properties phi1 (all 45 networks), phi3 and phi4 (all but
N_1_7, N_1_8, N_1_9): 129 instances. For every ``*.nnet`` in DIR (files ending in
``_16bit.nnet`` are skipped) this script

* writes its float16 truncation to a work folder: every weight and bias rounded to the
  nearest float16 (``numpy.float16`` of the float64 value, as ReluDiff's
  ``round_nnet.py`` does), the header copied; :func:`float16_truncation`;
* writes the boxes as VNN-LIB (``write_vnnlib`` and ``PROPS`` of bench_acas_props.py);
* runs ``certcompress equiv-batch`` on all instances in one process per epsilon
  (default 0.05 and 0.01, norm inf, ``OMP_NUM_THREADS=1``), ``--timeout`` seconds per
  instance;
* samples each instance's output scale and float16 deviation (20k points);
* extrapolates to the 129 public instances (mean seconds and verified fraction per
  property times 45 / 42 / 42) when DIR holds fewer networks, stated as such.

Writes benchmarks/results/acas_public.json (atomically; figures only, no weights). Run:
``.venv/bin/python benchmarks/bench_acas_public.py --nnet-dir ~/acas-nnet --timeout 600``.
The public figures measured this way are in docs/equivalence.md ("Public ACAS-Xu
networks").
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import write_results  # type: ignore[import-not-found]
from bench_acas_props import (  # type: ignore[import-not-found]
    PROPS,
    PUBLIC,
    batch,
    output_scale,
    write_vnnlib,
)

from certcompress.capture.nnet import NNetFile, read_nnet, write_nnet

# Reluplex checks phi3 and phi4 on every network but these (their advisories differ)
NO_PHI34 = {(1, 7), (1, 8), (1, 9)}
_NAME = re.compile(r"ACASXU_run2a_(\d+)_(\d+)_batch_2000$")


def float16_truncation(f: NNetFile) -> NNetFile:
    """``f`` with every weight and bias rounded to the nearest float16 (round half to
    even, from the float64 value, as ``numpy.float16`` in ReluDiff's ``round_nnet.py``);
    the normalization is kept. A value beyond float16's range (|x| > 65504) would become
    infinite: a ValueError names its layer."""
    def half(t: torch.Tensor, what: str) -> torch.Tensor:
        with np.errstate(over="ignore"):
            out = t.detach().double().numpy().astype(np.float16).astype(np.float64)
        if not np.isfinite(out).all():
            raise ValueError(f"{f.path}: {what} has a value beyond float16's range "
                             f"(largest magnitude {float(t.abs().max()):.6g} > 65504); its "
                             "float16 truncation would be infinite")
        return torch.from_numpy(out)
    return dataclasses.replace(
        f, weights=tuple(half(w, f"layer {k + 1}'s weights") for k, w in enumerate(f.weights)),
        biases=tuple(half(b, f"layer {k + 1}'s biases") for k, b in enumerate(f.biases)))


def properties_of(stem: str) -> list[str]:
    """The public benchmark's properties for the network file ``stem``: phi1, phi3 and
    phi4, without phi3/phi4 for N_1_7..N_1_9; every property for other names."""
    m = _NAME.fullmatch(stem)
    if m is not None and (int(m.group(1)), int(m.group(2))) in NO_PHI34:
        return ["prop_1"]
    return list(PROPS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nnet-dir", type=Path, required=True,
                    help="folder holding the public ACAS-Xu .nnet files (downloaded by "
                         "you; this script never downloads)")
    ap.add_argument("--epsilons", default="0.05,0.01",
                    help="comma-separated epsilons (default 0.05,0.01)")
    ap.add_argument("--timeout", type=float, default=600.0,
                    help="seconds per instance (default 600, the issue's cap at 0.01)")
    ap.add_argument("--keep", type=Path, default=None,
                    help="write the instance files here (default: a temporary folder)")
    args = ap.parse_args()
    if not args.nnet_dir.is_dir():
        sys.exit(f"--nnet-dir {args.nnet_dir}: not a folder; put the public ACAS-Xu .nnet "
                 "files there (e.g. ACASXU_run2a_1_1_batch_2000.nnet)")
    files = sorted(p for p in args.nnet_dir.glob("*.nnet")
                   if not p.stem.endswith("_16bit"))
    if not files:
        sys.exit(f"--nnet-dir {args.nnet_dir} holds no .nnet file; put the public ACAS-Xu "
                 "networks there (ACASXU_run2a_I_J_batch_2000.nnet)")
    try:
        epsilons = [float(e) for e in args.epsilons.split(",")]
    except ValueError:
        sys.exit(f"--epsilons must be comma-separated numbers, got {args.epsilons!r}")
    torch.set_num_threads(1)
    work = args.keep if args.keep is not None else Path(tempfile.mkdtemp(prefix="acaspub_"))
    work.mkdir(parents=True, exist_ok=True)
    for p, box in PROPS.items():
        write_vnnlib(work / f"{p}.vnnlib", box)

    lines: list[str] = []
    networks: list[dict[str, Any]] = []
    for path in files:
        f = read_nnet(path)
        if f.layer_sizes[0] != 5 or f.layer_sizes[-1] != 5:
            sys.exit(f"{path}: layer sizes {f.layer_sizes}; the ACAS-Xu networks have 5 "
                     "inputs and 5 outputs")
        half = float16_truncation(f)
        orig = work / path.name
        comp = work / f"{path.stem}_16bit.nnet"
        shutil.copyfile(path, orig)
        write_nnet(comp, half, header=f"float16 truncation of {path.name}")
        step = max(float((w - h).abs().max()) for w, h in zip(f.weights + f.biases,
                                                               half.weights + half.biases))
        scale = {}
        for p in properties_of(path.stem):
            lines.append(f"{orig.name},{comp.name},{p}.vnnlib")
            scale[p] = output_scale(f.module(), half.module(), PROPS[p])
        networks.append({"file": path.name, "layer_sizes": list(f.layer_sizes),
                         "max_weight_rounding": step, "output_scale": scale})
        print(f"{path.name}: layers {f.layer_sizes}, largest rounding {step:.3g}, sampled "
              "float16 deviation " + ", ".join(f"{p} {s['sampled_max_deviation']:.3g}"
                                               for p, s in scale.items()), flush=True)

    payload: dict[str, Any] = {"nnet_dir": str(args.nnet_dir), "networks": networks,
                               "timeout_s": args.timeout, "load_average_start": os.getloadavg(),
                               "equiv_batch": {}, "extrapolation_129": {}}
    for eps in epsilons:
        run = batch(work, "instances_public", lines, eps, args.timeout, threads=1)
        payload["equiv_batch"][f"eps={eps}"] = run
        rows = run["rows"]
        per_prop: dict[str, Any] = {}
        for p in PROPS:
            mine = [r for r in rows if r["vnnlib"] == f"{p}.vnnlib"]
            if mine:
                per_prop[p] = {"instances": len(mine),
                               "mean_s": statistics.mean(r["seconds"] for r in mine),
                               "verified_fraction": statistics.mean(
                                   r["status"] == "verified" for r in mine)}
        for r in rows:
            print(f"  eps={eps} {r['original']} {r['vnnlib']}: {r['status']}, "
                  f"{r['regions']} regions, {r['seconds']:.2f} s, bound {r['bound']:.3g}, "
                  f"found {r['found']:.3g}", flush=True)
        if all(p in per_prop for p in PROPS):
            payload["extrapolation_129"][f"eps={eps}"] = {
                "note": ("extrapolated from the instances run: mean search seconds and "
                         "verified fraction per property times the public counts 45/42/42"),
                "per_property": per_prop,
                "search_s_129": sum(per_prop[p]["mean_s"] * PUBLIC[p] for p in PROPS),
                "expected_verified_129": sum(per_prop[p]["verified_fraction"] * PUBLIC[p]
                                             for p in PROPS)}
    payload["load_average_end"] = os.getloadavg()
    print(f"written {write_results('acas_public', payload)}")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
