"""The answer of an equivalence verification."""

from __future__ import annotations

import builtins
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._io import atomic_write_text
from ..certificate import Certificate
from ..errors import ConfigurationError

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
    fraction of the domain's volume proven. ``details``: search statistics.

    A verified epsilon result of two ``nn.Module`` models is also a certificate:
    :meth:`certificate` (not part of the JSON result)."""

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
    #: the Certificate of a verified epsilon result (or the function that builds it on
    #: first use), or why there is none
    as_certificate: Certificate | Callable[[], Certificate] | str | None = field(
        default=None, repr=False, compare=False)

    def certificate(self) -> Certificate:
        """The verified result as a :class:`~certcompress.certificate.Certificate`
        (its tier ``bab`` in ``by_method``): ``cc.export_onnx(compressed, path,
        certificate=res.certificate(), original=model)`` embeds it and ``verify_onnx``
        checks the deviation on samples and a search in the domain. Raises
        :class:`ConfigurationError` saying why when there is none (not verified, a top-1
        property, traced graphs instead of modules)."""
        if callable(self.as_certificate):  # built once, on first use
            object.__setattr__(self, "as_certificate", self.as_certificate())
        if isinstance(self.as_certificate, Certificate):
            return self.as_certificate
        why = self.as_certificate or f"the result is {self.status}, not verified"
        raise ConfigurationError(f"no certificate: {why}")

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
