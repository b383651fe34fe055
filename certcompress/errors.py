"""The typed exception hierarchy of certcompress.

Every error a user can trigger derives from :class:`CertcompressError` and from the
nearest built-in exception, so ``except ValueError`` keeps working for callers that do
not know this library. Assertions are never used for user errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class CertcompressError(Exception):
    """Base class of every error raised on purpose by certcompress."""


class ConfigurationError(CertcompressError, ValueError):
    """An argument, option, file or specification is malformed; the message names it."""


class ModelLoadError(CertcompressError, ValueError):
    """A model specification, weights file or archive could not be loaded."""


class TrainModeError(CertcompressError, ValueError):
    """The model (or one of its submodules) is in training mode; call ``model.eval()``."""


@dataclass(frozen=True)
class UnsupportedNode:
    """One graph node that no adapter accepts."""

    node: str
    op: str
    target: str
    reason: str

    def describe(self) -> str:
        return f"  - node '{self.node}' ({self.op} {self.target}): {self.reason}"


class UnsupportedModelError(CertcompressError, TypeError):
    """The model is outside the ReLU-DAG class certcompress can certify.

    ``offenders`` lists every unsupported node (not only the first), each with its op
    and the reason; the message says how to add an adapter.
    """

    def __init__(self, message: str, offenders: Sequence[UnsupportedNode] = ()) -> None:
        self.offenders: tuple[UnsupportedNode, ...] = tuple(offenders)
        lines = [message]
        lines.extend(o.describe() for o in self.offenders)
        super().__init__("\n".join(lines))


class GraphMismatchError(CertcompressError, ValueError):
    """Two models that should share an architecture (original and compressed) do not."""


class NumericalRangeError(CertcompressError, ArithmeticError):
    """A bound does not fit in a float64 (the message gives its base-10 logarithm)."""


class CertificateError(CertcompressError, ValueError):
    """A certificate file or JSON text is malformed, or does not match the models."""


class SoundnessError(CertcompressError, AssertionError):
    """A measured deviation exceeded a certified bound: a bug in certcompress.

    This is never expected; it is raised instead of returning a wrong certificate.
    """


class PluginError(CertcompressError, ImportError):
    """A plugin could not be loaded or registered; the message names the plugin."""


class VerificationError(CertcompressError, RuntimeError):
    """An exported artifact failed verification; the message names the failed check."""
