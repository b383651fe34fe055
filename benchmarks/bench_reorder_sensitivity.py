"""How far the bounds tier's bound moves when every weight moves by one ulp: a CPU-side
stand-in for a GPU's other order of summation (docs/bounds.md, "On a GPU").

A bound computed on a GPU is stated ``DEVICE_MARGIN = 2^-31`` (4.7e-10) relative higher
and re-checked on the CPU, which accepts it only within ``[cpu, cpu (1 + 1e-9)]``. That
holds only if the bound is a continuous function of the kernels' last bits. This measures
it: each weight and bias of both networks is multiplied by ``1 + k 2^-52`` (``k`` in
``{-1, 0, 1}``, the same ``k`` at the same position in both, so equal weights stay equal),
the tier recomputed on the CPU, and the largest relative move of the l1 and per-output
bounds over ``--seeds`` draws reported per pair and option set, with the ReLU split's
near-tie rule (``SPLIT_TIES``, :mod:`certcompress.bounds.propagation.relax`) ``"strict"``
(before the rule) and ``"tolerant"`` (the default). Any move above ``DEVICE_MARGIN`` is a
GPU statement that a CPU re-check can refuse. ``--attribute``: for each case that moves
with ``"strict"``, the decisions that flip (``DECISION_HOOK``: the split ``pick``, the
tangent slope ``alpha``, the CROWN rows ``need``) and the move left when each kind is
replayed from the unjittered run.

Run: ``PYTHONPATH=. python benchmarks/bench_reorder_sensitivity.py [--seeds 3]
[--attribute]`` (about 4 minutes on 2 cores, 6 with ``--attribute``); results in
``benchmarks/results/reorder_sensitivity.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
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
from certcompress.bounds.propagation.relax import DECISION_HOOK, SPLIT_TIES  # noqa: E402
from certcompress.bounds.tiers import bounds_tier  # noqa: E402
from certcompress.certificate import MethodBound  # noqa: E402
from certcompress.ir import Graph  # noqa: E402

#: the ReLU split's near-tie rules compared (``SPLIT_TIES``): before and after the rule
RULES = ("strict", "tolerant")
#: the kinds of decisions the engine reports to ``DECISION_HOOK``
KINDS = ("pick", "alpha", "need")

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


class Decisions:
    """A :data:`DECISION_HOOK` that records every discrete choice of a run (``log``) or,
    given another run's log, counts where this run decides differently and replays the
    recorded choice for the kinds in ``replay`` (attribution: a move that vanishes when
    a kind is replayed is that kind's)."""

    def __init__(self, log: list[tuple[str, torch.Tensor]] | None = None,
                 replay: Sequence[str] = ()) -> None:
        self.recording = log is None
        self.log: list[tuple[str, torch.Tensor]] = [] if log is None else log
        self.replay, self.at, self.flips = set(replay), 0, dict[str, int]()

    def __call__(self, kind: str, mask: torch.Tensor) -> torch.Tensor:
        if self.recording:
            self.log.append((kind, mask.clone()))
            return mask
        if self.at >= len(self.log) or self.log[self.at][0] != kind \
                or self.log[self.at][1].shape != mask.shape:
            self.flips["(sequence differs)"] = self.flips.get("(sequence differs)", 0) + 1
            return mask
        ref = self.log[self.at][1]
        self.at += 1
        self.flips[kind] = self.flips.get(kind, 0) + int((ref != mask).sum())
        return ref.clone() if kind in self.replay else mask


def _tier(g: Graph, g2: Graph, dom: cc.InputDomain, opts: PropagationOptions, rule: str,
          hook: Decisions | None = None) -> MethodBound:
    t1, t2 = SPLIT_TIES.set(rule), DECISION_HOOK.set(hook)
    try:
        return bounds_tier(g, g2, dom, opts)
    finally:
        DECISION_HOOK.reset(t2)
        SPLIT_TIES.reset(t1)


def _move(b: MethodBound, base: MethodBound) -> float:
    pairs_ = [(b.bound, base.bound), *zip(b.per_output, base.per_output)]
    return max(abs(x - y) / max(abs(y), 1e-300) for x, y in pairs_)


def _attribute(g: Graph, g2: Graph, dom: cc.InputDomain, opts: PropagationOptions,
               rule: str, seed: int) -> dict[str, Any]:
    """Which decisions flip under the jitter ``seed`` and how much of the move is left
    when each kind (and all) is replayed from the unjittered run."""
    rec = Decisions()
    base = _tier(g, g2, dom, opts, rule, rec)
    jg, jg2 = jitter(g, seed), jitter(g2, seed)
    cmp_ = Decisions(rec.log)
    out: dict[str, Any] = {"move": _move(_tier(jg, jg2, dom, opts, rule, cmp_), base),
                           "flips": cmp_.flips}
    for kinds in (("pick",), ("alpha",), ("need",), KINDS):
        b = _tier(jg, jg2, dom, opts, rule, Decisions(rec.log, kinds))
        out["replay " + "+".join(kinds)] = _move(b, base)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--attribute", action="store_true",
                    help="also replay each kind of decision from the unjittered run "
                         "(rule 'strict', the worst seed) and report what is left")
    args = ap.parse_args()
    rows = []
    t0 = time.perf_counter()
    for name, net, comp, dom in pairs():
        g, g2 = cc.trace(net, dom.shape), cc.trace(comp, dom.shape)
        for oname, kw in OPTIONS.items():
            opts = PropagationOptions(device="cpu", **kw)
            row: dict[str, Any] = {"pair": name, "options": oname}
            for rule in RULES:
                base = _tier(g, g2, dom, opts, rule)
                moves = [_move(_tier(jitter(g, s), jitter(g2, s), dom, opts, rule), base)
                         for s in range(args.seeds)]
                row[rule] = {"bound": base.bound, "max_rel_move": max(moves),
                             "above_margin": max(moves) > DEVICE_MARGIN,
                             "worst_seed": moves.index(max(moves))}
            if args.attribute and row["strict"]["above_margin"]:
                row["attribution"] = _attribute(g, g2, dom, opts, "strict",
                                                row["strict"]["worst_seed"])
            rows.append(row)
            print(f"{name:20s} {oname:12s} " + "  ".join(
                f"{rule}: bound {row[rule]['bound']:.6g} move "
                f"{row[rule]['max_rel_move']:.3g}{'*' if row[rule]['above_margin'] else ''}"
                for rule in RULES), flush=True)
            if "attribution" in row:
                at = row["attribution"]
                left = ", ".join(f"{k[7:]} {v:.3g}" for k, v in at.items()
                                 if k.startswith("replay"))
                print(f"    strict, seed {row['strict']['worst_seed']}: flips {at['flips']}; "
                      f"left after replaying: {left}", flush=True)
    for rule in RULES:
        above = sum(r[rule]["above_margin"] for r in rows)
        print(f"{rule}: {above} of {len(rows)} cases move by more than DEVICE_MARGIN = "
              f"{DEVICE_MARGIN:.3g} (*), largest move "
              f"{max(r[rule]['max_rel_move'] for r in rows):.3g}")
    print(f"({time.perf_counter() - t0:.0f} s, load {os.getloadavg()[0]:.2f})")
    write_results("reorder_sensitivity", {"seeds": args.seeds, "rules": list(RULES),
                                          "rows": rows})


if __name__ == "__main__":
    main()
