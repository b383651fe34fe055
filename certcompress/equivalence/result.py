"""The answer of an equivalence verification."""

from __future__ import annotations

import builtins
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._io import atomic_write_text

__all__ = ["EquivalenceResult", "STATUSES"]

STATUSES = ("verified", "falsified", "unknown")


def _num(v: float | None) -> float | str | None:
    if v is None:
        return None
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return float(v)


@dataclass(frozen=True)
class EquivalenceResult:
    """``status``: ``"verified"`` (the property holds on the whole domain, proven region
    by region), ``"falsified"`` (``counterexample`` is an input in the domain where it
    fails, re-checked in float64) or ``"unknown"`` (the region or time budget ran out).

    ``property`` is ``"epsilon"`` (``||f(x) - f'(x)||_norm <= epsilon``), ``"top1"``
    (``argmax f = argmax f'``) or ``"top1"`` with ``confidence`` (where ``max softmax f
    >= confidence``, ``argmax f' = argmax f``). ``bound``: for ``"epsilon"``, the largest
    certified bound over the leaf regions (the best certified worst case over the
    domain); ``found``: the largest deviation seen at any evaluated input (a lower bound
    of the true worst case). ``regions``: regions bounded; ``proven_fraction``: the
    fraction of the domain's volume proven. ``details``: search statistics."""

    status: str
    property: str
    norm: str | None
    epsilon: float | None
    confidence: float | None
    bound: float | None
    found: float | None
    regions: int
    seconds: float
    proven_fraction: float
    open_regions: int
    counterexample: tuple[float, ...] | None = None
    input_shape: tuple[int, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)

    @builtins.property
    def verified(self) -> bool:
        return self.status == "verified"

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "property": self.property, "norm": self.norm,
                "epsilon": self.epsilon, "confidence": self.confidence,
                "bound": _num(self.bound), "found": _num(self.found), "regions": self.regions,
                "seconds": self.seconds, "proven_fraction": self.proven_fraction,
                "open_regions": self.open_regions,
                "counterexample": None if self.counterexample is None
                else list(self.counterexample),
                "input_shape": list(self.input_shape), "details": self.details}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the JSON result atomically (a reader never sees half a file)."""
        return atomic_write_text(path, self.to_json() + "\n")

    def summary(self) -> str:
        what = (f"||f - f'||_{self.norm} <= {self.epsilon:g}" if self.property == "epsilon"
                else "argmax f' = argmax f" + (f" where max softmax f >= {self.confidence:g}"
                                               if self.confidence is not None else ""))
        s = (f"{self.status}: {what}; {self.regions} regions, {self.seconds:.2f} s, "
             f"{100 * self.proven_fraction:.2f}% of the domain proven")
        if self.bound is not None:
            s += f"; certified bound {self.bound:.6g}"
        if self.found is not None:
            s += f", worst found {self.found:.6g}"
        return s
