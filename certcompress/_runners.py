"""Executor-backed runners: how the lower layers reach the scale-out layer without
importing it.

The pruning report, the quantization bound-vs-bits sweep and the mean-field sweep accept
``executor=``, but they live below :mod:`certcompress.scale`, which builds on them.
Scale registers one runner per report here when it is imported; a report given an
executor looks its runner up with :func:`runner`, which loads the scale layer by name on
first use, the way an entry point is loaded. Nothing below scale imports it."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from .errors import ConfigurationError

__all__ = ["register_runner", "runner"]

_RUNNERS: dict[str, Callable[..., Any]] = {}
_SCALE = "certcompress.scale"


def register_runner(kind: str, fn: Callable[..., Any]) -> None:
    """Offer ``fn`` as the executor-backed implementation of the report ``kind``."""
    _RUNNERS[kind] = fn


def runner(kind: str) -> Callable[..., Any]:
    """The executor-backed implementation of ``kind``, loading the scale layer if needed."""
    if kind not in _RUNNERS:
        try:
            importlib.import_module(_SCALE)
        except ImportError as exc:
            raise ConfigurationError(f"executor= needs {_SCALE}, which failed to import: {exc}"
                                     ) from None
    fn = _RUNNERS.get(kind)
    if fn is None:
        raise ConfigurationError(f"no executor-backed runner for {kind!r}; registered: "
                                 f"{', '.join(sorted(_RUNNERS)) or 'none'}")
    return fn
