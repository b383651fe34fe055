"""How far the bounds tier's bound moves when every weight moves by one ulp: a CPU-side
stand-in for a GPU's other order of summation (docs/bounds.md, "On a GPU").

A bound computed on a GPU is stated ``DEVICE_MARGIN = 2^-31`` (4.7e-10) relative higher
and re-checked on the CPU, which accepts it only within ``[cpu, cpu (1 + 1e-9)]``. That
holds only if the bound is a continuous function of the kernels' last bits. This measures
it: each weight and bias of both networks is multiplied by ``1 + k 2^-52`` (``k`` in
``{-1, 0, 1}``, the same ``k`` at the same position in both, so equal weights stay equal),
the tier recomputed on the CPU, and the largest relative move of the l1 and per-output
bounds over ``--seeds`` draws reported per pair and option set. Any move above
``DEVICE_MARGIN`` is a GPU statement that a CPU re-check can refuse.

Run: ``PYTHONPATH=. python benchmarks/bench_reorder_sensitivity.py [--seeds 3]``
(about 3 minutes on 2 cores); results in ``benchmarks/results/reorder_sensitivity.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import torch

sys.path[:0] = [os.path.join(os.path.dirname(__file__), "..", "tests"),
                os.path.join(os.path.dirname(__file__), "..", "tests", "bounds")]

from _common import write_results  # type: ignore[import-not-found]  # noqa: E402
from _nets import compress, mlp, random_conv_net  # type: ignore[import-not-found]  # noqa: E402
from propagation_helpers import jitter, random_box  # type: ignore[import-not-found]  # noqa: E402

import certcompress as cc  # noqa: E402
from certcompress.bounds.propagation.device import DEVICE_MARGIN  # noqa: E402
from certcompress.bounds.propagation.engine import PropagationOptions  # noqa: E402
from certcompress.bounds.tiers import bounds_tier  # noqa: E402

OPTIONS: dict[str, dict[str, Any]] = {
    "crown": {"intermediate": "crown"},
    "crown-engine": {"intermediate": "crown", "chain": False},
    "interval": {"intermediate": "interval"},
    "slopes5": {"intermediate": "crown", "slope_steps": 5},
    "crown-rows2": {"intermediate": "crown", "crown_rows_per_node": 2},
    "sign-rows4": {"intermediate": "crown", "sign_rows": 4},
}


def pairs() -> list[tuple[str, torch.nn.Module, torch.nn.Module, cc.InputDomain]]:
    out = []
    for s in range(3):
        net = mlp(6, 16, 3, 4, seed=s)
        out.append((f"mlp-6x16x3-round-{s}", net, compress(net, "round", 1 + s, 0.05),
                    random_box((1, 6), 1 + s)))
    for k, blocks in enumerate((["conv_stride", "residual", "maxpool"],
                                ["conv_bn", "concat", "avgpool", "convT"])):
        cnet, shape = random_conv_net(blocks, 3, 6, 3, seed=10 + k)
        out.append((f"cnn-{k}-prune", cnet, compress(cnet, "prune", 20 + k, 0.4),
                    random_box(shape, 30 + k, max_width=1.0)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    rows = []
    t0 = time.perf_counter()
    for name, net, comp, dom in pairs():
        g, g2 = cc.trace(net, dom.shape), cc.trace(comp, dom.shape)
        for oname, kw in OPTIONS.items():
            opts = PropagationOptions(device="cpu", **kw)
            base = bounds_tier(g, g2, dom, opts)
            moves = []
            for seed in range(args.seeds):
                b = bounds_tier(jitter(g, seed), jitter(g2, seed), dom, opts)
                pairs_ = [(b.bound, base.bound), *zip(b.per_output, base.per_output)]
                moves.append(max(abs(x - y) / max(abs(y), 1e-300) for x, y in pairs_))
            row = {"pair": name, "options": oname, "bound": base.bound,
                   "max_rel_move": max(moves), "above_margin": max(moves) > DEVICE_MARGIN}
            rows.append(row)
            print(f"{name:24s} {oname:12s} bound {base.bound:.6g}  max relative move "
                  f"{max(moves):.3g}{'  > DEVICE_MARGIN' if row['above_margin'] else ''}",
                  flush=True)
    above = sum(r["above_margin"] for r in rows)
    print(f"{above} of {len(rows)} cases move by more than DEVICE_MARGIN = "
          f"{DEVICE_MARGIN:.3g} ({time.perf_counter() - t0:.0f} s, load "
          f"{os.getloadavg()[0]:.2f})")
    write_results("reorder_sensitivity", {"seeds": args.seeds, "rows": rows})


if __name__ == "__main__":
    main()
