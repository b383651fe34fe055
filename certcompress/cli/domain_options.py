"""Command-line options of the certification tiers, for the ``certify`` command.

``add_domain_arguments(parser)`` adds ``--domain LO:HI`` (or ``--domain data``: the
per-feature min/max box of ``--reference-data``), ``--method NAME`` (repeatable: a tier
of the tier registry, ``path-metric``, ``bounds`` or a plugin's) and ``--propagation {crown,interval}`` and ``--arithmetic {exact,float32}``;
``certify_kwargs(args, shape, reference)`` turns them into the keyword arguments of
:func:`certcompress.certify` (``domain``, ``methods``, ``propagation``).
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
from ..capture.plugins import plugin_manager
from ..domain import InputDomain
from ..errors import ConfigurationError

__all__ = ["add_domain_arguments", "add_arithmetic_argument", "parse_domain",
           "certify_kwargs"]


def add_domain_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("input domain and certification tiers")
    g.add_argument("--domain", metavar="LO:HI",
                   help="certify over the box LO <= x <= HI (every feature, as the network "
                        "receives inputs), e.g. 0:1 (negative LO: --domain=-1:1); or 'data': the per-feature min/max box "
                        "of --reference-data. Replaces --radius")
    g.add_argument("--method", action=_MethodAction, metavar="NAME",
                   help="certification tier (path-metric, bounds, or a tier of an installed "
                        "plugin or of a --plugin named before --method); repeat for several; "
                        "default: path-metric, plus bounds with --domain. The certificate's "
                        "bound is the smallest")
    g.add_argument("--propagation", choices=("crown", "interval"), default="crown",
                   help="bounds tier: back-substitution at every ReLU (crown, default) or "
                        "interval bounds there (interval: faster, looser)")
    add_arithmetic_argument(g)


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
    propagation = PropagationOptions(intermediate=getattr(args, "propagation", "crown"))
    return {"domain": domain, "methods": methods, "propagation": propagation,
            "arithmetic": getattr(args, "arithmetic", "exact")}
