"""The ``demo`` command: a thin layer over :func:`certcompress.demo.run.run_demo`."""

from __future__ import annotations

import argparse
from typing import Any

from ..demo.run import run_demo

__all__ = ["register"]

Subparsers = Any  # argparse._SubParsersAction (private type)


def register(subparsers: Subparsers) -> None:
    p = subparsers.add_parser("demo", help="run the end-to-end example on scikit-learn digits")
    p.add_argument("--out", default="out/demo", help="output directory (default out/demo)")
    p.add_argument("--sparsity", type=float, default=0.5,
                   help="sparsity of the pruning shown next to the budget search (default 0.5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--local-points", type=int, default=20,
                   help="test points that get a local certificate (default 20, ~2 s each)")
    p.add_argument("--local-eps", type=float, default=0.02,
                   help="radius of the l_inf balls of the local certificates (default 0.02)")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(args.out, args.sparsity, args.seed, local_points=args.local_points,
                    local_eps=args.local_eps)
