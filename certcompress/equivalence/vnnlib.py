"""Input boxes from VNN-LIB files (the verification community's property format, an
SMT-LIB subset used with ONNX models): :func:`read_vnnlib` gives a :class:`VnnlibSpec`,
whose :meth:`~VnnlibSpec.domains` are the boxes as input domains. The parser and the
supported subset are in :mod:`certcompress._vnnlib`; a single box also reads with
:meth:`certcompress.InputDomain.from_vnnlib`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from .._vnnlib import VnnlibBoxes, parse_boxes, read_boxes
from ..domain import InputDomain

__all__ = ["VnnlibSpec", "read_vnnlib", "parse_vnnlib"]


@dataclass(frozen=True)
class VnnlibSpec(VnnlibBoxes):
    """A parsed VNN-LIB file: ``boxes`` (``(lower, upper)`` per box, each ``n_inputs``
    floats) and ``output_constraints`` (the assertions on outputs, as written)."""

    def domains(self, shape: Sequence[int] | None = None) -> tuple[InputDomain, ...]:
        """The boxes as input domains of ``shape`` (default ``(1, n_inputs)``)."""
        return InputDomain.from_vnnlib_boxes(self, shape)


def parse_vnnlib(text: str, source: str = "") -> VnnlibSpec:
    """Parse VNN-LIB text (the subset of :mod:`certcompress._vnnlib`)."""
    return VnnlibSpec(**asdict(parse_boxes(text, source)))


def read_vnnlib(path: str | os.PathLike[str]) -> VnnlibSpec:
    """Read a VNN-LIB file (see :func:`parse_vnnlib`)."""
    return VnnlibSpec(**asdict(read_boxes(path)))
