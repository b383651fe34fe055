"""``certcompress equiv``: equivalence verification from the shell (a thin layer over
:func:`certcompress.equivalence.verify_equivalence`).

    certcompress equiv ORIGINAL COMPRESSED (--domain LO:HI | --radius R | --vnnlib SPEC)
                       [--input-shape 1 5] [--epsilon 0.05 --norm inf | --property top1
                       [--confidence 0.9]] [--timeout 60] [--max-regions N]
                       [--optimize-steps K] [--split-candidates K] [--split MODE] [--intermediate MODE]
                       [--batch N] [--chunk N] [--seed S]
                       [--executor serial|local|ray] [--workers N] [--out result.json]
                       [--certificate certificate.json]

ORIGINAL and COMPRESSED are model specs (``model.py:make``, ``FILE.onnx``, ...; the
shared model options). The options come from the shared groups of
:mod:`certcompress.cli.options` (model, plugin, input shape, domain, output, executor);
the search options are those of ``verify_equivalence``.

Exit status: 0 verified, 3 falsified, 4 unknown (budget reached); 2 on a usage error.
With several VNN-LIB boxes each is verified in turn; the verdict is falsified if one
is, verified if all are, unknown otherwise. ``--out`` (the JSON result) and
``--certificate`` (a verified epsilon result as a certificate, one box only) are written
atomically.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from .._io import atomic_write_text
from ..domain import InputDomain
from ..equivalence.relu_split import SPLITS
from ..equivalence.result import EquivalenceResult
from ..equivalence.verify import NORMS, PROPERTIES, verify_equivalence
from ..equivalence.vnnlib import read_vnnlib
from ..errors import ConfigurationError
from ..loading import load_module
from .domain_options import add_domain_group, parse_domain
from .options import (
    add_executor,
    add_input_shape,
    add_model,
    add_output,
    check_output,
    common_parent,
    input_shape,
    load_plugins,
)

__all__ = ["register", "run", "EXIT_CODES", "add_search_options", "verify_with",
           "combined_status"]

EXIT_CODES = {"verified": 0, "falsified": 3, "unknown": 4}
INTERMEDIATE = ("crown", "forward", "both")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "equiv", parents=[common_parent()],
        help="prove or refute that COMPRESSED stays within epsilon of ORIGINAL "
             "(or keeps its decisions) on an input box",
        description="Equivalence verification by branch-and-bound over input or ReLU "
                    "splitting (--split). "
                    "Exit 0: verified, 3: falsified (a counterexample is printed and "
                    "written), 4: unknown (timeout or region budget).")
    add_model(p, "original", "ORIGINAL", "model spec of the original model (model.py:make, "
              "pkg.mod:make, FILE.onnx, ...)", weights_help="state dict of ORIGINAL")
    add_model(p, "compressed", "COMPRESSED", "model spec of the compressed model (same "
              "input and output shapes)", weights="--compressed-weights",
              weights_help="state dict of COMPRESSED")
    add_input_shape(p)
    add_domain_group(p, data=False)
    p.add_argument("--vnnlib", metavar="SPEC",
                   help="input box(es) from a VNN-LIB file (replaces --domain/--radius; "
                        "default input shape (1, number of inputs))")
    add_search_options(p)
    add_executor(p, ("serial", "local", "ray"), "serial",
                 "where each round's regions are bounded: serial (this process, default), "
                 "local (--workers processes: this one and --workers - 1 helpers) or ray (a "
                 "local Ray instance with --workers CPUs); for a given --split the verdict does "
                 "not depend on it (with --split auto an executor selects input splitting)", ray=False)
    add_output(p, None, "write the JSON result here (atomically)")
    add_output(p, None, "verified epsilon result (one box): write it as a certificate "
                        "here (atomically; export embeds it)", flag="--certificate")
    p.set_defaults(func=run)


def add_search_options(p: argparse.ArgumentParser) -> None:
    """The property and search option groups of ``equiv`` (shared with ``equiv-batch``)."""
    prop = p.add_argument_group("property")
    prop.add_argument("--epsilon", type=float,
                      help="largest allowed deviation (property epsilon)")
    prop.add_argument("--norm", choices=NORMS, default="inf",
                      help="deviation norm: inf (per output, default) or l1")
    prop.add_argument("--property", choices=PROPERTIES, default=None,
                      help="epsilon (default with --epsilon) or top1 (argmax never changes)")
    prop.add_argument("--confidence", type=float,
                      help="top1 only where the original's softmax confidence >= this, in "
                           "(0.5, 1)")
    s = p.add_argument_group("search")
    s.add_argument("--timeout", type=float, default=60.0,
                   help="seconds per box (default 60)")
    s.add_argument("--max-regions", type=int, default=200_000, metavar="N",
                   help="region budget per box (default 200000)")
    s.add_argument("--optimize-steps", type=int, default=0, metavar="K",
                   help="gradient steps on the ReLU slopes per bound (alpha-CROWN style; "
                        "tighter, each costs about one back-substitution; default 0)")
    s.add_argument("--split-candidates", type=int, default=1, metavar="K",
                   help="strong branching above 1: bound both halves for the K most "
                        "sensitive dimensions and split where the worse half is best "
                        "(default 1)")
    s.add_argument("--split", choices=SPLITS, default="auto",
                   help="how a region is split: input (bisect the box), relu (fix the "
                        "sign of an unstable neuron; chain networks, one process) or auto "
                        "(default: relu for chain networks from 16 inputs of nonzero width on, without "
                        "--executor or --split-candidates, else input)")
    s.add_argument("--intermediate", choices=INTERMEDIATE, default="crown",
                   help="pre-activation bounds per region: crown (back-substitution, "
                        "default), forward (cheapest) or both")
    s.add_argument("--batch", type=int, default=256, metavar="N",
                   help="regions per round (default 256)")
    s.add_argument("--chunk", type=int, default=128, metavar="N",
                   help="regions per task handed to a worker (default 128)")
    s.add_argument("--seed", type=int, default=0, help="seed of the probes (default 0)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")


def _domains(args: argparse.Namespace, model: nn.Module) -> tuple[InputDomain, ...]:
    given = [f for f, v in (("--domain", args.domain), ("--radius", args.radius),
                            ("--vnnlib", args.vnnlib)) if v is not None]
    if len(given) != 1:
        raise ConfigurationError("give the input box with exactly one of --domain LO:HI, "
                                 "--radius R or --vnnlib SPEC" + (f" (got {', '.join(given)})"
                                                                  if given else ""))
    if args.vnnlib is not None:
        vn = read_vnnlib(args.vnnlib)
        shape = tuple(args.input_shape) if args.input_shape else (1, vn.n_inputs)
        if any(s <= 0 for s in shape):
            raise ConfigurationError("--input-shape must be positive integers")
        return vn.domains(shape)
    shape = input_shape(model, args.input_shape, args.original)
    if args.radius is not None:
        r = float(args.radius)
        if not (r > 0 and r < float("inf")):
            raise ConfigurationError(f"--radius must be a finite number > 0, got {r!r}")
        return (InputDomain.box(-r, r, shape=shape, description=f"box [-{r:g}, {r:g}] "
                                "for every feature (--radius)"),)
    parts = args.domain.split(":")
    try:
        empty = len(parts) == 2 and float(parts[0]) > float(parts[1])
    except ValueError:
        empty = False  # parse_domain names the malformed bound
    if empty:
        raise ConfigurationError(f"--domain {args.domain} is empty: LO > HI")
    return (parse_domain(args.domain, shape),)


def combined_status(results: Sequence[EquivalenceResult]) -> str:
    statuses = [r.status for r in results]
    if "falsified" in statuses:
        return "falsified"
    return "verified" if all(s == "verified" for s in statuses) else "unknown"


def verify_with(args: argparse.Namespace, original: nn.Module, compressed: nn.Module,
                dom: InputDomain, timeout: float | None = None) -> EquivalenceResult:
    """:func:`verify_equivalence` with the options of :func:`add_search_options` and the
    executor group (``timeout`` overrides ``--timeout``)."""
    return verify_equivalence(original, compressed, dom, epsilon=args.epsilon, norm=args.norm,
                              property=args.property, confidence=args.confidence,
                              timeout=args.timeout if timeout is None else timeout,
                              max_regions=args.max_regions,
                              executor=None if args.executor == "serial" else args.executor,
                              workers=args.workers, batch=args.batch, chunk=args.chunk,
                              seed=args.seed, intermediate=args.intermediate,
                              split_candidates=args.split_candidates, split=args.split,
                              optimize_steps=args.optimize_steps,
                              progress=not args.no_progress)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else None
    cert_out = Path(args.certificate) if args.certificate else None
    check_output(out, args.original, args.compressed, args.weights, args.compressed_weights,
                 args.vnnlib, others=[cert_out] if cert_out is not None else [])
    if args.workers is not None and args.workers < 1:
        raise ConfigurationError(f"--workers must be >= 1, got {args.workers}")
    load_plugins(args.plugin)
    original = load_module(args.original, args.weights, needed_by="equiv")
    compressed = load_module(args.compressed, args.compressed_weights, needed_by="equiv")
    domains = _domains(args, original)
    if cert_out is not None and len(domains) > 1:
        raise ConfigurationError(f"--certificate needs one box; the VNN-LIB spec has "
                                 f"{len(domains)}")
    results = []
    for k, dom in enumerate(domains):
        r = verify_with(args, original, compressed, dom)
        prefix = f"box {k + 1}/{len(domains)}: " if len(domains) > 1 else ""
        print(prefix + r.summary())
        if r.counterexample is not None:
            print(f"{prefix}counterexample: {list(r.counterexample)}")
        results.append(r)
        if r.status == "falsified":
            break
    status = combined_status(results)
    if out is not None:
        data: dict[str, Any] = (results[0].to_dict() if len(domains) == 1 else
                                {"status": status, "boxes": len(domains),
                                 "results": [r.to_dict() for r in results]})
        atomic_write_text(out, json.dumps(data, indent=2) + "\n")
        print(f"result written to {out}")
    if cert_out is not None:
        if status == "verified":
            written = results[0].certificate().save(cert_out)
            print(f"certificate written to {written}")
        else:
            print(f"no certificate written: the result is {status}")
    return EXIT_CODES[status]
