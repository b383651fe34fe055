"""The core commands: ``inspect``, ``certify`` and ``adapters`` (a thin layer over
:func:`certcompress.api.trace`, :func:`certcompress.api.certify`, the adapter registry and
the bound-propagation lowering registry)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from torch import nn

from ..api import certify, check_trace, path_norm, trace
from ..bounds.cost import estimate_costs
from ..bounds.propagation.lowering import LoweringEntry, default_lowerings
from ..capture import ENTRY_POINT_GROUP, plugin_manager
from ..errors import ConfigurationError, UnsupportedModelError
from ..loading import load_model, load_module, load_reference_inputs
from . import local as cli_local
from .domain_options import default_methods
from .options import (
    EXIT_OK,
    EXIT_USER,
    add_domain_group,
    add_input_shape,
    add_method_group,
    add_model,
    add_output,
    add_search,
    certify_domain,
    check_output,
    common_parent,
    input_shape,
    load_plugins,
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
    add_model(p)
    add_input_shape(p)
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
    add_model(p, "original", "ORIGINAL", "model spec of the original model",
              weights_help="state dict of ORIGINAL")
    add_model(p, "compressed", "COMPRESSED", "model spec of the compressed model",
              weights="--compressed-weights", weights_help="state dict of COMPRESSED")
    add_input_shape(p)
    add_domain_group(p)
    add_method_group(p)
    add_search(p)
    add_output(p, "certificate.json",
               "where to write the certificate JSON (default ./certificate.json)")
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
    reference = (load_reference_inputs(args.reference_data, shape)
                 if args.reference_data else None)
    tiers = certify_domain(args, original, shape, reference, args.original)
    methods = tiers["methods"] or default_methods(tiers["domain"])
    if "bounds" in methods or getattr(args, "local_eps", None):
        # tell the user what to expect before the long part
        print(estimate_costs(trace(original, shape), options=tiers["propagation"]).summary())
    cert = certify(original, compressed, shape, reference_inputs=reference,
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
                              help="list the registered adapters, lowerings and the loaded "
                                   "plugins",
                              description="List the adapters (PyTorch module, function or "
                                          "method -> IR op), the bound-propagation lowerings "
                                          "(IR op kind -> primitives) and the loaded plugins, "
                                          "each with who registered it.")
    p.set_defaults(func=_cmd_adapters)


def _cmd_adapters(args: argparse.Namespace) -> int:
    load_plugins(args.plugin)
    pm = plugin_manager()
    rows = [("KIND", "KEY", "ADAPTER", "SOURCE"), *pm.registry.entries()]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for kind, key, adapter, source in rows:
        print(f"{kind:<{widths[0]}}  {key:<{widths[1]}}  {adapter:<{widths[2]}}  {source}")
    print(f"\n{len(rows) - 1} adapters")
    lowerings = [("OP", "LOWERING", "SOURCE"), *(_lowering_row(e) for e in
                                                default_lowerings().entries())]
    lw = [max(len(r[i]) for r in lowerings) for i in range(2)]
    print("\nbound-propagation lowerings (IR op kind -> primitive nodes):")
    for op, fn, source in lowerings:
        print(f"{op:<{lw[0]}}  {fn:<{lw[1]}}  {source}")
    print(f"\n{len(lowerings) - 1} lowerings")
    if not pm.plugins:
        print(f"plugins: none loaded (install one that declares the entry-point group "
              f"'{ENTRY_POINT_GROUP}', or name one with --plugin package.module:Attr)")
    else:
        print("plugins:")
        for lp in pm.plugins:
            prefixes = ", ".join(lp.plugin.model_prefixes) or "none"
            print(f"  {lp.plugin.name}  (model prefixes: {prefixes})  from {lp.source}")
    return EXIT_OK


def _lowering_row(entry: LoweringEntry) -> tuple[str, str, str]:
    fn = entry.fn
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return (entry.op_type.__name__, f"{getattr(fn, '__module__', '?')}.{name}", entry.source)
