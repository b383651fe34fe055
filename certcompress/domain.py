"""Input domains: what set of inputs a certificate speaks about."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ._shapes import broadcast_shapes
from ._vnnlib import VnnlibBoxes, read_boxes
from .errors import ConfigurationError

__all__ = ["InputSpec", "InputDomain", "normalized_radius"]


def normalized_radius(mean: Sequence[float], std: Sequence[float], low: float = 0.0,
                      high: float = 1.0) -> float:
    """Largest ``|x|`` after ``x = (p - mean)/std`` for raw values ``p`` in ``[low, high]``.

    For ImageNet's mean and std and pixels in [0, 1] this is ``(1 - 0.406)/0.225 = 2.64``.
    """
    if len(mean) != len(std) or not mean:
        raise ConfigurationError("mean and std must be non-empty and of equal length")
    if any(s <= 0 for s in std):
        raise ConfigurationError(f"std must be positive, got {list(std)}")
    return max(max(abs(low - m), abs(high - m)) / s for m, s in zip(mean, std))


#: the attribute under which a model loader records the input shape its file declares
#: (:func:`certcompress.load_onnx`: the graph input, batch 1 where it is dynamic)
DECLARED_SHAPE_ATTR = "input_shape"


def declared_input_shape(model: object) -> tuple[int, ...] | None:
    """The input shape a loader recorded on ``model`` (a ``torch.fx.GraphModule`` built
    from a file that declares it, e.g. by ``load_onnx``), or None."""
    if not isinstance(model, torch.fx.GraphModule):
        return None
    shape = getattr(model, DECLARED_SHAPE_ATTR, None)
    if not isinstance(shape, tuple) or not shape or \
            not all(isinstance(s, int) and s > 0 for s in shape):
        return None
    return shape

@dataclass(frozen=True)
class InputSpec:
    """What a model expects as input, as a plugin knows it.

    ``input_shape`` includes the batch dimension; ``radius`` bounds ``||x||_inf`` of the
    input as the network receives it (after normalization); ``description`` says where
    the radius comes from.
    """

    input_shape: tuple[int, ...]
    radius: float
    description: str


def _floats(name: str, value: object) -> torch.Tensor:
    try:
        t = torch.as_tensor(value, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ConfigurationError(f"{name} must be a number or an array of numbers: {exc}") \
            from None
    if not bool(torch.isfinite(t).all()):
        raise ConfigurationError(f"{name} must be finite (no NaN or infinity)")
    return t


def _compact(t: torch.Tensor) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """Values and shape, a single value when all are equal (compact JSON)."""
    flat = t.reshape(-1)
    if flat.numel() > 0 and bool((flat == flat[0]).all()):
        return (float(flat[0]),), ()
    return tuple(float(v) for v in flat.tolist()), tuple(int(s) for s in t.shape)


@dataclass(frozen=True)
class InputDomain:
    """A box of inputs ``lower <= x <= upper`` (elementwise, as the network receives
    them, i.e. after any normalization), for inputs of shape ``shape`` (batch included,
    as ``input_shape`` elsewhere). ``lower``/``upper`` hold the values of a tensor of
    shape ``bounds_shape`` that broadcasts to ``shape`` (``()``: one value for every
    feature; ``(1, C, 1, 1)``: one per channel; ``shape``: one per feature).

    Build with :meth:`box`, :meth:`from_data` or :meth:`from_normalization`. Every
    certificate states the domain it covers (:meth:`describe`, :meth:`to_dict`).
    """

    lower: tuple[float, ...]
    upper: tuple[float, ...]
    bounds_shape: tuple[int, ...]
    shape: tuple[int, ...]
    description: str = ""

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.shape)
        if not shape or any(s < 1 for s in shape):
            raise ConfigurationError(f"shape must be a non-empty tuple of positive sizes "
                                     f"(batch included, e.g. (1, 1, 8, 8)), got {self.shape}")
        n = 1
        for s in self.bounds_shape:
            n *= int(s)
        if len(self.lower) != n or len(self.upper) != n:
            raise ConfigurationError(f"lower and upper need {n} values for bounds_shape "
                                     f"{self.bounds_shape}, got {len(self.lower)} and "
                                     f"{len(self.upper)}")
        lo, hi = self.lower_tensor(), self.upper_tensor()  # checks broadcasting
        if not bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()):
            raise ConfigurationError("domain bounds must be finite")
        if bool((lo > hi).any()):
            i = int((lo - hi).reshape(-1).argmax())
            raise ConfigurationError(f"domain lower bound exceeds upper bound at feature {i}: "
                                     f"{float(lo.reshape(-1)[i])!r} > "
                                     f"{float(hi.reshape(-1)[i])!r}")
        object.__setattr__(self, "shape", shape)

    # ------------------------------------------------------------- constructors
    @classmethod
    def box(cls, lower: float | Sequence[float] | torch.Tensor | np.ndarray = 0.0,
            upper: float | Sequence[float] | torch.Tensor | np.ndarray = 1.0, *,
            shape: Sequence[int], description: str = "") -> InputDomain:
        """The box ``lower <= x <= upper``; each bound a scalar or an array that broadcasts
        to ``shape`` (batch included)."""
        lo, hi = _floats("lower", lower), _floats("upper", upper)
        shape_t = tuple(int(s) for s in shape)
        try:
            full = broadcast_shapes(lo.shape, hi.shape, shape_t)
        except ValueError:
            raise ConfigurationError(f"bounds of shapes {tuple(lo.shape)} and "
                                     f"{tuple(hi.shape)} do not broadcast to shape "
                                     f"{shape_t}") from None
        if full != shape_t:
            raise ConfigurationError(f"bounds of shapes {tuple(lo.shape)} and "
                                     f"{tuple(hi.shape)} are larger than shape {shape_t}")
        common = broadcast_shapes(lo.shape, hi.shape)
        lv, ls = _compact(lo.expand(common))
        uv, us = _compact(hi.expand(common))
        if ls != us:  # one is constant, the other is not: store both at the common shape
            lv, uv = (tuple(float(v) for v in t.expand(common).reshape(-1).tolist())
                      for t in (lo, hi))
            ls = tuple(int(s) for s in common)
        desc = description or (f"box [{lv[0]:.6g}, {uv[0]:.6g}] for every feature"
                               if not ls else f"box with per-feature bounds (shape {ls})")
        return cls(lv, uv, ls, shape_t, desc)

    @classmethod
    def from_vnnlib(cls, path: str | os.PathLike[str], shape: Sequence[int] | None = None
                    ) -> InputDomain:
        """The input box of the VNN-LIB file ``path`` (its ``X_i`` bounds, in order), of
        ``shape`` (batch first; default ``(1, n_inputs)``; any shape with ``n_inputs``
        features, e.g. ``(1, 1, 1, 5)`` for a model that takes that). Output assertions
        are ignored. A file whose inputs form several boxes (a disjunction) is refused:
        :func:`certcompress.read_vnnlib` gives them all."""
        spec = read_boxes(path)
        if len(spec.boxes) != 1:
            raise ConfigurationError(
                f"{spec.source}: its input constraints form {len(spec.boxes)} boxes (a "
                "disjunction); InputDomain.from_vnnlib reads one. Use "
                "certcompress.read_vnnlib(path).domains(shape) and verify each box")
        return cls.from_vnnlib_boxes(spec, shape)[0]

    @classmethod
    def from_vnnlib_boxes(cls, spec: VnnlibBoxes, shape: Sequence[int] | None = None
                          ) -> tuple[InputDomain, ...]:
        """Every box of a parsed VNN-LIB file as an input domain of ``shape`` (default
        ``(1, n_inputs)``)."""
        sh = tuple(int(s) for s in shape) if shape is not None else (1, spec.n_inputs)
        n = math.prod(sh[1:])
        if n != spec.n_inputs:
            raise ConfigurationError(f"{spec.source or 'the VNN-LIB spec'} declares "
                                     f"{spec.n_inputs} inputs, the model's input shape {sh} "
                                     f"has {n} features")
        where = f" of {spec.source}" if spec.source else ""
        return tuple(cls.box(torch.tensor(lo, dtype=torch.float64).reshape(sh),
                             torch.tensor(hi, dtype=torch.float64).reshape(sh), shape=sh,
                             description=f"VNN-LIB box {k + 1}/{len(spec.boxes)}{where}")
                     for k, (lo, hi) in enumerate(spec.boxes))

    @classmethod
    def from_data(cls, x: torch.Tensor | np.ndarray, *, per_feature: bool = True,
                  margin: float = 0.0, shape: Sequence[int] | None = None) -> InputDomain:
        """The smallest box holding the samples ``x`` (``(n, *features)``), per feature
        (or one range for all with ``per_feature=False``), widened by ``margin`` times
        the range. A data box speaks about inputs like these samples: it is only as
        good as the samples' coverage."""
        t = _floats("x", x)
        if t.dim() < 1 or t.shape[0] == 0:
            raise ConfigurationError("from_data needs a non-empty batch of samples "
                                     "(n, *features)")
        if margin < 0 or not math.isfinite(margin):
            raise ConfigurationError(f"margin must be finite and >= 0, got {margin!r}")
        if per_feature:
            lo, hi = t.amin(0, keepdim=True), t.amax(0, keepdim=True)
        else:
            lo, hi = t.min().reshape(()), t.max().reshape(())
        pad = margin * (hi - lo)
        sh = tuple(shape) if shape is not None else (1,) + tuple(t.shape[1:])
        return cls.box(lo - pad, hi + pad, shape=sh,
                       description=f"box from the min/max of {t.shape[0]} samples"
                                   + (" per feature" if per_feature else "")
                                   + (f", widened by {margin:g} x range" if margin else ""))

    @classmethod
    def from_normalization(cls, raw_lower: float, raw_upper: float, mean: Sequence[float],
                           std: Sequence[float], shape: Sequence[int]) -> InputDomain:
        """Raw values in ``[raw_lower, raw_upper]`` normalized per channel (dimension 1
        of ``shape``) as ``(p - mean[c]) / std[c]``."""
        if len(mean) != len(std) or not mean:
            raise ConfigurationError("mean and std must be non-empty and of equal length")
        if any(not (s > 0) for s in std):
            raise ConfigurationError(f"std must be positive, got {list(std)}")
        shape_t = tuple(int(s) for s in shape)
        if len(mean) > 1 and (len(shape_t) < 2 or shape_t[1] != len(mean)):
            raise ConfigurationError(f"{len(mean)} channel means need shape[1] == "
                                     f"{len(mean)}, got shape {shape_t}")
        m = torch.tensor(mean, dtype=torch.float64)
        s = torch.tensor(std, dtype=torch.float64)
        if len(mean) > 1:
            bshape = (1, len(mean)) + (1,) * (len(shape_t) - 2)
            m, s = m.reshape(bshape), s.reshape(bshape)
        else:
            m, s = m.reshape(()), s.reshape(())
        lo, hi = (float(raw_lower) - m) / s, (float(raw_upper) - m) / s
        return cls.box(lo, hi, shape=shape_t,
                       description=f"raw values in [{raw_lower:g}, {raw_upper:g}] normalized "
                                   f"with mean {list(mean)} and std {list(std)}")

    # ---------------------------------------------------------------- queries
    def _tensor(self, values: tuple[float, ...]) -> torch.Tensor:
        t = torch.tensor(values, dtype=torch.float64).reshape(self.bounds_shape)
        try:
            return t.expand(self.shape).clone()
        except RuntimeError:
            raise ConfigurationError(f"bounds_shape {self.bounds_shape} does not broadcast "
                                     f"to shape {self.shape}") from None

    def lower_tensor(self) -> torch.Tensor:
        """The lower bounds as a float64 tensor of ``shape``."""
        return self._tensor(self.lower)

    def upper_tensor(self) -> torch.Tensor:
        """The upper bounds as a float64 tensor of ``shape``."""
        return self._tensor(self.upper)

    @property
    def radius(self) -> float:
        """``max ||x||_inf`` over the domain."""
        return max(max(abs(v) for v in self.lower), max(abs(v) for v in self.upper))

    def contains(self, x: torch.Tensor) -> torch.Tensor:
        """Which samples of ``x`` (``(n, *features)``) lie in the box."""
        lo, hi = self.lower_tensor()[0], self.upper_tensor()[0]
        xd = x.to(torch.float64).reshape((-1,) + tuple(lo.shape))
        return ((xd >= lo) & (xd <= hi)).reshape(xd.shape[0], -1).all(1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` uniform samples ``(n, *shape[1:])``."""
        lo, hi = self.lower_tensor()[0], self.upper_tensor()[0]
        u = torch.rand((n,) + tuple(lo.shape), generator=generator, dtype=torch.float64)
        return lo + (hi - lo) * u

    def describe(self) -> str:
        lo, hi = min(self.lower), max(self.upper)
        return (f"{self.description or 'box'}; x in [{lo:.6g}, {hi:.6g}], "
                f"||x||_inf <= {self.radius:.6g}, input shape {self.shape}")

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        return {"lower": list(self.lower), "upper": list(self.upper),
                "bounds_shape": list(self.bounds_shape), "shape": list(self.shape),
                "description": self.description}

    @classmethod
    def from_dict(cls, data: Any) -> InputDomain:
        if not isinstance(data, dict):
            raise ConfigurationError("an input domain must be a JSON object")
        need = {"lower", "upper", "bounds_shape", "shape"}
        missing = sorted(need - set(data))
        if missing:
            raise ConfigurationError(f"input domain is missing field(s): {', '.join(missing)}")
        unknown = sorted(set(data) - need - {"description"})
        if unknown:
            raise ConfigurationError(f"input domain has unknown field(s): {', '.join(unknown)}")
        try:
            return cls(tuple(float(v) for v in data["lower"]),
                       tuple(float(v) for v in data["upper"]),
                       tuple(int(s) for s in data["bounds_shape"]),
                       tuple(int(s) for s in data["shape"]), str(data.get("description", "")))
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"input domain is malformed: {exc}") from None
