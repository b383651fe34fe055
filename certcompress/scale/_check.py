"""Field checks shared by the task kinds and the manifest: each error names the field."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .._schema import field_name
from ..errors import ConfigurationError

__all__ = ["fields", "shape", "radius", "integer", "nonneg_int", "number", "fraction", "text", "names",
           "scalar_row"]


def _got(v: object) -> str:
    return f"{type(v).__name__} {v!r}"


def fields(d: object, allowed: Sequence[str], where: str, hint: str = "") -> Mapping[str, Any]:
    """``d`` checked to be a mapping with only the ``allowed`` keys (``where.key is
    unknown; fields are ...`` otherwise, then ``hint``)."""
    if not isinstance(d, Mapping):
        raise ConfigurationError(f"{where} must be a mapping, got {type(d).__name__}")
    unknown = [k for k in d if k not in allowed]
    if unknown:
        raise ConfigurationError(f"{where}.{field_name(unknown[0])} is unknown; fields are "
                                 f"{', '.join(allowed)}{hint}")
    return d


def shape(v: object, where: str) -> tuple[int, ...]:
    if isinstance(v, (str, bytes)) or not isinstance(v, Sequence) or not v or not all(
            isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in v):
        raise ConfigurationError(f"{where} must be a non-empty list of positive integers, batch "
                                 f"first (e.g. [1, 3, 32, 32]); got {_got(v)}")
    return tuple(int(s) for s in v)


def radius(v: object, where: str) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise ConfigurationError(f"{where} must be a finite number >= 0 (or null for the "
                                 f"plugin's default); got {_got(v)}")
    return float(v)


def integer(v: object, where: str, minimum: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or (minimum is not None and v < minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        raise ConfigurationError(f"{where} must be an integer{bound}; got {_got(v)}")
    return int(v)


def nonneg_int(v: object, where: str) -> int:
    return integer(v, where, 0)


def number(v: object, where: str, *, positive: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (
            positive and v <= 0):
        raise ConfigurationError(f"{where} must be a finite number{' > 0' if positive else ''}; "
                                 f"got {_got(v)}")
    return float(v)


def fraction(v: object, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
        raise ConfigurationError(f"{where} must be a number in [0, 1]; got {_got(v)}")
    return float(v)


def text(v: object, where: str) -> str:
    if not isinstance(v, str):
        raise ConfigurationError(f"{where} must be a string; got {_got(v)}")
    return v


def names(v: object, where: str) -> tuple[str, ...]:
    if isinstance(v, str) or not isinstance(v, Sequence) or not all(
            isinstance(s, str) and s for s in v):
        raise ConfigurationError(f"{where} must be a list of non-empty strings; got {_got(v)}")
    return tuple(v)


def scalar_row(row: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``row`` with numpy scalars turned into Python ones; anything that is not a scalar
    (None, bool, int, float, str) is an error naming the column."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        if hasattr(v, "item") and callable(v.item) and getattr(v, "ndim", 1) == 0:
            v = v.item()  # numpy / torch scalar
        if v is not None and not isinstance(v, (bool, int, float, str)):
            raise TypeError(f"{where}: column {k!r} holds a {type(v).__name__}, not a scalar")
        out[str(k)] = v
    return out
