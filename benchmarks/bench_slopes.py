"""Optimized ReLU slopes in the bounds tier (``PropagationOptions.slope_steps``,
docs/bounds.md "Optimized slopes"): the certified bound and its cost before and after,
on the digits CNN's W8A8 export over ``[0, 1]^64`` (the pair of
``benchmarks/bench_int8.py``: same seed, training and activation ranges from the bounds
tier over the box) and on a 50%-pruned digits MLP over the same box. For each number of
steps: the bounds tier's bound, the certificate's bound, its ratio to the sampled output
scale and to the largest deviation PGD found, the tier's seconds and how many output rows
had their slopes optimized. Usage::

    python benchmarks/bench_slopes.py [--steps 0 10 30] [--threads N] [--skip-cnn]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import write_results
from torch import nn

from certcompress.api import certify
from certcompress.bounds.propagation.engine import PropagationOptions
from certcompress.certificate import Certificate
from certcompress.demo.digits import (
    DigitsCNN,
    load_digits,
    magnitude_prune_copy,
    train_classifier,
)
from certcompress.domain import InputDomain
from certcompress.export.w8a8 import export_w8a8


def _row(cert: Certificate, seconds: float) -> dict[str, Any]:
    tier = cert.by_method["bounds"]
    m = cert.measurements
    found, scale = m.adversarial_max, m.output_scale
    return {"bound": cert.bound, "bounds_tier": tier.bound, "tier_seconds": tier.seconds,
            "total_seconds": seconds, "slope_rows": tier.details.get("slope_rows"),
            "output_scale": scale, "pgd_found": found,
            "bound_over_scale": None if not scale else cert.bound / scale,
            "bound_over_found": None if not found else cert.bound / found}


def _print(name: str, steps: int, r: dict[str, Any]) -> None:
    print(f"  {name:22s} steps {steps:3d}: bound {r['bound']:.6g} (bounds tier "
          f"{r['bounds_tier']:.6g}, {r['tier_seconds']:.1f} s, {r['slope_rows']} rows "
          f"optimized)  scale {r['output_scale']:.4g} ratio {r['bound_over_scale']:.4f}  "
          f"PGD {r['pgd_found']:.4g} ratio {r['bound_over_found']:.2f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, nargs="+", default=[0, 10, 30])
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-cnn", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)  # as bench_int8.main
    d = load_digits()
    dom = InputDomain.box(0.0, 1.0, shape=(1,) + tuple(d.x_train.shape[1:]))
    results: dict[str, Any] = {"threads": args.threads, "lr": args.lr}
    if not args.skip_cnn:
        cnn = train_classifier(DigitsCNN(), d.x_train, d.y_train, epochs=10, progress=False)
        rows = {}
        with tempfile.TemporaryDirectory() as tmp:
            for steps in args.steps:
                opts = PropagationOptions(intermediate="crown", slope_steps=steps,
                                          slope_lr=args.lr)
                t0 = time.perf_counter()
                res = export_w8a8(cnn, Path(tmp) / "cc.onnx", certify=True, domain=dom,
                                  propagation=opts, search_steps=10, search_restarts=2)
                assert res.certificate is not None
                rows[str(steps)] = _row(res.certificate, time.perf_counter() - t0)
                _print("digits CNN W8A8", steps, rows[str(steps)])
        results["digits_cnn_w8a8"] = rows
    torch.manual_seed(1)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32),
                        nn.ReLU(), nn.Linear(32, 10))
    mlp = train_classifier(mlp, d.x_train, d.y_train, epochs=10, progress=False).eval()
    pruned = magnitude_prune_copy(mlp, 0.5)
    rows = {}
    for steps in args.steps:
        opts = PropagationOptions(slope_steps=steps, slope_lr=args.lr)
        t0 = time.perf_counter()
        cert = certify(mlp, pruned, domain=dom, methods=("bounds",), propagation=opts,
                       search_steps=10, search_restarts=2)
        rows[str(steps)] = _row(cert, time.perf_counter() - t0)
        _print("digits MLP pruned 50%", steps, rows[str(steps)])
    results["digits_mlp_pruned"] = rows
    print("wrote", write_results("slopes", results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
