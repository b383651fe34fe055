"""``certcompress meanfield sweep``: a thin command-line layer over :func:`mf.sweep`.

The top-level CLI calls :func:`register` with its sub-parsers; the handler returns an
exit code: 0 on success, 2 for bad input (a one-line message on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

from .._io import atomic_write_text, check_outputs, model_input_files
from ..errors import CertcompressError, ConfigurationError
from ..meanfield._data import load_npz
from ..meanfield._plots import plot_design, plot_sweep, plot_training
from ..meanfield._sweep import (
    AGREEMENT_COLUMNS,
    DESIGN_OPTIONS,
    RECOMMENDED_ESTIMATE,
    SweepOptions,
    designed_sweep,
    spearman_agreement,
    sweep,
)
from ..scale.executors import Executor, make_executor
from .options import add_executor, add_output

__all__ = ["register", "run_sweep", "run_design"]

_NAMED_SCALINGS = ("mean-field", "sqrt", "none")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``meanfield`` command (with its ``sweep`` sub-command) to ``subparsers``."""
    mf = subparsers.add_parser(
        "meanfield", help="mean-field generalization estimates for scaled ResNets",
        description="Mean-field estimates (Chen et al. 2024): estimates, not certificates.")
    sub = mf.add_subparsers(dest="meanfield_command", metavar="COMMAND", required=True)
    p = sub.add_parser(
        "sweep", help="train and estimate over depths and scalings; write CSV and PNG plots",
        description="Train a ScaledResNet per configuration, estimate its generalization gap "
                    "beside the measured one, and write meanfield_sweep.csv, spearman.json "
                    "and PNG plots to --out.")
    p.add_argument("--depths", type=int, nargs="+", default=[4, 8, 16, 32], metavar="L")
    p.add_argument("--scalings", nargs="+", default=list(_NAMED_SCALINGS), metavar="S",
                   help="mean-field, sqrt, none, or a number used as c_L")
    p.add_argument("--alphas", type=float, nargs="+", default=[1.0], metavar="A")
    p.add_argument("--widths", type=int, nargs="+", default=[128], metavar="M")
    p.add_argument("--ns", type=int, nargs="+", default=None, metavar="N",
                   help="training-set sizes (default 500 for digits, all rows for a file)")
    p.add_argument("--inits", nargs="+", default=["mean-field"], choices=["mean-field", "standard", "paired"])
    p.add_argument("--data", default="digits",
                   help="'digits', 'digits:<task>' (odd-even, 3-vs-8, 0-vs-rest) or a .npz "
                        "file with X, y or X_train, y_train, X_test, y_test")
    p.add_argument("--task", default="odd-even", help="digits task when --data is 'digits'")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--record-every", type=int, default=50)
    p.add_argument("--lr", type=float, default=0.5)
    p.add_argument("--head-width", type=int, default=None)
    p.add_argument("--beta", type=float, default=1.0)
    p.add_argument("--activation", default="tanh")
    p.add_argument("--delta", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    add_executor(p, default=None,
                 help="run the configurations through certcompress.scale (local: a process "
                      "pool, ray, or serial with a resumable store); default: in this process")
    p.add_argument("--store", default=None,
                   help="with --executor: SQLite results file; a stopped sweep resumes from it")
    add_output(p, None, "output directory (created if missing)", metavar="DIR", required=True)
    p.add_argument("--no-plots", action="store_true", help="write the CSV only")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run_sweep)

    q = sub.add_parser(
        "design", help="the designed sweep (n x label noise + depth/alpha/scaling/init "
                       "variants): rank agreement, recommendation, plots",
        description="Run mf.designed_sweep on digits and write design.csv, design.json "
                    "(Spearman with p-values and point counts, in-scope counts, per-design "
                    "intervals over seeds, the recommended depth scaling) and PNG plots to --out.")
    q.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], metavar="S")
    q.add_argument("--task", default="odd-even", help="digits task")
    q.add_argument("--steps", type=int, default=150)
    add_output(q, None, "output directory (created if missing)", metavar="DIR", required=True)
    q.add_argument("--no-plots", action="store_true", help="write the CSV and JSON only")
    q.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    q.set_defaults(func=run_design)


def _scaling(text: str) -> str | float:
    if text in _NAMED_SCALINGS:
        return text
    try:
        value = float(text)
    except ValueError:
        raise ConfigurationError(
            f"--scalings: '{text}' is neither one of {', '.join(_NAMED_SCALINGS)} nor a number") from None
    if not (math.isfinite(value) and value > 0):
        raise ConfigurationError(f"--scalings: a numeric scaling must be > 0, got {text}")
    return value


def run_sweep(args: argparse.Namespace) -> int:
    """Handler of ``certcompress meanfield sweep``; returns the exit code."""
    try:
        return _run(args)
    except CertcompressError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"certcompress meanfield sweep: error: {first}", file=sys.stderr)
        return 2


def _check_executor_flags(args: argparse.Namespace) -> None:
    if args.executor != "ray" and (args.address or args.num_cpus):
        raise ConfigurationError("--address and --num-cpus are for --executor ray")
    if args.executor != "local" and args.workers:
        raise ConfigurationError("--workers is for --executor local")


def _executor(args: argparse.Namespace) -> Executor | None:
    """The executor of ``--executor`` / ``--workers`` / ``--address`` / ``--num-cpus``
    (the shared option group of cli/options.py), or None to run in this process; the
    caller closes it."""
    if args.executor != "ray" and (args.address or args.num_cpus):
        raise ConfigurationError("--address and --num-cpus are for --executor ray")
    if args.executor != "local" and args.workers:
        raise ConfigurationError("--workers is for --executor local")
    if args.executor is None:
        return None
    return make_executor(args.executor, address=args.address, workers=args.workers,
                         num_cpus=args.num_cpus)


def _run(args: argparse.Namespace) -> int:
    _check_executor_flags(args)
    out = Path(args.out)
    check_outputs([], model_input_files(args.data, args.store), directories=[out],
                  create_dirs=True)
    if not (0 < args.delta < 1):
        raise ConfigurationError(f"--delta must be in (0, 1), got {args.delta}")
    if args.steps < 1 or args.record_every < 1 or not args.lr > 0:
        raise ConfigurationError("--steps and --record-every must be >= 1 and --lr > 0")
    scalings = [_scaling(s) for s in args.scalings]
    data: object = args.data
    if args.store is not None and args.executor is None:
        raise ConfigurationError("--store is for runs with --executor")
    if not (args.data == "digits" or str(args.data).startswith("digits:")):
        if not Path(args.data).is_file():
            raise ConfigurationError(f"--data: no such file '{args.data}' (use 'digits', "
                                     "'digits:<task>' or an .npz file)")
        if args.executor is None:
            data = load_npz(args.data)
    options = SweepOptions(steps=args.steps, record_every=args.record_every, lr=args.lr,
                           head_width=args.head_width, beta=args.beta,
                           activation=args.activation, inits=tuple(args.inits),
                           delta=args.delta, task=args.task)
    executor = _executor(args)
    try:
        table = sweep(args.depths, scalings, alphas=args.alphas, widths=args.widths, ns=args.ns,
                      data=data, options=options, seed=args.seed,  # type: ignore[arg-type]
                      progress=not args.no_progress, executor=executor, store=args.store)
    finally:
        if executor is not None:
            executor.close()
    out.mkdir(parents=True, exist_ok=True)
    csv = atomic_write_text(out / "meanfield_sweep.csv", table.to_csv(index=False))
    agreement = {c: spearman_agreement(table, c).__dict__ for c in AGREEMENT_COLUMNS}
    js = atomic_write_text(out / "spearman.json", json.dumps(agreement, indent=2, default=str) + "\n")
    written = [csv, js]
    if not args.no_plots:
        written.extend(plot_sweep(table, out))
    in_scope = int(table["in_scope"].sum())
    sp = agreement["gap_estimate"]
    rho = "n/a" if math.isnan(sp["rho"]) else f"{sp['rho']:.3f}"
    print(f"{len(table)} configurations ({in_scope} in scope); Spearman(gap estimate, measured "
          f"gap) = {rho} over {sp['n_configs']}")
    for path in written:
        print(f"wrote {path}")
    return 0


def run_design(args: argparse.Namespace) -> int:
    """Handler of ``certcompress meanfield design``; returns the exit code."""
    try:
        return _run_design(args)
    except CertcompressError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"certcompress meanfield design: error: {first}", file=sys.stderr)
        return 2


def _run_design(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigurationError(f"--out: '{out}' exists and is not a directory")
    if args.steps < 1:
        raise ConfigurationError(f"--steps must be >= 1, got {args.steps}")
    options = dataclasses.replace(DESIGN_OPTIONS, steps=args.steps, task=args.task)
    table = designed_sweep(seeds=args.seeds, options=options, progress=not args.no_progress)
    out.mkdir(parents=True, exist_ok=True)
    csv = atomic_write_text(out / "design.csv", table.to_csv(index=False))
    summary = {k: table.attrs[k] for k in ("n_rows", "in_scope", "in_scope_designs", "gap_span",
                                           "spearman_means", "spearman", "spearman_per_seed",
                                           "ratio", "best_estimate", "by_config", "recommendation")}
    js = atomic_write_text(out / "design.json", json.dumps(summary, indent=2, default=str) + "\n")
    written = [csv, js]
    if not args.no_plots:
        written.extend(plot_design(table, out) + plot_training(table, out))
    sp = table.attrs["spearman_means"][RECOMMENDED_ESTIMATE]
    rho = "n/a" if math.isnan(sp["rho"]) else f"{sp['rho']:.3f} (p = {sp['pvalue']:.2g})"
    rec = table.attrs["recommendation"]
    print(f"{table.attrs['n_rows']} runs ({table.attrs['in_scope']} in scope); "
          f"Spearman({RECOMMENDED_ESTIMATE}, measured gap) = {rho} over {sp['n_points']} "
          "design means; "
          f"recommended scaling: {rec.get('scaling')}")
    for path in written:
        print(f"wrote {path}")
    return 0
