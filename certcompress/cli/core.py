"""The core commands: ``inspect``, ``certify`` and ``adapters`` (a thin layer over
:func:`certcompress.api.trace`, :func:`certcompress.api.certify` and the adapter registry)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from torch import nn

from ..api import certify, check_trace, input_spec_for, path_norm, trace
from ..bounds.cost import estimate_costs
from ..bounds.tiers import tier_registry
from ..capture import ENTRY_POINT_GROUP, plugin_manager
from ..errors import ConfigurationError, UnsupportedModelError
from ..loading import load_model, load_module, load_reference_inputs
from . import local as cli_local
from .domain_options import add_domain_arguments, certify_kwargs
from .options import (
    EXIT_OK,
    EXIT_USER,
    check_output,
    common_parent,
    input_shape,
    load_plugins,
    model_options,
)

__all__ = ["register"]

Subparsers = Any  # argparse._SubParsersAction (private type)


def register(subparsers: Subparsers) -> None:
    """Add ``inspect``, ``certify`` and ``adapters`` (those not already there)."""
    for name, add in (("inspect", _register_inspect), ("certify", _register_certify),
                      ("adapters", _register_adapters)):
        if name not in subparsers.choices:
            add(subparsers)


# ------------------------------------------------------------------ inspect
def _register_inspect(subparsers: Subparsers) -> None:
    p = subparsers.add_parser(
        "inspect", parents=[common_parent()], help="trace a model: graph, support verdict, path-norm",
        description="Trace MODEL, print its graph, whether certcompress supports it (exit 0) "
                    "or every node it does not (exit 2), and its l1 path-norm.")
    p.add_argument("model", metavar="MODEL", help="model spec (model.py:make, pkg.mod:make, "
                                                   "PREFIX:NAME, model.pt2)")
    p.add_argument("--weights", metavar="STATE_DICT", help="state dict file to load")
    model_options(p)
    p.set_defaults(func=_cmd_inspect)


def _cmd_inspect(args: argparse.Namespace) -> int:
    load_plugins(args.plugin)
    model = load_model(args.model, args.weights)
    shape = input_shape(model, args.input_shape, args.model)
    try:
        graph = trace(model, shape)
    except UnsupportedModelError as exc:
        print(f"{args.model}: NOT SUPPORTED for input shape {shape}")
        print(exc)
        return EXIT_USER
    print(graph)
    if isinstance(model, nn.Module):  # trace ran the same check; this prints its figures
        print(check_trace(model, shape, graph=graph).summary())
    print(f"\n{args.model}: supported (a ReLU-DAG certcompress certifies) for input shape "
          f"{shape}")
    print(f"path-norm ||Phi(theta)||_1 = {path_norm(graph):.6g}")
    print(estimate_costs(graph).summary())
    return EXIT_OK


# ------------------------------------------------------------------ certify
def _register_certify(subparsers: Subparsers) -> None:
    p = subparsers.add_parser(
        "certify", parents=[common_parent()],
        help="certify max ||f(x) - f'(x)||_1 over an input domain for two models",
        description="Certify the output deviation between ORIGINAL and COMPRESSED, print the "
                    "certificate and write it as JSON.")
    p.add_argument("original", metavar="ORIGINAL", help="model spec of the original model")
    p.add_argument("compressed", metavar="COMPRESSED", help="model spec of the compressed model")
    p.add_argument("--weights", metavar="STATE_DICT", help="state dict of ORIGINAL")
    p.add_argument("--compressed-weights", metavar="STATE_DICT",
                   help="state dict of COMPRESSED")
    model_options(p)
    p.add_argument("--radius", type=float, metavar="R",
                   help="input domain ||x||_inf <= R, as the network receives inputs (after "
                        "normalization); default: the plugin's")
    p.add_argument("--reference-data", metavar="FILE",
                   help="reference inputs: .npz (array 'x'), .npy or .pt tensor, batch first")
    p.add_argument("--search-steps", type=int, default=20, metavar="N",
                   help="PGD steps of the adversarial search inside the domain (0: skip; "
                        "default 20)")
    p.add_argument("--search-restarts", type=int, default=4, metavar="K",
                   help="starting points of the search (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the search (default 0)")
    p.add_argument("--out", default="certificate.json", metavar="FILE",
                   help="where to write the certificate JSON (default ./certificate.json)")
    add_domain_arguments(p)
    cli_local.add_arguments(p)
    p.set_defaults(func=_cmd_certify)


def _cmd_certify(args: argparse.Namespace) -> int:
    out = Path(args.out)
    check_output(out, args.original, args.compressed, args.weights, args.compressed_weights,
                 args.reference_data, getattr(args, "heldout", None),
                 others=cli_local.planned_outputs(args))
    if args.search_steps < 0 or args.search_restarts < 1:
        raise ConfigurationError("--search-steps must be >= 0 and --search-restarts >= 1")
    load_plugins(args.plugin)
    original = load_module(args.original, args.weights, needed_by="certify")
    compressed = load_module(args.compressed, args.compressed_weights, needed_by="certify")
    shape = input_shape(original, args.input_shape, args.original)
    if args.radius is None and not args.domain and input_spec_for(original) is None:
        raise ConfigurationError(
            f"--radius is required for '{args.original}': the certificate covers inputs with "
            "||x||_inf <= R (after normalization) and no installed plugin knows a default")
    reference = (load_reference_inputs(args.reference_data, shape)
                 if args.reference_data else None)
    tiers = certify_kwargs(args, shape, reference)
    methods = tiers["methods"] or tier_registry().defaults(tiers["domain"] is not None)
    if "bounds" in methods or getattr(args, "local_eps", None):
        # tell the user what to expect before the long part
        print(estimate_costs(trace(original, shape), options=tiers["propagation"]).summary())
    cert = certify(original, compressed, shape, args.radius, reference_inputs=reference,
                   search_steps=args.search_steps, search_restarts=args.search_restarts,
                   seed=args.seed, **tiers)
    print(cert.summary())
    try:
        written = cert.save(out)
    except OSError as exc:  # the temporary file is removed; nothing is left at ``out``
        raise ConfigurationError(f"cannot write the certificate to '{out}': "
                                 f"{exc.strerror or exc}") from exc
    print(f"certificate written to {written.resolve()}")
    cli_local.run(args, original, compressed, print, input_shape=shape, domain=tiers["domain"])
    return EXIT_OK


# ------------------------------------------------------------------ adapters
def _register_adapters(subparsers: Subparsers) -> None:
    p = subparsers.add_parser("adapters", parents=[common_parent()],
                              help="list the registered adapters and the loaded plugins")
    p.set_defaults(func=_cmd_adapters)


def _cmd_adapters(args: argparse.Namespace) -> int:
    load_plugins(args.plugin)
    pm = plugin_manager()
    rows = [("KIND", "KEY", "ADAPTER", "SOURCE"), *pm.registry.entries()]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for kind, key, adapter, source in rows:
        print(f"{kind:<{widths[0]}}  {key:<{widths[1]}}  {adapter:<{widths[2]}}  {source}")
    print(f"\n{len(rows) - 1} adapters")
    if not pm.plugins:
        print(f"plugins: none loaded (install one that declares the entry-point group "
              f"'{ENTRY_POINT_GROUP}', or name one with --plugin package.module:Attr)")
    else:
        print("plugins:")
        for lp in pm.plugins:
            prefixes = ", ".join(lp.plugin.model_prefixes) or "none"
            print(f"  {lp.plugin.name}  (model prefixes: {prefixes})  from {lp.source}")
    return EXIT_OK
