"""Pruning commands of the ``certcompress`` command line (thin layers over the API)::

    certcompress prune MODEL --sparsity 0.5 --criterion path-magnitude --out pruned.pt \\
        --certificate cert.json
    certcompress prune MODEL --budget EPS [--criterion ...] [--plan-out plan.json]
    certcompress prune MODEL --sparsity 0.5 --domain 0:1 [--method bounds ...]
    certcompress certify-plan MODEL plan.json        (JSON or YAML plan; schema in docs)
    certcompress prune-report MODEL --data data.npz [--labels y.npy] --csv r.csv --png r.png

``register(subparsers)`` adds the three sub-parsers; each handler takes the parsed
``argparse.Namespace`` and returns the exit code. Errors are raised as
:class:`~certcompress.errors.CertcompressError` (the main entry point prints them and
exits 2). Pruned models are written as state dicts (``torch.save(model.state_dict())``),
never as pickled objects; every output is written atomically.

``prune`` and ``certify-plan`` certify over ``--radius`` or the box ``--domain LO:HI``
with the tiers of ``--method`` (the shared option groups of
:mod:`certcompress.cli.options`); with ``--budget`` the search uses the bounds tier too
when the certificate does (``--domain`` alone, or ``--method bounds``), and the
certificate then includes the path-metric tier the search used.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._io import atomic_files, check_outputs, model_input_files
from ..compress.pruning.apply import prune
from ..compress.pruning.criteria import CRITERIA
from ..compress.pruning.plan import PruningPlan
from ..compress.pruning.report import pruning_report, save_report
from ..compress.pruning.search import search_sparsity
from ..compress.pruning.sensitivity import layer_sensitivity
from ..errors import ConfigurationError
from ..loading import load_model, load_reference_inputs
from .domain_options import default_methods
from .options import (
    add_domain_group,
    add_input_shape,
    add_method_group,
    add_model,
    add_plugin,
    add_radius,
    add_search,
    certify_domain,
    input_shape,
    load_plugins,
)

__all__ = ["register", "cmd_prune", "cmd_certify_plan", "cmd_prune_report"]


# ------------------------------------------------------------------ shared
def _model_args(p: argparse.ArgumentParser, domain: bool = True) -> None:
    add_model(p, help="model spec (model.py:make, pkg.mod:make, PREFIX:NAME)")
    add_plugin(p)
    add_input_shape(p)
    if domain:
        add_domain_group(p)
    else:
        add_radius(p)


def _cert_args(p: argparse.ArgumentParser) -> None:
    add_search(p)
    add_method_group(p)


def _load(args: argparse.Namespace) -> tuple[nn.Module, tuple[int, ...]]:
    load_plugins(args.plugin)
    model = load_model(args.model, args.weights)
    if not isinstance(model, nn.Module):
        raise ConfigurationError(f"pruning needs an nn.Module; '{args.model}' is a torch.export "
                                 "archive: name the model's factory instead")
    return model, input_shape(model, args.input_shape, args.model)


def _outputs(args: argparse.Namespace, *paths: str | None) -> None:
    """Fail before any work if an output cannot be written or is one of the inputs."""
    check_outputs(paths, model_input_files(args.model, args.weights,
                                           getattr(args, "reference_data", None),
                                           getattr(args, "plan", None),
                                           getattr(args, "labels", None)))


def _reference(args: argparse.Namespace, shape: tuple[int, ...]) -> Tensor | None:
    if args.search_steps < 0:
        raise ConfigurationError(f"--search-steps must be >= 0, got {args.search_steps}")
    if getattr(args, "search_restarts", 1) < 1:
        raise ConfigurationError(f"--search-restarts must be >= 1, got {args.search_restarts}")
    return load_reference_inputs(args.reference_data, shape) if args.reference_data else None


def _state_writer(model: nn.Module) -> Any:
    def write(tmp: Path) -> None:
        torch.save(model.state_dict(), tmp)
    return write


def _text_writer(text: str) -> Any:
    def write(tmp: Path) -> None:
        tmp.write_text(text, encoding="utf-8")
    return write


def _print_sensitivity(model: nn.Module, plan: Any, shape: tuple[int, ...],
                       radius: float | None) -> None:
    df = layer_sensitivity(model, plan, shape, radius)
    df = df[df["pruned"] > 0]
    print("\nper-layer sensitivity (certified bound of pruning each layer alone, same units):")
    if df.empty:
        print("  (no layer is pruned)")
        return
    print(df.to_string(index=False, float_format=lambda v: f"{v:.4g}"))


# ------------------------------------------------------------------ prune
def cmd_prune(args: argparse.Namespace) -> int:
    _outputs(args, args.out, args.certificate, args.plan_out)
    model, shape = _load(args)
    reference = _reference(args, shape)
    tiers = certify_domain(args, model, shape, reference, args.model)
    if args.budget is not None:
        methods = tiers["methods"] or default_methods(tiers["domain"])
        certifier = "bounds" if "bounds" in methods else "path-metric"
        found = search_sparsity(model, args.budget, args.criterion, shape,
                                tiers["input_radius"], scope=args.scope, exclude=args.exclude,
                                seed=args.seed, certifier=certifier, domain=tiers["domain"])
        print(found.summary())
        plan = found.plan
        if tiers["methods"] is not None:  # the certificate holds the tiers the search used
            tiers["methods"] = tuple(dict.fromkeys(("path-metric", *tiers["methods"])))
    else:
        plan = PruningPlan.by_criterion(model, args.sparsity, args.criterion, scope=args.scope,
                                        exclude=args.exclude, seed=args.seed, input_shape=shape)
    pruned, cert = prune(model, plan, shape, reference_inputs=reference,
                         search_steps=args.search_steps, search_restarts=args.search_restarts,
                         seed=args.seed, **tiers)
    print(f"plan: {plan.describe()}")
    print(cert.summary())
    if args.sensitivity:
        _print_sensitivity(model, plan, shape, cert.radius)
    # all files are written to temporaries first and renamed into place only when every
    # one of them succeeded: a failure leaves none of them half-updated
    files: dict[str | os.PathLike[str], Any] = {args.out: _state_writer(pruned),
                             args.certificate: _text_writer(cert.to_json() + "\n")}
    if args.plan_out:
        files[args.plan_out] = _text_writer(plan.dumps(args.plan_out))
    atomic_files(files)
    print(f"pruned state dict written to {Path(args.out).resolve()}")
    print(f"certificate written to {Path(args.certificate).resolve()}")
    if args.plan_out:
        print(f"plan written to {Path(args.plan_out).resolve()}")
    return 0


# ------------------------------------------------------------------ certify-plan
def cmd_certify_plan(args: argparse.Namespace) -> int:
    _outputs(args, args.certificate, args.out)
    plan = PruningPlan.load(args.plan)
    model, shape = _load(args)
    try:
        plan.validate(model)
    except ConfigurationError as exc:
        raise ConfigurationError(f"plan file '{args.plan}': {exc}") from None
    reference = _reference(args, shape)
    tiers = certify_domain(args, model, shape, reference, args.model)
    pruned, cert = prune(model, plan, shape, reference_inputs=reference,
                         search_steps=args.search_steps, search_restarts=args.search_restarts,
                         seed=args.seed, **tiers)
    print(f"plan {args.plan}: {plan.describe()}")
    print(cert.summary())
    _print_sensitivity(model, plan, shape, cert.radius)
    files: dict[str | os.PathLike[str], Any] = {}
    if args.certificate:
        files[args.certificate] = _text_writer(cert.to_json() + "\n")
    if args.out:
        files[args.out] = _state_writer(pruned)
    atomic_files(files)
    if args.certificate:
        print(f"certificate written to {Path(args.certificate).resolve()}")
    if args.out:
        print(f"pruned state dict written to {Path(args.out).resolve()}")
    return 0


# ------------------------------------------------------------------ prune-report
def _labels(path: str, n: int) -> Tensor:
    p = Path(path)
    if not p.is_file():
        raise ConfigurationError(f"labels file '{p}' does not exist")
    y: object
    try:
        if p.suffix.lower() in (".npz", ".npy"):
            loaded = np.load(p, allow_pickle=False)
            if isinstance(loaded, np.ndarray):
                y = torch.from_numpy(loaded)
            else:
                with loaded:
                    if "y" not in loaded.files:
                        raise ConfigurationError(f"labels file '{p}' has no array named 'y'")
                    y = torch.from_numpy(loaded["y"])
        else:
            obj = torch.load(p, map_location="cpu", weights_only=True)
            y = obj.get("y") if isinstance(obj, dict) else obj
    except ConfigurationError:
        raise
    except Exception as exc:
        raise ConfigurationError(f"cannot read labels '{p}': {type(exc).__name__}: "
                                 f"{exc}") from None
    if not isinstance(y, Tensor) or y.is_floating_point() or y.dim() < 1 or y.shape[0] != n:
        raise ConfigurationError(f"labels '{p}' must be an integer array with one label per "
                                 f"reference input ({n})")
    return y.long()


def _npz_labels(path: str) -> str | None:
    if not path.lower().endswith(".npz"):
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            return path if "y" in f.files else None
    except Exception:
        return None


def cmd_prune_report(args: argparse.Namespace) -> int:
    _outputs(args, args.csv, args.png)
    model, shape = _load(args)
    x = _reference(args, shape)
    assert x is not None
    label_file = args.labels or _npz_labels(args.reference_data)
    y = _labels(label_file, int(x.shape[0])) if label_file else None
    df = pruning_report(model, args.criteria, args.sparsities, data=x, labels=y,
                        input_shape=shape, input_radius=args.radius, scope=args.scope,
                        exclude=args.exclude, search_steps=args.search_steps, seed=args.seed,
                        progress=not args.no_progress)
    cols = ["criterion", "sparsity", "certified_bound", "baseline_bound_linf",
            "deviation_mean", "deviation_max", "adversarial_max", "vacuous", "accuracy",
            "nonzero_parameters"]
    print(df[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    csv, png = save_report(df, args.csv, args.png)
    print(f"table written to {csv.resolve()}")
    if png is not None:
        print(f"plot written to {png.resolve()}")
    return 0


# ------------------------------------------------------------------ parsers
def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is outside [0, 1]")
    return v


def _selection(p: argparse.ArgumentParser, criterion: bool = True) -> None:
    if criterion:
        p.add_argument("--criterion", default="path-magnitude", choices=CRITERIA,
                       help="weight ranking (default path-magnitude, rescaling-invariant)")
    p.add_argument("--scope", default="global", choices=("global", "per-layer"),
                   help="rank all layers jointly (global) or each layer alone")
    p.add_argument("--exclude", nargs="+", default=[], metavar="LAYER",
                   help="layer names or glob patterns kept dense (e.g. fc 'layer1.*')")


def register(subparsers: Any) -> None:
    """Add ``prune``, ``certify-plan`` and ``prune-report`` (once: a second call, e.g. when
    the main parser maps all three command names to this module, does nothing)."""
    if "prune" in getattr(subparsers, "choices", {}):
        return
    p = subparsers.add_parser(
        "prune", help="prune a model (a sparsity, or the sparsest plan within a budget) and "
                      "certify it",
        description="Prune MODEL's Linear/Conv weights by a criterion at --sparsity, or find "
                    "the largest sparsity whose certified bound is at most --budget; write "
                    "the pruned state dict and the certificate.")
    _model_args(p)
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--sparsity", type=_fraction, metavar="S",
                     help="fraction of the candidate weights to prune, in [0, 1]")
    how.add_argument("--budget", type=float, metavar="EPS",
                     help="largest certified l1 output deviation allowed")
    _selection(p)
    _cert_args(p)
    p.add_argument("--out", default="pruned.pt", metavar="FILE",
                   help="pruned state dict (default pruned.pt)")
    p.add_argument("--certificate", default="certificate.json", metavar="FILE",
                   help="certificate JSON (default certificate.json)")
    p.add_argument("--plan-out", metavar="FILE", help="also write the plan (JSON, or YAML "
                                                      "for .yaml)")
    p.add_argument("--sensitivity", action="store_true",
                   help="print the per-layer sensitivity table")
    p.set_defaults(func=cmd_prune)

    q = subparsers.add_parser(
        "certify-plan", help="certify a pruning plan file (JSON or YAML)",
        description="Validate PLAN against MODEL, prune a copy, print the certificate and the "
                    "per-layer sensitivity table. Plan schema: docs/pruning.md.")
    _model_args(q)
    q.add_argument("plan", metavar="PLAN", help="plan file (.json, .yaml or .yml)")
    _cert_args(q)
    q.add_argument("--certificate", metavar="FILE", help="write the certificate JSON")
    q.add_argument("--out", metavar="FILE", help="write the pruned state dict")
    q.set_defaults(func=cmd_certify_plan)

    r = subparsers.add_parser(
        "prune-report", help="certified bound vs measured deviation across sparsities "
                             "(CSV and PNG)",
        description="For each criterion and sparsity: certified bound, baseline, deviation "
                    "measured on --data, gradient-ascent deviation, accuracy (with labels).")
    _model_args(r, domain=False)
    r.add_argument("--data", dest="reference_data", required=True, metavar="FILE",
                   help="inputs (.npz with 'x' [and 'y'], .npy or .pt), batch first")
    r.add_argument("--labels", metavar="FILE", help="integer labels (.npy, .npz 'y', .pt)")
    r.add_argument("--criteria", nargs="+", default=["magnitude", "path-magnitude"],
                   choices=CRITERIA)
    r.add_argument("--sparsities", nargs="+", type=_fraction,
                   default=[0.1, 0.3, 0.5, 0.7, 0.9], metavar="S")
    _selection(r, criterion=False)
    r.add_argument("--search-steps", type=int, default=20, metavar="N",
                   help="PGD steps per row (0: skip; default 20)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--csv", default="pruning_report.csv", metavar="FILE")
    r.add_argument("--png", default="pruning_report.png", metavar="FILE")
    r.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    r.set_defaults(func=cmd_prune_report)
