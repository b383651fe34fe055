"""The option groups and helpers shared by the command modules (each command module
imports these; the entry point :mod:`certcompress.cli` does not, so that ``--help`` stays
light). One declaration per option, so every command spells and explains it the same way:

- model: a positional model spec and its ``--weights`` (:func:`add_model`,
  :func:`add_weights`);
- plugin: ``--plugin`` (:func:`add_plugin`, or the parent parser :func:`common_parent`);
- input shape: ``--input-shape`` (:func:`add_input_shape`);
- domain: ``--radius``/``--domain`` and method: ``--method``/``--propagation``/
  ``--arithmetic`` (:func:`add_domain_group`, :func:`add_method_group`, from
  :mod:`certcompress.cli.domain_options`);
- search: ``--reference-data``, ``--search-steps``, ``--search-restarts``, ``--seed``
  (:func:`add_search`);
- output: ``--out`` (:func:`add_output`);
- executor: ``--executor``, ``--workers`` and the Ray options (:func:`add_executor`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .._io import check_outputs, model_input_files
from ..capture import plugin_manager
from ..domain import declared_input_shape
from ..errors import ConfigurationError
from ..loading import exported_input_shape
from ..resolve import input_spec_for
from .domain_options import (
    add_arithmetic_argument,
    add_domain_group,
    add_method_group,
    add_radius,
    certify_domain,
    certify_kwargs,
)

__all__ = ["EXIT_OK", "EXIT_BUG", "EXIT_USER", "common_parent", "model_options", "load_plugins",
           "input_shape", "check_output", "add_model", "add_weights", "add_plugin",
           "add_input_shape", "add_domain_group", "add_radius", "add_method_group", "add_arithmetic_argument",
           "add_search", "add_output", "add_executor", "certify_kwargs", "certify_domain"]

MODEL_SPEC_HELP = "model spec (model.py:make, pkg.mod:make, PREFIX:NAME, model.pt2)"

EXIT_OK, EXIT_BUG, EXIT_USER = 0, 1, 2


def add_plugin(p: Any) -> None:
    """``--plugin PKG.MOD:ATTR`` (repeatable)."""
    p.add_argument("--plugin", action="append", default=[], metavar="PKG.MOD:ATTR",
                   help="load a plugin by name before anything else (repeatable)")


def common_parent() -> argparse.ArgumentParser:
    """Options every model-loading command takes (a parent parser)."""
    p = argparse.ArgumentParser(add_help=False)
    add_plugin(p)
    return p


def add_model(p: Any, name: str = "model", metavar: str = "MODEL",
              help: str = MODEL_SPEC_HELP, *, weights: str | None = "--weights",
              weights_help: str = "state dict file to load") -> None:
    """A positional model spec and, unless ``weights`` is None, its state-dict option."""
    p.add_argument(name, metavar=metavar, help=help)
    if weights is not None:
        add_weights(p, weights, weights_help)


def add_weights(p: Any, flag: str = "--weights",
                help: str = "state dict file to load") -> None:
    """A state-dict option (loaded with ``weights_only=True``)."""
    p.add_argument(flag, metavar="STATE_DICT", help=help)


def add_input_shape(p: Any) -> None:
    """``--input-shape N ...`` (batch first)."""
    p.add_argument("--input-shape", nargs="+", type=int, metavar="N",
                   help="input shape, batch first (e.g. 1 3 32 32); default: the plugin's or "
                        "the .pt2 archive's")


model_options = add_input_shape  # the name the command modules used before the groups


def add_search(p: Any, *, steps: int = 20, restarts: int | None = 4,
               reference: bool = True) -> None:
    """``--reference-data`` (with ``reference``), ``--search-steps``, ``--search-restarts``
    (unless ``restarts`` is None) and ``--seed``: what a certificate measures."""
    g = p.add_argument_group("measurements")
    if reference:
        g.add_argument("--reference-data", metavar="FILE",
                       help="reference inputs: .npz (array 'x'), .npy or .pt tensor, batch "
                            "first")
    g.add_argument("--search-steps", type=int, default=steps, metavar="N",
                   help=f"PGD steps of the adversarial search inside the domain (0: skip; "
                        f"default {steps})")
    if restarts is not None:
        g.add_argument("--search-restarts", type=int, default=restarts, metavar="K",
                       help=f"starting points of the search (default {restarts})")
    g.add_argument("--seed", type=int, default=0, help="seed of the search (default 0)")


def add_output(p: Any, default: str | None, help: str, *, metavar: str = "FILE",
               flag: str = "--out", required: bool = False) -> None:
    """The command's main output (written atomically)."""
    p.add_argument(flag, default=default, metavar=metavar, required=required, help=help)


def add_executor(p: Any, choices: Sequence[str] = ("local", "ray", "serial"),
                 default: str | None = "local", help: str | None = None, *,
                 ray: bool = True) -> None:
    """``--executor`` and ``--workers`` (and, with ``ray``, ``--address`` and
    ``--num-cpus``): where the tasks run."""
    g = p.add_argument_group("executor")
    g.add_argument("--executor", choices=list(choices), default=default,
                   help=help or "where tasks run (default local: a process pool on this "
                                "machine)")
    g.add_argument("--workers", type=int, metavar="N",
                   help="local executor: worker processes (default: CPU cores)")
    if ray:
        g.add_argument("--address", metavar="ADDR",
                       help="Ray cluster: 'auto' or ray://HOST:10001 (default: a local "
                            "instance)")
        g.add_argument("--num-cpus", type=int, metavar="N",
                       help="local Ray instance: CPUs (default: all)")


def load_plugins(specs: Sequence[str]) -> None:
    pm = plugin_manager()
    for spec in specs:
        if not any(lp.source == f"explicit: {spec}" for lp in pm.plugins):
            pm.load_path(spec)


def input_shape(model: Any, given: Sequence[int] | None, spec: str) -> tuple[int, ...]:
    """``--input-shape``, else the shape a file declares (an exported program's example, an
    ONNX file's graph input, batch 1 where dynamic), else a plugin's input spec."""
    exported = (exported_input_shape(model)
                if isinstance(model, torch.export.ExportedProgram) else None)
    if exported is None:  # e.g. an ONNX file's graph input
        exported = declared_input_shape(model)
    if given:
        if any(s <= 0 for s in given):
            raise ConfigurationError(f"--input-shape must be positive integers, got "
                                     f"{' '.join(map(str, given))}")
        if exported is not None and tuple(given) != exported:
            raise ConfigurationError(
                f"'{spec}' declares input shape {exported}, not {tuple(given)}; omit "
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


def check_output(path: Path | None, *inputs: str | None,
                 others: Sequence[Path] = ()) -> None:
    """Fail before any work if ``path`` (or one of ``others``) cannot be written, or is
    one of the files named by ``inputs`` (model specs, weights, data)."""
    check_outputs([path, *others], model_input_files(*inputs))
