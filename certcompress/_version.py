"""The package version and the provenance every certificate and report records.

This is a base module: it imports nothing from certcompress, so any layer may use it
without reaching up to the public facade."""

from __future__ import annotations

import datetime
import platform
from typing import Any

import numpy as np
import torch

__version__ = "0.1.0"


def versions() -> dict[str, str]:
    """The versions that determine a result: certcompress, torch, python and numpy."""
    return {"certcompress": __version__, "torch": torch.__version__,
            "python": platform.python_version(), "numpy": np.__version__}


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second (the ``created_utc`` of records)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def provenance() -> dict[str, Any]:
    """``versions`` and ``created_utc``, as keyword arguments for a result record."""
    return {"versions": versions(), "created_utc": utc_now()}
