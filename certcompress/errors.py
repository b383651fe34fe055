"""The typed exception hierarchy of certcompress.

Every error a user can trigger derives from :class:`CertcompressError` and from the
nearest built-in exception, so ``except ValueError`` keeps working for callers that do
not know this library. Assertions are never used for user errors.
"""

from __future__ import annotations

import enum
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


class RefusalKind(str, enum.Enum):
    """Why a node is refused, which decides what the user can do about it."""

    #: outside the certified class (smooth activations, normalization over features,
    #: attention): no adapter can help
    OUTSIDE_CLASS = "outside-class"
    #: a piecewise-linear op no adapter handles yet: a plugin can add one
    NO_ADAPTER = "no-adapter"
    #: the input shape does not suit the model (a pooling or kernel larger than its
    #: input, or operand sizes that do not match)
    INPUT_SHAPE = "input-shape"
    #: the module does not compute what its graph says (hooks, state, overridden forward)
    MODEL = "model"
    #: traced, but the bounds tier has no lowering for the op kind: a plugin can add one
    NO_LOWERING = "no-lowering"


_ADVICE = {
    RefusalKind.OUTSIDE_CLASS: (
        "outside the certified class (smooth activations, normalization over features, "
        "attention); no adapter can change that. Use certify_statistical (any model, "
        "a statistical guarantee), or replace these with ReLU and fine-tune"),
    RefusalKind.NO_ADAPTER: (
        "no adapter yet; add one: subclass certcompress.capture.Adapter and register it in "
        "a plugin's register_adapters(registry) hook (entry-point group "
        "'certcompress.plugins'); see docs/adding-an-adapter.md"),
    RefusalKind.INPUT_SHAPE: (
        "the input shape does not suit the model (too small, or sizes its layers do not "
        "take): pass the shape the model takes, batch first (e.g. --input-shape 1 3 32 32 "
        "or input_shape=(1, 3, 32, 32))"),
    RefusalKind.MODEL: (
        "the module does not compute what its traced graph says (hooks, an overridden "
        "forward, in-place writes, state changed by forward, invalid op arguments); "
        "remove or fix them and trace again (docs/architecture.md, \"Trace check\")"),
    RefusalKind.NO_LOWERING: (
        "no bound-propagation lowering (the path-metric tier still applies); add one: a "
        "function that rewrites the op into primitive nodes, registered in a plugin's "
        "register_lowerings(registry) hook; see docs/plugins.md"),
}


@dataclass(frozen=True)
class UnsupportedNode:
    """One graph node that no adapter accepts.

    ``group`` is what the node is (a module type, a function or method name), used to
    group the refusal message; ``kind`` says what the user can do about it."""

    node: str
    op: str
    target: str
    reason: str
    kind: RefusalKind = RefusalKind.NO_ADAPTER
    group: str = ""

    def describe(self) -> str:
        return f"  - node '{self.node}' ({self.op} {self.target}): {self.reason}"

    @property
    def path(self) -> str:
        """The module path (or node name) to show as an example."""
        head = self.target.split(" (", 1)[0]
        return head if self.op == "call_module" else self.node


def group_refusals(offenders: Sequence[UnsupportedNode]) -> list[str]:
    """The message lines for ``offenders``: grouped by kind (with its advice), then by
    what the node is and why, with a count and one example path each."""
    lines: list[str] = []
    for kind in RefusalKind:
        mine = [o for o in offenders if o.kind is kind]
        if not mine:
            continue
        lines.append(f"{len(mine)} node(s): {_ADVICE[kind]}:")
        groups: dict[tuple[str, str], list[UnsupportedNode]] = {}
        for o in mine:
            groups.setdefault((o.group or o.target, o.reason), []).append(o)
        for (label, reason), members in groups.items():
            count = f" x{len(members)}" if len(members) > 1 else ""
            lines.append(f"  - {label}{count} (e.g. {members[0].path}): {reason}")
    return lines


class UnsupportedModelError(CertcompressError, TypeError):
    """The model is outside the ReLU-DAG class certcompress can certify.

    ``offenders`` lists every unsupported node (not only the first), each with its op,
    reason and :class:`RefusalKind`; the message groups them by kind and by what they
    are, with a count and one example path each, and says what to do for each kind.
    """

    def __init__(self, message: str, offenders: Sequence[UnsupportedNode] = ()) -> None:
        self.offenders: tuple[UnsupportedNode, ...] = tuple(offenders)
        lines = [message]
        lines.extend(group_refusals(self.offenders))
        super().__init__("\n".join(lines))

    @property
    def kinds(self) -> frozenset[RefusalKind]:
        """The kinds of refusal among the offenders."""
        return frozenset(o.kind for o in self.offenders)


class GraphMismatchError(CertcompressError, ValueError):
    """Two models that should share an architecture (original and compressed) do not."""


class NumericalRangeError(CertcompressError, ArithmeticError):
    """A bound does not fit in a float64 (the message gives its base-10 logarithm)."""


class CertificateError(CertcompressError, ValueError):
    """A certificate file or JSON text is malformed, or does not match the models."""


class SoundnessError(CertcompressError, AssertionError):
    """A measured deviation exceeded a certified bound.

    This is never expected; it is raised instead of returning a wrong certificate. The
    message names the two likely causes (:data:`SOUNDNESS_CAUSES`): a traced graph that
    differs from the module where the trace check's probes did not look, or an internal
    bug in certcompress.
    """


#: the cause text every :class:`SoundnessError` ends with
SOUNDNESS_CAUSES = (
    "Likely causes: (1) the traced graph differs from what the module computes at some "
    "inputs the trace check did not probe (custom forward code, hooks or state that act "
    "only on some inputs); the certificate would describe the graph, not the module. "
    "Check with cc.check_trace(model, domain=..., probes=...) and by comparing "
    "certcompress.ir.ForwardInterpreter(cc.trace(model, shape)).run(x) with model(x) "
    "at the offending input. (2) If graph and module agree there, an internal bug in "
    "certcompress: please report it with the models and the domain.")


class PluginError(CertcompressError, ImportError):
    """A plugin could not be loaded or registered; the message names the plugin."""


class VerificationError(CertcompressError, RuntimeError):
    """An exported artifact failed verification; the message names the failed check."""
