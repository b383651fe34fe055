"""``certcompress meanfield sweep`` (and its alias ``design``): a thin command-line layer
over :func:`mf.sweep`; without grid options it runs the designed sweep (the default).

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

import pandas as pd

from .._io import atomic_write_text, check_outputs, model_input_files
from ..errors import CertcompressError, ConfigurationError
from ..meanfield._data import load_npz
from ..meanfield._plots import plot_design, plot_sweep, plot_training
from ..meanfield._sweep import (
    DESIGN_OPTIONS,
    GRID_DEFAULTS,
    RECOMMENDED_ESTIMATE,
    SweepOptions,
    sweep,
)
from ..scale.executors import Executor, make_executor
from .options import add_executor, add_output

__all__ = ["register", "run_sweep", "report_lines"]

_NAMED_SCALINGS = ("mean-field", "sqrt", "none")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``meanfield`` command (``sweep`` and its alias ``design``) to ``subparsers``."""
    mf = subparsers.add_parser(
        "meanfield", help="mean-field generalization estimates for scaled ResNets",
        description="Mean-field estimates (Chen et al. 2024): estimates, not certificates.")
    sub = mf.add_subparsers(dest="meanfield_command", metavar="COMMAND", required=True)
    p = sub.add_parser(
        "sweep", help="train and estimate over the designed sweep (default) or a grid; "
                      "write CSV, JSON and PNG plots",
        description="Without grid options: the designed sweep (digits, n x label noise plus "
                    "depth/alpha/scaling/init variants, seeds 0 1 2; about 100 s on 2 cores). "
                    "With any of --depths --scalings --alphas --widths --ns --inits: that "
                    "grid (left-out grid options: depths 4 8 16 32, scalings mean-field sqrt "
                    "none, alpha 1, width 128, n 500; 300 steps). Writes meanfield_sweep.csv, "
                    "summary.json (Spearman with p-values over configuration means, 95%% "
                    "intervals over seeds, the recommended depth scaling with its evidence), "
                    "spearman.json and PNG plots to --out.")
    _add_sweep_options(p)
    p.set_defaults(func=run_sweep, csv_name="meanfield_sweep.csv", json_name="summary.json")

    q = sub.add_parser(
        "design", help="the default sweep (alias of 'sweep' without grid options), "
                       "written as design.csv and design.json",
        description="The designed sweep, as 'certcompress meanfield sweep' without grid "
                    "options, writing design.csv, design.json and PNG plots to --out.")
    _add_sweep_options(q, grid=False)
    q.set_defaults(func=run_sweep, csv_name="design.csv", json_name="design.json", beta=None,
                   depths=None, scalings=None, alphas=None, widths=None, ns=None, inits=None,
                   executor=None, store=None, address=None, num_cpus=None, workers=None)


def _add_sweep_options(p: argparse.ArgumentParser, grid: bool = True) -> None:
    """Options of ``sweep`` (``grid=False``: those of the designed sweep only). Defaults of
    None mean "the design's or the grid's own default" (DESIGN_OPTIONS / SweepOptions())."""
    if grid:
        p.add_argument("--depths", type=int, nargs="+", default=None, metavar="L",
                       help="grid: depths (default with a grid: 4 8 16 32)")
        p.add_argument("--scalings", nargs="+", default=None, metavar="S",
                       help="grid: mean-field, sqrt, none, or a number used as c_L "
                            "(default with a grid: mean-field sqrt none)")
        p.add_argument("--alphas", type=float, nargs="+", default=None, metavar="A",
                       help="grid: alphas (default with a grid: 1)")
        p.add_argument("--widths", type=int, nargs="+", default=None, metavar="M",
                       help="grid: widths (default with a grid: 128)")
        p.add_argument("--ns", type=int, nargs="+", default=None, metavar="N",
                       help="grid: training-set sizes (default 500 for digits, all rows for a file)")
        p.add_argument("--inits", nargs="+", default=None,
                       choices=["mean-field", "standard", "paired"],
                       help="grid: initialisations (default with a grid: mean-field)")
    p.add_argument("--data", default="digits",
                   help="'digits', 'digits:<task>' (odd-even, 3-vs-8, 0-vs-rest) or a .npz "
                        "file with X, y or X_train, y_train, X_test, y_test")
    p.add_argument("--task", default=None, help="digits task when --data is 'digits' "
                                                "(default odd-even)")
    p.add_argument("--steps", type=int, default=None,
                   help="training steps (default: 150 for the design, 300 for a grid)")
    p.add_argument("--record-every", type=int, default=None,
                   help="checkpoint interval (default: 25 design, 50 grid)")
    p.add_argument("--lr", type=float, default=None, help="step size before 1/beta^2 (default 0.5)")
    p.add_argument("--head-width", type=int, default=None)
    p.add_argument("--activation", default=None, help="default tanh")
    p.add_argument("--delta", type=float, default=None, help="confidence (default 0.05)")
    if grid:
        p.add_argument("--beta", type=float, default=None,
                       help="grid: head scale (default 1; a design point sets its own)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, metavar="S",
                   help="seeds (default: 0 1 2 for the design, 0 for a grid)")
    if grid:
        p.add_argument("--seed", type=int, default=None, help="one seed (instead of --seeds)")
        add_executor(p, default=None,
                     help="grid only: run the configurations through certcompress.scale "
                          "(local: a process pool, ray, or serial with a resumable store); "
                          "default: in this process")
        p.add_argument("--store", default=None,
                       help="with --executor: SQLite results file; a stopped sweep resumes from it")
    add_output(p, None, "output directory (created if missing)", metavar="DIR", required=True)
    p.add_argument("--no-plots", action="store_true", help="write the CSV and JSON only")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


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
    """Handler of ``certcompress meanfield sweep`` (and ``design``); returns the exit code."""
    try:
        return _run(args)
    except CertcompressError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"certcompress meanfield {args.meanfield_command}: error: {first}", file=sys.stderr)
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


_GRID_FLAGS = ("depths", "scalings", "alphas", "widths", "ns", "inits")
_OPTION_FLAGS = {"steps": "steps", "record_every": "record_every", "lr": "lr",
                 "head_width": "head_width", "beta": "beta", "activation": "activation",
                 "delta": "delta", "task": "task"}


def _run(args: argparse.Namespace) -> int:
    _check_executor_flags(args)
    grid = any(getattr(args, k, None) is not None for k in _GRID_FLAGS)
    if not grid and (args.executor is not None or args.store is not None):
        raise ConfigurationError("--executor and --store run a grid: add grid options "
                                 "(--depths, --scalings, ...); the designed sweep runs here")
    if args.store is not None and args.executor is None:
        raise ConfigurationError("--store is for runs with --executor")
    if getattr(args, "seed", None) is not None and args.seeds is not None:
        raise ConfigurationError("pass --seed or --seeds, not both")
    out = Path(args.out)
    check_outputs([], model_input_files(args.data, args.store), directories=[out],
                  create_dirs=True)
    given = {field: getattr(args, flag) for flag, field in _OPTION_FLAGS.items()
             if getattr(args, flag) is not None}
    if "delta" in given and not 0 < given["delta"] < 1:
        raise ConfigurationError(f"--delta must be in (0, 1), got {given['delta']}")
    for flag in ("steps", "record_every"):
        if flag in given and given[flag] < 1:
            raise ConfigurationError(f"--{flag.replace('_', '-')} must be >= 1, got {given[flag]}")
    if "lr" in given and not given["lr"] > 0:
        raise ConfigurationError(f"--lr must be > 0, got {given['lr']}")
    if not grid and "beta" in given:
        raise ConfigurationError("--beta is for a grid: each design point sets its own beta")
    data: object = args.data
    if not (args.data == "digits" or str(args.data).startswith("digits:")):
        if not Path(args.data).is_file():
            raise ConfigurationError(f"--data: no such file '{args.data}' (use 'digits', "
                                     "'digits:<task>' or an .npz file)")
        if args.executor is None:
            data = load_npz(args.data)
    if grid:
        if args.inits is not None:
            given["inits"] = tuple(args.inits)
        options = SweepOptions(**given)
        kwargs: dict[str, object] = dict(
            depths=args.depths, scalings=None if args.scalings is None else [_scaling(s) for s in args.scalings],
            alphas=args.alphas, widths=args.widths, ns=args.ns)
        if kwargs["depths"] is kwargs["scalings"] is kwargs["alphas"] is kwargs["widths"] is kwargs["ns"] is None:
            kwargs["depths"] = GRID_DEFAULTS["depths"]  # only --inits given: still a grid
    else:
        options = dataclasses.replace(DESIGN_OPTIONS, **given)
        kwargs = {}
    executor = _executor(args)
    try:
        table = sweep(**kwargs, data=data, options=options, seed=getattr(args, "seed", None),  # type: ignore[arg-type]
                      seeds=args.seeds, progress=not args.no_progress, executor=executor,
                      store=args.store)
    finally:
        if executor is not None:
            executor.close()
    out.mkdir(parents=True, exist_ok=True)
    csv = atomic_write_text(out / args.csv_name, table.to_csv(index=False))
    summary = {k: table.attrs[k] for k in _SUMMARY_KEYS if k in table.attrs}
    js = atomic_write_text(out / args.json_name, json.dumps(summary, indent=2, default=str) + "\n")
    written = [csv, js]
    if args.json_name != "design.json":
        written.append(atomic_write_text(out / "spearman.json", json.dumps(
            table.attrs["spearman"], indent=2, default=str) + "\n"))
    if not args.no_plots:
        if "design" in table.columns:
            written.extend(plot_design(table, out) + plot_training(table, out))
        else:
            written.extend(plot_sweep(table, out))
    for line in report_lines(table):
        print(line)
    for path in written:
        print(f"wrote {path}")
    return 0


_SUMMARY_KEYS = ("n_rows", "in_scope", "in_scope_designs", "seeds", "gap_span", "recommendation",
                 "spearman_means", "spearman", "spearman_per_seed", "ratio", "best_estimate",
                 "by_config")


def _num(x: object, fmt: str = ".3g") -> str:
    v = float(x) if isinstance(x, int | float) else math.nan
    return "n/a" if not math.isfinite(v) else format(v, fmt)


def _ci(mean: object, half: object) -> str:
    h = float(half) if isinstance(half, int | float) else math.nan
    return _num(mean) + ("" if not math.isfinite(h) else f" +- {_num(h, '.2g')}")


def report_lines(table: pd.DataFrame) -> list[str]:
    """The console summary of a :func:`sweep` table: runs and scope, the gap spread, rank
    agreement (with p-values) over configuration means, and the recommended depth scaling
    with its evidence."""
    a = table.attrs
    n_cfg = int(table["config"].nunique())
    seeds = a.get("seeds", sorted(set(table["seed"])))
    gaps = [float(e["measured_gap"]["mean"]) for e in a["by_config"].values()
            if "measured_gap" in e and e.get("in_scope")]
    lines = [f"{len(table)} runs = {n_cfg} configurations x {len(seeds)} seeds; in scope: "
             f"{a['in_scope']} runs, {a['in_scope_designs']} configurations; "
             + (f"in-scope measured gaps {_num(min(gaps))} to {_num(max(gaps))} "
                f"(span {_num(a['gap_span'])}x)" if gaps else "no in-scope configuration")]
    for col in (RECOMMENDED_ESTIMATE, "gap_estimate"):
        sp = a["spearman_means"][col]
        lines.append(f"Spearman({col}, measured gap) over {sp['n_points']} configuration means: "
                     f"rho = {_num(sp['rho'])}, p = {_num(sp['pvalue'], '.2g')}")
    rec = a["recommendation"]
    if rec.get("scaling") is None:
        lines.append(f"recommended depth scaling: none ({rec.get('reason')})")
        return lines
    ev = rec["evidence"][rec["scaling"]]
    lines.append(
        f"recommended depth scaling: {rec['scaling']} (estimated risk "
        f"{_ci(ev['estimated_risk'], ev['estimated_risk_ci95'])}, measured gap "
        f"{_ci(ev['measured_gap'], ev['measured_gap_ci95'])}, regime {'/'.join(ev['regimes'])}, "
        f"conditions met in {_num(100 * ev['conditions_met'], '.0f')}% of {ev['rows']} runs"
        + (f"; out of scope, not ranked: {', '.join(rec['out_of_scope_scalings'])}"
           if rec.get("out_of_scope_scalings") else "") + ")")
    return lines
