"""``certcompress zoo certify`` and ``certcompress results``: thin layers over
:func:`certcompress.scale.sweep` and :mod:`certcompress.scale.results`.

    certcompress zoo certify manifest.yaml [--executor local|ray|serial] [--store runs.sqlite]
                 [--sweep NAME] [--address auto|ray://HOST:PORT] [--workers N] [--num-cpus N]
                 [--retry-failed] [--out results.csv] [--no-progress]
                 [--radius R | --domain LO:HI] [--method NAME ...] [--arithmetic float32]
    certcompress results list [--store runs.sqlite]
    certcompress results show SWEEP [--store runs.sqlite] [--columns C ...]
    certcompress results export FILE.csv|FILE.json [--store runs.sqlite] [--sweep NAME]
                 [--status ok|error]

The top-level CLI calls :func:`register` with its sub-parsers (once per command name;
a second call adds nothing). Handlers return the exit code: 0, or 2 when a task of the
sweep failed (its error is stored and listed) or for bad input.

``--radius``, ``--domain``, ``--method`` and ``--arithmetic`` (the shared option groups
of :mod:`certcompress.cli.options`) replace the manifest's domain and tiers in every
task (``--domain LO:HI``: the box of each model's input shape).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from .._io import atomic_path, check_outputs
from ..errors import ConfigurationError
from ..scale.manifest import load_manifest
from ..scale.results import export, list_sweeps, show
from ..scale.sweep import sweep
from ..scale.tasks import CertifyTask
from .domain_options import parse_domain
from .options import add_domain_group, add_executor, add_method_group, add_output

__all__ = ["register", "register_zoo", "register_results"]

EXIT_OK, EXIT_FAILED = 0, 2
_STORE_HELP = "the SQLite results store (default ./runs.sqlite)"


def register(subparsers: Any) -> None:
    """Add the ``zoo`` and ``results`` commands (those not already there)."""
    if "zoo" not in subparsers.choices:
        register_zoo(subparsers)
    if "results" not in subparsers.choices:
        register_results(subparsers)


# ---------------------------------------------------------------------- zoo
def register_zoo(subparsers: Any) -> None:
    zoo = subparsers.add_parser(
        "zoo", help="certify a zoo of models and plans from a manifest, resumably",
        description="Run every (model, plan) of a YAML manifest as a task, locally or on Ray; "
                    "each result is stored as it finishes and a rerun skips what is stored.")
    sub = zoo.add_subparsers(dest="zoo_command", metavar="COMMAND", required=True)
    p = sub.add_parser("certify", help="certify every (model, plan) of a manifest",
                       description="Certify every (model, plan) pair of MANIFEST (see "
                                   "docs/scale-out.md for its format).")
    p.add_argument("manifest", metavar="MANIFEST", help="YAML manifest file")
    add_executor(p)
    p.add_argument("--store", default="runs.sqlite", metavar="FILE", help=_STORE_HELP)
    p.add_argument("--sweep", metavar="NAME",
                   help="name the rows are stored under (default: the manifest's 'sweep')")
    p.add_argument("--retry-failed", action="store_true",
                   help="run again the tasks stored as failed")
    add_domain_group(p, data=False)
    add_method_group(p, propagation=False)
    add_output(p, None, "also write the results as .csv or .json")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_cmd_zoo_certify)


def _cmd_zoo_certify(args: argparse.Namespace) -> int:
    if args.out is not None and Path(args.out).suffix.lower() not in (".csv", ".json"):
        raise ConfigurationError(f"--out '{args.out}' must end in .csv or .json")
    check_outputs([args.out, args.store], [args.manifest])
    if args.executor != "ray" and (args.address or args.num_cpus):
        raise ConfigurationError("--address and --num-cpus are for --executor ray")
    if args.executor != "local" and args.workers:
        raise ConfigurationError("--workers is for --executor local")
    manifest = load_manifest(args.manifest)
    name = args.sweep or manifest.sweep
    tasks = _with_domain(manifest.tasks, args)
    df = sweep(tasks, args.executor, args.store, name, address=args.address,
               progress=not args.no_progress, workers=args.workers, num_cpus=args.num_cpus,
               retry_failed=args.retry_failed)
    print(df.attrs["summary"])
    cols = [c for c in ("label", "status", "certified_bound", "adversarial_max", "vacuous")
            if c in df.columns]
    print(df[cols].to_string(index=False))
    failed = df[df["status"] == "error"]
    for _, r in failed.iterrows():
        print(f"FAILED {r['label']}: {r['error']}")
    if args.out:
        with atomic_path(args.out) as tmp:
            if args.out.lower().endswith(".csv"):
                df.to_csv(tmp, index=False)
            else:
                df.to_json(tmp, orient="records", date_format="iso", indent=1)
        print(f"results written to {Path(args.out).resolve()}")
    if len(failed):
        print(f"{len(failed)} task(s) failed; details: certcompress results show {name} "
              f"--store {args.store}")
        return EXIT_FAILED
    return EXIT_OK


def _with_domain(tasks: Sequence[Any], args: argparse.Namespace) -> list[Any]:
    """The tasks with ``--radius``/``--domain``/``--method``/``--arithmetic`` applied."""
    if args.domain is not None and args.radius is not None:
        raise ConfigurationError("pass either --domain or --radius, not both")
    if args.domain is not None and args.domain.strip().lower() == "data":
        raise ConfigurationError("zoo certify --domain takes LO:HI (the box of each model's "
                                 "input shape); 'data' needs one model's reference data: "
                                 "use 'certcompress certify --domain data'")
    changes: dict[str, Any] = {}
    if args.method:
        changes["methods"] = tuple(args.method)
    if args.arithmetic != "exact":
        changes["arithmetic"] = args.arithmetic
    if args.radius is not None:
        changes.update(radius=args.radius, domain=None)
    if not changes and args.domain is None:
        return list(tasks)
    out = []
    for task in tasks:
        if not isinstance(task, CertifyTask):
            raise ConfigurationError(f"--radius, --domain, --method and --arithmetic apply "
                                     f"to certify tasks; '{task.display}' is a {task.kind} "
                                     "task")
        per = dict(changes)
        if args.domain is not None:
            per.update(radius=None,
                       domain=parse_domain(args.domain, task.input_shape).to_dict())
        out.append(replace(task, **per))
    return out


# ---------------------------------------------------------------------- results
def register_results(subparsers: Any) -> None:
    res = subparsers.add_parser(
        "results", help="list, show or export the results store of sweeps",
        description="Read a results store written by sweeps and 'zoo certify'.")
    sub = res.add_subparsers(dest="results_command", metavar="COMMAND", required=True)
    p = sub.add_parser("list", help="one line per sweep in the store")
    p.add_argument("--store", default="runs.sqlite", metavar="FILE", help=_STORE_HELP)
    p.set_defaults(func=_cmd_list)
    p = sub.add_parser("show", help="summary, failures and rows of one sweep")
    p.add_argument("sweep", metavar="SWEEP")
    p.add_argument("--store", default="runs.sqlite", metavar="FILE", help=_STORE_HELP)
    p.add_argument("--columns", nargs="+", metavar="C", help="columns to show")
    p.set_defaults(func=_cmd_show)
    p = sub.add_parser("export", help="write the results as CSV or JSON")
    p.add_argument("out", metavar="FILE", help="output file, .csv or .json")
    p.add_argument("--store", default="runs.sqlite", metavar="FILE", help=_STORE_HELP)
    p.add_argument("--sweep", metavar="NAME", help="only this sweep (default: all)")
    p.add_argument("--status", choices=["ok", "error"], help="only these rows")
    p.set_defaults(func=_cmd_export)


def _cmd_list(args: argparse.Namespace) -> int:
    df = list_sweeps(args.store)
    if df.empty:
        print(f"{args.store}: no sweeps yet")
        return EXIT_OK
    print(df.to_string(index=False))
    return EXIT_OK


def _cmd_show(args: argparse.Namespace) -> int:
    print(show(args.store, args.sweep, columns=args.columns))
    return EXIT_OK


def _cmd_export(args: argparse.Namespace) -> int:
    check_outputs([args.out], [args.store])
    written = export(args.store, args.out, args.sweep, status=args.status)
    print(f"results written to {written.resolve()}")
    return EXIT_OK
