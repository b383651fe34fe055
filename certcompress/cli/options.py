"""Options and helpers shared by the command-line modules (each command module imports
these; the entry point :mod:`certcompress.cli` does not, so that ``--help`` stays light)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .._io import check_outputs, model_input_files
from ..capture import plugin_manager
from ..errors import ConfigurationError
from ..loading import exported_input_shape

__all__ = ["EXIT_OK", "EXIT_BUG", "EXIT_USER", "common_parent", "model_options", "load_plugins",
           "input_shape", "check_output"]

EXIT_OK, EXIT_BUG, EXIT_USER = 0, 1, 2


def common_parent() -> argparse.ArgumentParser:
    """Options every model-loading command takes (a parent parser)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--plugin", action="append", default=[], metavar="PKG.MOD:ATTR",
                   help="load a plugin by name before anything else (repeatable)")
    return p


def model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-shape", nargs="+", type=int, metavar="N",
                   help="input shape, batch first (e.g. 1 3 32 32); default: the plugin's or "
                        "the .pt2 archive's")


def load_plugins(specs: Sequence[str]) -> None:
    pm = plugin_manager()
    for spec in specs:
        if not any(lp.source == f"explicit: {spec}" for lp in pm.plugins):
            pm.load_path(spec)


def input_shape(model: Any, given: Sequence[int] | None, spec: str) -> tuple[int, ...]:
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
        ispec = plugin_manager().input_spec(model)
        if ispec is not None:
            return ispec.input_shape
    raise ConfigurationError(f"--input-shape is required for '{spec}' (no installed plugin "
                             "knows its input); pass it batch first, e.g. --input-shape 1 3 32 32")


def check_output(path: Path | None, *inputs: str | None,
                 others: Sequence[Path] = ()) -> None:
    """Fail before any work if ``path`` (or one of ``others``) cannot be written, or is
    one of the files named by ``inputs`` (model specs, weights, data)."""
    check_outputs([path, *others], model_input_files(*inputs))
