"""``certcompress equiv``: equivalence verification from the shell (a thin layer over
:func:`certcompress.equivalence.verify_equivalence`).

    certcompress equiv ORIGINAL COMPRESSED (--domain LO:HI | --vnnlib SPEC)
                       [--input-shape 1 5] [--epsilon 0.05 --norm inf | --property top1
                       [--confidence 0.9]] [--timeout 60] [--max-regions N]
                       [--executor serial|local|ray] [--workers N] [--out result.json]

Exit status: 0 verified, 3 falsified, 4 unknown (budget reached); 2 on a usage error.
With several VNN-LIB boxes each is verified in turn; the verdict is falsified if one
is, verified if all are, unknown otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from .._io import atomic_write_text
from ..capture import plugin_manager
from ..domain import InputDomain
from ..equivalence.result import EquivalenceResult
from ..equivalence.verify import NORMS, PROPERTIES, verify_equivalence
from ..equivalence.vnnlib import read_vnnlib
from ..errors import ConfigurationError
from ..loading import load_module

__all__ = ["register", "run"]

EXIT_CODES = {"verified": 0, "falsified": 3, "unknown": 4}


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "equiv", help="prove or refute that COMPRESSED stays within epsilon of ORIGINAL "
                      "(or keeps its decisions) on an input box",
        description="Equivalence verification by branch-and-bound over input splitting. "
                    "Exit 0: verified, 3: falsified (a counterexample is written), 4: "
                    "unknown (timeout or region budget).")
    p.add_argument("original", metavar="ORIGINAL", help="model spec (model.py:make, ...)")
    p.add_argument("compressed", metavar="COMPRESSED", help="model spec of the compressed "
                                                             "model (same architecture)")
    p.add_argument("--weights", metavar="W", help="state dict of ORIGINAL")
    p.add_argument("--compressed-weights", metavar="W", help="state dict of COMPRESSED")
    p.add_argument("--plugin", action="append", default=[], metavar="PKG.MOD:ATTR",
                   help="load a plugin by name first (repeatable)")
    p.add_argument("--input-shape", nargs="+", type=int, metavar="N",
                   help="input shape, batch first (default: (1, number of VNN-LIB inputs) or "
                        "the plugin's)")
    dom = p.add_mutually_exclusive_group(required=True)
    dom.add_argument("--domain", metavar="LO:HI",
                     help="the box LO <= x <= HI for every feature (write --domain=-1:1 when LO is negative)")
    dom.add_argument("--vnnlib", metavar="SPEC", help="input box(es) from a VNN-LIB file")
    p.add_argument("--epsilon", type=float, help="largest allowed deviation (property "
                                                 "epsilon)")
    p.add_argument("--norm", choices=NORMS, default="inf",
                   help="deviation norm: inf (per output, default) or l1")
    p.add_argument("--property", choices=PROPERTIES, default=None,
                   help="epsilon (default with --epsilon) or top1 (argmax never changes)")
    p.add_argument("--confidence", type=float,
                   help="top1 only where the original's softmax confidence >= this, in "
                        "(0.5, 1)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
    p.add_argument("--max-regions", type=int, default=200_000, help="region budget")
    p.add_argument("--executor", choices=("serial", "local", "ray"), default="serial",
                   help="where each round's regions are bounded (default serial)")
    p.add_argument("--workers", type=int, help="processes for --executor local / CPUs for ray")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", metavar="FILE", help="write the JSON result here (atomically)")
    p.set_defaults(func=run)


def _domain_arg(text: str, shape: tuple[int, ...]) -> InputDomain:
    parts = text.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        lo, hi = float(parts[0]), float(parts[1])
    except ValueError:
        raise ConfigurationError(f"--domain must be LO:HI with two numbers, e.g. -1:1; got "
                                 f"{text!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ConfigurationError(f"--domain bounds must be finite, got {text!r}")
    if lo > hi:
        raise ConfigurationError(f"--domain is empty: {lo:g} > {hi:g}")
    return InputDomain.box(lo, hi, shape=shape, description=f"box [{lo:g}, {hi:g}] (--domain)")


def _shape(args: argparse.Namespace, model: nn.Module, n_vnnlib: int | None
           ) -> tuple[int, ...]:
    if args.input_shape:
        if any(s <= 0 for s in args.input_shape):
            raise ConfigurationError("--input-shape must be positive integers")
        return tuple(args.input_shape)
    if n_vnnlib is not None:
        return (1, n_vnnlib)
    spec = plugin_manager().input_spec(model)
    if spec is None:
        raise ConfigurationError("--input-shape is required (no plugin knows the model's "
                                 "input); pass it batch first, e.g. --input-shape 1 5")
    return spec.input_shape


def _combined(results: Sequence[EquivalenceResult]) -> str:
    statuses = [r.status for r in results]
    if "falsified" in statuses:
        return "falsified"
    return "verified" if all(s == "verified" for s in statuses) else "unknown"


def run(args: argparse.Namespace) -> int:
    pm = plugin_manager()
    for spec in args.plugin:
        if not any(lp.source == f"explicit: {spec}" for lp in pm.plugins):
            pm.load_path(spec)
    vn = read_vnnlib(args.vnnlib) if args.vnnlib else None
    if args.out:
        parent = Path(args.out).parent if str(Path(args.out).parent) else Path(".")
        if not parent.is_dir():
            raise ConfigurationError(f"cannot write '{args.out}': directory '{parent}' does "
                                     "not exist; create it first")
    original = load_module(args.original, args.weights, needed_by="equiv")
    compressed = load_module(args.compressed, args.compressed_weights, needed_by="equiv")
    shape = _shape(args, original, None if vn is None else vn.n_inputs)
    domains = vn.domains(shape) if vn is not None else (_domain_arg(args.domain, shape),)
    results = []
    for k, dom in enumerate(domains):
        r = verify_equivalence(original, compressed, dom, epsilon=args.epsilon, norm=args.norm,
                               property=args.property, confidence=args.confidence,
                               timeout=args.timeout, max_regions=args.max_regions,
                               executor=None if args.executor == "serial" else args.executor,
                               workers=args.workers, progress=not args.no_progress)
        prefix = f"box {k + 1}/{len(domains)}: " if len(domains) > 1 else ""
        print(prefix + r.summary())
        if r.counterexample is not None:
            print(f"{prefix}counterexample: {list(r.counterexample)}")
        results.append(r)
        if r.status == "falsified":
            break
    status = _combined(results)
    if args.out:
        data: dict[str, Any] = (results[0].to_dict() if len(domains) == 1 else
                                {"status": status, "boxes": len(domains),
                                 "results": [r.to_dict() for r in results]})
        atomic_write_text(args.out, json.dumps(data, indent=2) + "\n")
        print(f"result written to {args.out}")
    return EXIT_CODES[status]
