"""The certified input domain from what the caller gave: one resolver for every entry
point (``certify``, the pruning and quantization tools, scale's task builders, the CLI).

``resolve_domain(model, input_shape, radius, domain)`` returns an
:class:`~certcompress.domain.InputDomain`: ``domain`` itself when given (its shape is
the input shape), else the ball ``||x||_inf <= radius`` over ``input_shape``, where a
missing shape or radius comes from the input spec of an installed plugin that knows the
model (:meth:`certcompress.capture.Plugin.input_spec`). The errors say which argument is
missing and what to pass.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

from torch import nn

from .capture.plugins import plugin_manager
from .domain import InputDomain, InputSpec, declared_input_shape
from .errors import ConfigurationError
from .ir.graph import Graph

__all__ = ["input_spec_for", "resolve_shape", "resolve_radius", "resolve_domain"]


def input_spec_for(model: object) -> InputSpec | None:
    """The input spec an installed plugin gives for ``model`` (None if none knows it)."""
    if isinstance(model, nn.Module):
        return plugin_manager().input_spec(model)
    return None


def _size(value: object) -> int:
    """An integer size (an int, a numpy or torch integer; not a bool or a float)."""
    if isinstance(value, bool):
        raise TypeError(f"a bool is not a size: {value!r}")
    return operator.index(value)  # type: ignore[arg-type]


def _name(model: object, label: str | None) -> str:
    return label if label is not None else type(model).__name__


def resolve_shape(model: object, input_shape: Sequence[int] | None = None, *,
                  purpose: str = "", label: str | None = None) -> tuple[int, ...]:
    """``input_shape`` as a tuple of positive ints; without one, a traced graph's shape, the
    shape a loaded file declares (:func:`~certcompress.domain.declared_input_shape`) or
    the shape an installed plugin knows for ``model``. ``purpose`` and ``label`` word the
    error ("input_shape is required for <purpose> of <label>")."""
    if input_shape is not None:
        try:
            shape = tuple(_size(s) for s in input_shape)
        except (TypeError, ValueError):
            raise ConfigurationError(f"input_shape must be positive integers (batch first), "
                                     f"got {input_shape!r}") from None
        if not shape or any(s <= 0 for s in shape):
            raise ConfigurationError(f"input_shape must be positive integers (batch first), "
                                     f"got {input_shape!r}")
        return shape
    if isinstance(model, Graph):
        return tuple(model.input_shape)
    declared = declared_input_shape(model)  # e.g. an ONNX file's graph input
    if declared is not None:
        return declared
    spec = input_spec_for(model)
    if spec is None:
        what = f"{purpose} of " if purpose else ""
        raise ConfigurationError(
            f"input_shape is required for {what}{_name(model, label)} (no installed plugin "
            "knows its input); pass e.g. input_shape=(1, 3, 32, 32)")
    return tuple(spec.input_shape)


def check_radius(radius: object, name: str = "input_radius") -> float:
    """``radius`` as a finite float >= 0 (a bool or a non-number is refused)."""
    try:
        if isinstance(radius, bool):
            raise TypeError
        r = float(radius)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigurationError(f"{name} must be a finite number >= 0, got {radius!r}") \
            from None
    if not math.isfinite(r) or r < 0:
        raise ConfigurationError(f"{name} must be a finite number >= 0, got {radius!r}")
    return r


def resolve_radius(model: object, radius: float | None = None, *, label: str | None = None,
                   domain_hint: bool = True) -> tuple[float, InputSpec | None]:
    """``radius`` checked, or the radius of the plugin input spec for ``model``; with the
    spec it came from (None when given). ``domain_hint``: the error also suggests
    ``domain=`` (for callers that take one)."""
    if radius is not None:
        return check_radius(radius), None
    spec = input_spec_for(model)
    if spec is None:
        raise ConfigurationError(
            "input_radius is required: the certificate covers inputs with ||x||_inf <= "
            "input_radius (after normalization); no installed plugin knows a default for "
            f"{_name(model, label)}" + ("; or pass domain=InputDomain.box(lower, upper, "
                                        "shape=...)" if domain_hint else ""))
    return check_radius(spec.radius), spec


def resolve_domain(model: object, input_shape: Sequence[int] | None = None,
                   radius: float | None = None, domain: InputDomain | None = None, *,
                   label: str | None = None) -> InputDomain:
    """The certified input domain: ``domain`` (checked against ``input_shape`` when both
    are given; not with ``radius``), else the ball ``||x||_inf <= radius`` over
    ``input_shape`` (its description says ``ball ||x||_inf <= r``, followed by the plugin
    spec's description in parentheses when the radius came from one)."""
    if domain is not None:
        if not isinstance(domain, InputDomain):
            raise ConfigurationError(f"domain must be an InputDomain (e.g. "
                                     f"InputDomain.box(0.0, 1.0, shape=...)), got "
                                     f"{type(domain).__name__}")
        if radius is not None:
            raise ConfigurationError("pass either domain or input_radius, not both")
        if input_shape is not None and resolve_shape(model, input_shape) != domain.shape:
            raise ConfigurationError(f"input_shape {tuple(input_shape)} differs from the "
                                     f"domain's shape {domain.shape}")
        return domain
    shape = resolve_shape(model, input_shape, label=label)
    r, spec = resolve_radius(model, radius, label=label)
    text = f"ball ||x||_inf <= {r:.6g}" + ("" if spec is None else f" ({spec.description})")
    return InputDomain.box(-r, r, shape=shape, description=text)
