"""The package version and the provenance every certificate and report records.

This is a base module: it imports nothing from certcompress, so any layer may use it
without reaching up to the public facade."""

from __future__ import annotations

import datetime
import importlib.metadata
import platform
import sys
from typing import Any

__version__ = "0.1.0"


def versions(*extra: str) -> dict[str, str]:
    """The versions that determine a result: certcompress, torch, python and numpy, and
    those of the ``extra`` packages (e.g. ``"onnx", "onnxruntime"`` for an export)."""
    out = {"certcompress": __version__, "torch": _version_of("torch"),
           "python": platform.python_version(), "numpy": _version_of("numpy")}
    out.update((p, _version_of(p)) for p in extra)
    return out


def _version_of(package: str) -> str:
    """The version of an imported package as it reports itself (``torch.__version__``
    includes the build, e.g. ``+cpu``); the installed distribution's if not imported yet,
    so this module imports neither."""
    module = sys.modules.get(package)
    found = getattr(module, "__version__", None)
    return str(found) if found is not None else importlib.metadata.version(package)


def utc_now(timespec: str = "seconds") -> str:
    """The current UTC time, ISO 8601 (``timespec``: to the ``"seconds"``, the
    ``created_utc`` of records, or ``"milliseconds"``, the results store's timestamps)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec=timespec)


def provenance(*extra: str) -> dict[str, Any]:
    """``versions`` (with the ``extra`` packages') and ``created_utc``, as keyword
    arguments for a result record: the one place records get their provenance."""
    return {"versions": versions(*extra), "created_utc": utc_now()}
