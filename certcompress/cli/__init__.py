"""The ``certcompress`` command line: a thin layer over the Python API.

Commands::

    certcompress inspect MODEL [--weights W] [--input-shape 1 3 32 32] [--plugin MOD:ATTR]
    certcompress certify ORIGINAL COMPRESSED [--weights W] [--compressed-weights W2]
                         [--input-shape ...] [--radius R] [--reference-data FILE]
                         [--search-steps N] [--out certificate.json]
    certcompress adapters
    certcompress meanfield ...      (when certcompress.cli.meanfield is installed)
    certcompress demo ...           (when certcompress.cli.demo is installed)

MODEL is a spec for :func:`certcompress.loading.load_model` (``model.py:make``,
``package.module:make``, ``torchvision:resnet18`` with its plugin, ``model.pt2``).

A command lives in a module whose ``register(subparsers)`` adds its sub-parser and sets
``func`` (``Namespace -> int``) with ``set_defaults``. One table maps command names to
modules (:data:`_BUILTIN_COMMANDS`, :mod:`certcompress.cli.core`, and
:data:`_OPTIONAL_COMMANDS`); only the module of the command being run is imported, so
``certcompress --help`` imports neither torch nor the library.

Every :class:`~certcompress.errors.CertcompressError` (and an ``OSError`` writing an
output) ends the run with one line ``certcompress: error: <message>`` on stderr and exit
code 2; a :class:`~certcompress.errors.SoundnessError` or an unexpected exception (a bug)
exits with 1. ``--debug`` adds the traceback. Outputs are written atomically, so a failed
run leaves no output file.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import io
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from .._version import __version__
from ..errors import CertcompressError, SoundnessError

__all__ = ["main", "build_parser"]

Subparsers = Any  # argparse._SubParsersAction (private type)
Register = Callable[[Subparsers], None]

EXIT_OK, EXIT_BUG, EXIT_USER = 0, 1, 2


# ------------------------------------------------------------------ the parser
# The command table: every command lives in a module with ``register(subparsers)``, which
# is imported only when its command runs. Listing the commands (``--help``, an unknown
# command) uses the one-line helps below and imports nothing, so it starts in well under a
# second (no torch). A module named in the table that does not exist is skipped.
_CORE = "certcompress.cli.core"
_BUILTIN_COMMANDS: dict[str, str] = {"inspect": _CORE, "certify": _CORE, "adapters": _CORE}
_OPTIONAL_COMMANDS: dict[str, str] = {
    "demo": "certcompress.cli.demo",
    "prune": "certcompress.cli.prune",
    "certify-plan": "certcompress.cli.prune",
    "prune-report": "certcompress.cli.prune",
    "export": "certcompress.cli.export",
    "verify": "certcompress.cli.export",
    "keygen": "certcompress.cli.export",
    "quantize": "certcompress.cli.quantize",
    "meanfield": "certcompress.cli.meanfield",
    "zoo": "certcompress.cli.zoo",
    "results": "certcompress.cli.zoo",
    "equiv": "certcompress.cli.equiv",
    "equiv-batch": "certcompress.cli.equiv_batch",
    "tiers": "certcompress.cli.tiers",
}
_OPTIONAL_DEFAULTS = dict(_OPTIONAL_COMMANDS)  # the table as shipped (tests may replace it)
_HELP: dict[str, str] = {
    "inspect": "trace a model: graph, support verdict, path-norm",
    "certify": "certify max ||f(x) - f'(x)||_1 over an input domain for two models",
    "adapters": "list the registered adapters, lowerings and the loaded plugins",
    "demo": "run the end-to-end example on scikit-learn digits",
    "prune": "prune a model (a sparsity, or the sparsest plan within a budget) and certify it",
    "certify-plan": "certify a pruning plan file (JSON or YAML)",
    "prune-report": "certified bound vs measured deviation across sparsities (CSV and PNG)",
    "export": "export a certified compressed model to ONNX, verified",
    "verify": "verify an exported ONNX file against its embedded certificate",
    "keygen": "write an Ed25519 key pair for signing exported files",
    "quantize": "quantize a model's weights with a certified output-deviation bound",
    "meanfield": "mean-field generalization estimates for scaled ResNets",
    "zoo": "certify a zoo of models and plans from a manifest, resumably",
    "results": "list, show or export the results store of sweeps",
    "equiv": "prove or refute that a compressed model stays within epsilon of the original",
    "equiv-batch": "equivalence verification of every instance of a CSV file, in one process",
    "tiers": "list the registered certification tiers (what --method takes)",
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


def _exists(module_name: str) -> bool:
    """Whether ``module_name`` can be imported (its parent packages are imported to find
    out, so this is used only for modules outside the table of one-line helps)."""
    try:
        return importlib.util.find_spec(module_name) is not None
    except ModuleNotFoundError:
        return False


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser. Only the module of ``command`` is imported and registers its
    real sub-parser(s); every other command is listed by name and one-line help."""
    parser = argparse.ArgumentParser(
        prog="certcompress",
        description="Compress neural networks with certified output-deviation bounds.")
    parser.add_argument("--version", action="version", version=f"certcompress {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    table = {**_BUILTIN_COMMANDS, **_OPTIONAL_COMMANDS}
    if command in table:
        register = _optional_register(table[command])
        if register is not None:
            register(subparsers)
    for name, module in table.items():
        if name in subparsers.choices:
            continue
        if name in _HELP and module in (_CORE, _OPTIONAL_DEFAULTS.get(name)):
            subparsers.add_parser(name, help=_HELP[name], add_help=False)
        elif _exists(module):
            subparsers.add_parser(name, help=f"(from {module})", add_help=False)
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

