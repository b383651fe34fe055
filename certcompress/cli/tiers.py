"""The ``tiers`` command: the certification tiers of the tier registry
(:func:`certcompress.bounds.tiers.tier_registry`: the built-in ones, then those of the
loaded plugins), with who registered each, its one-line summary and whether
``certify`` runs it by default (docs/adding-a-tier.md adds one)."""

from __future__ import annotations

import argparse
from typing import Any

from ..bounds.tiers import TierRegistry, tier_registry
from .options import EXIT_OK, common_parent, load_plugins

__all__ = ["register", "tier_rows"]

Subparsers = Any  # argparse._SubParsersAction (private type)

HEADER = ("NAME", "DEFAULT", "SOURCE", "DESCRIPTION")


def register(subparsers: Subparsers) -> None:
    p = subparsers.add_parser(
        "tiers", parents=[common_parent()],
        help="list the registered certification tiers (what --method takes)",
        description="List the certification tiers: name (what --method takes), when "
                    "certify runs it without --method, who registered it (certcompress "
                    "or a plugin), its scope and what it bounds.")
    p.set_defaults(func=_cmd_tiers)


def _default(name: str, registry: TierRegistry) -> str:
    if name in registry.defaults(with_domain=False):
        return "always"
    if name in registry.defaults(with_domain=True):
        return "with --domain"
    return "no"


def tier_rows(registry: TierRegistry) -> list[tuple[str, str, str, str, str]]:
    """One row per registered tier, in registration order: name, when it is a default
    (``always``, ``with --domain`` or ``no``), who registered it, its scope and its
    one-line summary."""
    return [(t.name, _default(t.name, registry), registry.origin(t.name), t.scope,
             t.summary or "(no summary)") for t in registry]


def _cmd_tiers(args: argparse.Namespace) -> int:
    load_plugins(args.plugin)
    registry = tier_registry()
    rows = tier_rows(registry)
    scopes = {r[3] for r in rows}
    # the scope is printed once when every tier shares it, else before each description
    table = [HEADER] + [(n, d, src, text if len(scopes) == 1 else f"[{scope}] {text}")
                        for n, d, src, scope, text in rows]
    widths = [max(len(r[i]) for r in table) for i in range(3)]
    for name, default, source, text in table:
        print(f"{name:<{widths[0]}}  {default:<{widths[1]}}  {source:<{widths[2]}}  {text}")
    print(f"\n{len(rows)} tiers")
    if len(scopes) == 1:
        print(f"scope of every tier: {scopes.pop()}")
    print(f"without --method, certify runs: {', '.join(registry.defaults(with_domain=False))}"
          f" (no --domain); {', '.join(registry.defaults(with_domain=True))} (with --domain)")
    return EXIT_OK
