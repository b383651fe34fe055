"""The input-domain and certification-tier option groups, shared by every command that
certifies (``certify``, ``prune``, ``certify-plan``, ``quantize``, ``zoo certify``).

``add_domain_group(parser)`` adds ``--radius R`` and ``--domain LO:HI`` (or ``--domain
data``: the per-feature min/max box of ``--reference-data``); ``add_method_group(parser)``
adds ``--method NAME`` (repeatable: a tier of the tier registry: ``path-metric``,
``bounds`` or a plugin's), ``--propagation
{crown,interval}`` and ``--arithmetic {exact,float32}``. ``add_domain_arguments(parser)``
is ``--domain`` with the method group (for a parser that declares ``--radius`` itself).
``certify_kwargs(args, shape, reference)`` turns them into the keyword arguments of
:func:`certcompress.certify` (``domain``, ``methods``, ``propagation``, ``arithmetic``);
``certify_domain(args, model, shape, reference, spec)`` adds ``input_radius`` and fails
early when neither the options nor a plugin give a domain.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from ..bounds.arithmetic import ARITHMETICS
from ..bounds.propagation.engine import PropagationOptions
from ..bounds.tiers import tier_registry
from ..capture import plugin_manager
from ..domain import InputDomain
from ..equivalence.tier import BabOptions
from ..errors import ConfigurationError
from ..resolve import input_spec_for

__all__ = ["add_domain_group", "add_radius", "add_method_group", "add_domain_arguments",
           "add_arithmetic_argument", "parse_domain", "certify_kwargs", "certify_domain",
           "default_methods"]

_RADIUS_HELP = ("input domain ||x||_inf <= R, as the network receives inputs (after "
                "normalization); default: the plugin's")
_DOMAIN_HELP = ("certify over the box LO <= x <= HI (every feature, as the network receives "
                "inputs), e.g. 0:1 (negative LO: --domain=-1:1); or 'data': the per-feature "
                "min/max box of --reference-data. Replaces --radius")


def add_domain_group(parser: argparse.ArgumentParser, *, data: bool = True) -> None:
    """``--radius`` and ``--domain`` (``data=False``: ``LO:HI`` only, for commands
    without ``--reference-data``)."""
    g = parser.add_argument_group("input domain")
    add_radius(g)
    g.add_argument("--domain", metavar="LO:HI",
                   help=_DOMAIN_HELP if data else _DOMAIN_HELP.split("; or 'data'")[0]
                   + ". Replaces --radius")


def add_radius(parser: Any) -> None:
    """``--radius`` alone (for a command that certifies over balls only)."""
    parser.add_argument("--radius", type=float, metavar="R", help=_RADIUS_HELP)


def add_method_group(parser: argparse.ArgumentParser, *, propagation: bool = True) -> None:
    """``--method`` (repeatable), ``--propagation`` (with ``propagation``) and
    ``--arithmetic``."""
    _method_arguments(parser.add_argument_group("certification tiers"), propagation)


def add_domain_arguments(parser: argparse.ArgumentParser) -> None:
    """``--domain`` and the method group, for a parser that has its own ``--radius``."""
    g = parser.add_argument_group("input domain and certification tiers")
    g.add_argument("--domain", metavar="LO:HI", help=_DOMAIN_HELP)
    _method_arguments(g, True)


def default_methods(domain: InputDomain | None) -> tuple[str, ...]:
    """The tiers :func:`certcompress.certify` runs without ``methods=``."""
    return tier_registry().defaults(domain is not None)


def _method_arguments(g: Any, propagation: bool) -> None:
    g.add_argument("--method", action=_MethodAction, metavar="NAME",
                   help="certification tier (path-metric, bounds, or a tier of an installed "
                        "plugin or of a --plugin named before --method); repeat for several; "
                        "default: path-metric, plus bounds with --domain. The certificate's "
                        "bound is the smallest")
    if propagation:
        g.add_argument("--propagation", choices=("crown", "interval"), default="crown",
                       help="bounds tier: back-substitution at every ReLU (crown, default) "
                            "or interval bounds there (interval: faster, looser)")
        g.add_argument("--slope-steps", type=int, default=0, metavar="N",
                       help="bounds tier: N projected gradient steps on the ReLU slopes of "
                            "the output rows (alpha-CROWN; never looser, costs about N "
                            "back-substitutions of those rows; default 0: CROWN's slopes)")
        g.add_argument("--slope-lr", type=float, default=0.1, metavar="LR",
                       help="bounds tier: the step size of --slope-steps (default 0.1)")
        g.add_argument("--sign-rows", type=_sign_rows, default="auto", metavar="N|auto|all",
                       help="bounds tier: row budget of the sign-vector l1 bound (auto, "
                            "default: every sign vector for small networks, a budget sized "
                            "to the network for large ones; all: every sign vector; N: a "
                            "best-first search of N rows, sound at any budget)")
        g.add_argument("--crown-rows-per-node", type=int, default=None, metavar="N",
                       help="bounds tier with --propagation crown: back-substitute at most N "
                            "neurons per ReLU input (the widest), interval bounds for the "
                            "rest (default: every neuron)")
        g.add_argument("--device", default="auto", metavar="auto|cpu|cuda[:N]",
                       help="bounds tier: where the propagation runs (auto, default: the "
                            "CPU, or the device named by CERTCOMPRESS_DEVICE; cuda: a CUDA "
                            "GPU, the same float64 error model, re-checked on a GPU)")
        g.add_argument("--no-chain", dest="chain", action="store_false",
                       help="bounds tier: do not also bound MLP pairs with the differential "
                            "single pass (the engine alone, as certificates made before it)")
        g.add_argument("--bab-time", type=float, default=None, metavar="SECONDS",
                       help="bab tier (--method bab): seconds of branch-and-bound search "
                            "(default 10)")
    add_arithmetic_argument(g)


def _sign_rows(text: str) -> int | str | None:
    """``--sign-rows``: ``auto``, ``all`` (None: every sign vector) or a count >= 0."""
    if text in ("auto", "all"):
        return None if text == "all" else text
    try:
        rows = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto, all or a row count, got {text!r}"
                                         ) from None
    if rows < 0:
        raise argparse.ArgumentTypeError(f"the row count must be >= 0, got {rows}")
    return rows


class _MethodAction(argparse.Action):
    """``--method NAME``, appended; checked against the tier registry as it is parsed
    (after loading the plugins named by ``--plugin`` so far, which may add tiers)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        manager = plugin_manager()
        for spec in getattr(namespace, "plugin", None) or ():
            if not any(lp.source == f"explicit: {spec}" for lp in manager.plugins):
                manager.load_path(spec)
        registry = tier_registry()
        if values not in registry:
            parser.error(f"argument {option_string}: unknown certification method "
                         f"{values!r}; choose from {', '.join(registry.names())}")
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or []), values])


def add_arithmetic_argument(parser: Any) -> None:
    """``--arithmetic {exact,float32}`` (for every command that certifies)."""
    parser.add_argument("--arithmetic", choices=ARITHMETICS, default="exact",
                        help="exact (default): the models evaluated exactly; float32: as "
                             "executed in IEEE float32 (torch CPU, onnxruntime), any "
                             "summation order, both models' rounding error included")


def parse_domain(text: str, shape: Sequence[int], reference: Tensor | None = None
                 ) -> InputDomain:
    """``LO:HI`` as a box of ``shape``; ``data`` as the box of ``reference``."""
    if text.strip().lower() == "data":
        if reference is None:
            raise ConfigurationError("--domain data needs --reference-data (the box is their "
                                     "per-feature min/max)")
        return InputDomain.from_data(reference, shape=tuple(shape))
    parts = text.split(":")
    if len(parts) != 2:
        raise ConfigurationError(f"--domain must be LO:HI (e.g. 0:1) or 'data', got {text!r}")
    try:
        lo, hi = float(parts[0]), float(parts[1])
    except ValueError:
        raise ConfigurationError(f"--domain bounds must be numbers, got {text!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ConfigurationError(f"--domain needs finite LO <= HI, got {text!r}")
    return InputDomain.box(lo, hi, shape=tuple(shape), description=f"box [{lo:g}, {hi:g}] "
                           "for every feature (--domain)")


def certify_kwargs(args: argparse.Namespace, shape: Sequence[int],
                   reference: Tensor | None = None) -> dict[str, Any]:
    """``domain``, ``methods`` and ``propagation`` for :func:`certcompress.certify`."""
    domain = None
    if getattr(args, "domain", None):
        if getattr(args, "radius", None) is not None:
            raise ConfigurationError("pass either --domain or --radius, not both")
        domain = parse_domain(args.domain, shape, reference)
    methods = tuple(args.method) if getattr(args, "method", None) else None
    propagation = PropagationOptions(intermediate=getattr(args, "propagation", "crown"),
                                     slope_steps=getattr(args, "slope_steps", 0),
                                     slope_lr=getattr(args, "slope_lr", 0.1),
                                     chain=getattr(args, "chain", True),
                                     sign_rows=getattr(args, "sign_rows", "auto"),
                                     crown_rows_per_node=getattr(args, "crown_rows_per_node",
                                                                 None),
                                     device=getattr(args, "device", "auto"))
    bab_time = getattr(args, "bab_time", None)
    if bab_time is not None:
        if "bab" not in (methods or ()):
            raise ConfigurationError("--bab-time caps the bab tier's search: add --method bab "
                                     "or drop --bab-time")
        propagation = BabOptions(intermediate=propagation.intermediate, time_budget=bab_time,
                                 slope_steps=propagation.slope_steps,
                                 slope_lr=propagation.slope_lr, chain=propagation.chain,
                                 sign_rows=propagation.sign_rows,
                                 crown_rows_per_node=propagation.crown_rows_per_node,
                                 device=propagation.device)
    return {"domain": domain, "methods": methods, "propagation": propagation,
            "arithmetic": getattr(args, "arithmetic", "exact")}


def certify_domain(args: argparse.Namespace, model: object, shape: Sequence[int],
                   reference: Tensor | None, spec: str) -> dict[str, Any]:
    """:func:`certify_kwargs` plus ``input_radius`` (``--radius``; None with ``--domain``
    or for the plugin's default). Fails before any work when no domain is known: neither
    ``--radius``, ``--domain`` nor a plugin that knows ``model``."""
    kw = certify_kwargs(args, shape, reference)
    radius = getattr(args, "radius", None)
    if kw["domain"] is None and radius is None and input_spec_for(model) is None:
        raise ConfigurationError(
            f"--radius is required for '{spec}' (or --domain LO:HI): the certificate "
            "covers inputs with ||x||_inf <= R (after normalization), or the box of "
            "--domain, and no installed plugin knows a default")
    kw["input_radius"] = radius
    return kw
