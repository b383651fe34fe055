"""The ``certcompress`` command line: a thin layer over the Python API.

Commands::

    certcompress inspect MODEL [--weights W] [--input-shape 1 3 32 32] [--plugin MOD:ATTR]
    certcompress certify ORIGINAL COMPRESSED [--weights W] [--compressed-weights W2]
                         [--input-shape ...] [--radius R] [--reference-data FILE]
                         [--search-steps N] [--out certificate.json]
    certcompress adapters
    certcompress meanfield ...      (when certcompress.meanfield.cli is installed)
    certcompress demo ...           (when certcompress.demo is installed)

MODEL is a spec for :func:`certcompress.loading.load_model` (``model.py:make``,
``package.module:make``, ``torchvision:resnet18`` with its plugin, ``model.pt2``).

A command is a function ``register(subparsers)`` that adds one sub-parser and sets
``func`` (``Namespace -> int``) with ``set_defaults``; :data:`_COMMANDS` lists the built-in
ones and :data:`_OPTIONAL_COMMANDS` the modules whose ``register`` is imported lazily.

Every :class:`~certcompress.errors.CertcompressError` (and an ``OSError`` writing an
output) ends the run with one line ``certcompress: error: <message>`` on stderr and exit
code 2; a :class:`~certcompress.errors.SoundnessError` or an unexpected exception (a bug)
exits with 1. ``--debug`` adds the traceback. Outputs are written atomically, so a failed
run leaves no output file.
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ._version import __version__
from .api import certify, input_spec_for, path_norm, trace
from .bounds import cli_local
from .bounds.cli import add_domain_arguments, certify_kwargs
from .capture import ENTRY_POINT_GROUP, plugin_manager
from .errors import CertcompressError, ConfigurationError, SoundnessError, UnsupportedModelError
from .loading import exported_input_shape, load_model, load_module, load_reference_inputs

__all__ = ["main", "build_parser"]

Subparsers = Any  # argparse._SubParsersAction (private type)
Register = Callable[[Subparsers], None]

EXIT_OK, EXIT_BUG, EXIT_USER = 0, 1, 2


# ------------------------------------------------------------------ shared options
def _common() -> argparse.ArgumentParser:
    """Options every model-loading command takes (a parent parser)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--plugin", action="append", default=[], metavar="PKG.MOD:ATTR",
                   help="load a plugin by name before anything else (repeatable)")
    return p


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-shape", nargs="+", type=int, metavar="N",
                   help="input shape, batch first (e.g. 1 3 32 32); default: the plugin's or "
                        "the .pt2 archive's")


def _load_plugins(specs: Sequence[str]) -> None:
    pm = plugin_manager()
    for spec in specs:
        if not any(lp.source == f"explicit: {spec}" for lp in pm.plugins):
            pm.load_path(spec)


def _input_shape(model: Any, given: Sequence[int] | None, spec: str) -> tuple[int, ...]:
    exported = (exported_input_shape(model)
                if isinstance(model, torch.export.ExportedProgram) else None)
    if given:
        if any(s <= 0 for s in given):
            raise ConfigurationError(f"--input-shape must be positive integers, got "
                                     f"{' '.join(map(str, given))}")
        if exported is not None and tuple(given) != exported:
            raise ConfigurationError(
                f"'{spec}' was exported for input shape {exported}, not {tuple(given)}; omit "
                "--input-shape or export the model again with an example of that shape")
        return tuple(given)
    if exported is not None:
        return exported
    if not isinstance(model, torch.export.ExportedProgram):
        ispec = input_spec_for(model)
        if ispec is not None:
            return ispec.input_shape
    raise ConfigurationError(f"--input-shape is required for '{spec}' (no installed plugin "
                             "knows its input); pass it batch first, e.g. --input-shape 1 3 32 32")


def _check_output(path: Path) -> None:
    """Fail before any work if ``path`` cannot be written."""
    if path.is_dir():
        raise ConfigurationError(f"output '{path}' is a directory; name a file, e.g. "
                                 f"{path / 'certificate.json'}")
    parent = path.parent if str(path.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise ConfigurationError(f"cannot write '{path}': '{parent}' is not a directory")
    if not parent.is_dir():
        raise ConfigurationError(f"cannot write '{path}': directory '{parent}' does not exist; "
                                 "create it first")


# ------------------------------------------------------------------ inspect
def _register_inspect(subparsers: Subparsers) -> None:
    p = subparsers.add_parser(
        "inspect", parents=[_common()], help="trace a model: graph, support verdict, path-norm",
        description="Trace MODEL, print its graph, whether certcompress supports it (exit 0) "
                    "or every node it does not (exit 2), and its l1 path-norm.")
    p.add_argument("model", metavar="MODEL", help="model spec (model.py:make, pkg.mod:make, "
                                                   "PREFIX:NAME, model.pt2)")
    p.add_argument("--weights", metavar="STATE_DICT", help="state dict file to load")
    _model_options(p)
    p.set_defaults(func=_cmd_inspect)


def _cmd_inspect(args: argparse.Namespace) -> int:
    _load_plugins(args.plugin)
    model = load_model(args.model, args.weights)
    shape = _input_shape(model, args.input_shape, args.model)
    try:
        graph = trace(model, shape)
    except UnsupportedModelError as exc:
        print(f"{args.model}: NOT SUPPORTED for input shape {shape}")
        print(exc)
        return EXIT_USER
    print(graph)
    print(f"\n{args.model}: supported (a ReLU-DAG certcompress certifies) for input shape "
          f"{shape}")
    print(f"path-norm ||Phi(theta)||_1 = {path_norm(graph):.6g}")
    return EXIT_OK


# ------------------------------------------------------------------ certify
def _register_certify(subparsers: Subparsers) -> None:
    p = subparsers.add_parser(
        "certify", parents=[_common()],
        help="certify max ||f(x) - f'(x)||_1 over an input domain for two models",
        description="Certify the output deviation between ORIGINAL and COMPRESSED, print the "
                    "certificate and write it as JSON.")
    p.add_argument("original", metavar="ORIGINAL", help="model spec of the original model")
    p.add_argument("compressed", metavar="COMPRESSED", help="model spec of the compressed model")
    p.add_argument("--weights", metavar="STATE_DICT", help="state dict of ORIGINAL")
    p.add_argument("--compressed-weights", metavar="STATE_DICT",
                   help="state dict of COMPRESSED")
    _model_options(p)
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
    _check_output(out)
    if args.search_steps < 0 or args.search_restarts < 1:
        raise ConfigurationError("--search-steps must be >= 0 and --search-restarts >= 1")
    _load_plugins(args.plugin)
    original = load_module(args.original, args.weights, needed_by="certify")
    compressed = load_module(args.compressed, args.compressed_weights, needed_by="certify")
    shape = _input_shape(original, args.input_shape, args.original)
    if args.radius is None and not args.domain and input_spec_for(original) is None:
        raise ConfigurationError(
            f"--radius is required for '{args.original}': the certificate covers inputs with "
            "||x||_inf <= R (after normalization) and no installed plugin knows a default")
    reference = (load_reference_inputs(args.reference_data, shape)
                 if args.reference_data else None)
    tiers = certify_kwargs(args, shape, reference)
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
    p = subparsers.add_parser("adapters", parents=[_common()],
                              help="list the registered adapters and the loaded plugins")
    p.set_defaults(func=_cmd_adapters)


def _cmd_adapters(args: argparse.Namespace) -> int:
    _load_plugins(args.plugin)
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


# ------------------------------------------------------------------ the parser
_COMMANDS: list[Register] = [_register_inspect, _register_certify, _register_adapters]
# Commands in optional modules (``register(subparsers)`` each), imported only when named
# or when the full command list is needed (help, an unknown command); a module that does
# not exist is skipped.
_OPTIONAL_COMMANDS: dict[str, str] = {
    "demo": "certcompress.demo",
    "prune": "certcompress.compress.pruning.cli",
    "certify-plan": "certcompress.compress.pruning.cli",
    "prune-report": "certcompress.compress.pruning.cli",
    "export": "certcompress.export.cli",
    "verify": "certcompress.export.cli",
    "keygen": "certcompress.export.cli",
    "quantize": "certcompress.compress.quantization.cli",
    "meanfield": "certcompress.meanfield.cli",
    "zoo": "certcompress.scale.cli",
    "results": "certcompress.scale.cli",
    "equiv": "certcompress.equivalence.cli",
}


def _optional_register(module_name: str) -> Register | None:
    """``module_name.register``, or None if that module (or its package) does not exist.
    Any other import error, including a missing dependency of the module, propagates."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name
                                     or module_name.startswith(exc.name + ".")):
            return None
        raise
    register: Register = module.register
    return register


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser. With ``command`` naming a built-in command, the optional
    command modules are not imported (they are only needed to list or run them)."""
    parser = argparse.ArgumentParser(
        prog="certcompress",
        description="Compress neural networks with certified output-deviation bounds.")
    parser.add_argument("--version", action="version", version=f"certcompress {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in _COMMANDS:
        register(subparsers)
    if command not in subparsers.choices:  # a built-in command needs no optional module
        wanted = [command] if command in _OPTIONAL_COMMANDS else list(_OPTIONAL_COMMANDS)
        for name in wanted:
            optional = _optional_register(_OPTIONAL_COMMANDS[str(name)])
            if optional is not None:
                optional(subparsers)
    for sub in subparsers.choices.values():  # --debug after the command works too
        try:
            sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show the traceback of an error")
        except argparse.ArgumentError:
            pass  # the command defines its own --debug
    return parser


def _command_word(argv: Sequence[str]) -> str | None:
    """The command named in ``argv`` (the main options take no values)."""
    return next((a for a in argv if not a.startswith("-")), None)


def _fail(exc: BaseException, code: int, debug: bool) -> int:
    if debug:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    text = str(exc).strip() or type(exc).__name__
    print(f"certcompress: error: {text}", file=sys.stderr)
    return code


def _stdout_to_devnull() -> None:
    """After a broken pipe, send what is left of stdout nowhere (no error at exit)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        pass


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 user error or unsupported
    model, 1 a bug: a SoundnessError or an unexpected exception)."""
    words = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_word(words))
    try:
        args = parser.parse_args(words)
    except SystemExit as exc:  # --help, --version, usage errors (argparse printed them)
        return exc.code if isinstance(exc.code, int) else EXIT_USER
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USER
    debug = bool(getattr(args, "debug", False))
    try:
        return int(args.func(args))
    except SoundnessError as exc:
        return _fail(exc, EXIT_BUG, debug)
    except CertcompressError as exc:
        return _fail(exc, EXIT_USER, debug)
    except BrokenPipeError:  # e.g. `certcompress adapters | head`
        _stdout_to_devnull()
        return 141
    except OSError as exc:
        return _fail(exc, EXIT_USER, debug)
    except KeyboardInterrupt:
        print("certcompress: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
        print(f"certcompress: internal error: {type(exc).__name__}: {first} (a bug in "
              "certcompress; rerun with --debug for the traceback and report it)",
              file=sys.stderr)
        return EXIT_BUG


if __name__ == "__main__":
    raise SystemExit(main())
