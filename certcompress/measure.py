"""Measured deviations: on reference data, and the worst an adversarial search finds.

Every certified bound is reported next to these numbers (docs/path-metrics.md, section 6). All
evaluation is in float64 through ``torch.func.functional_call`` with float64 copies of
the parameters: the user's models are never converted or mutated.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from .errors import ConfigurationError
from .interop import as_module

__all__ = ["check_reference_inputs", "float64_function", "float32_function", "deviations",
           "adversarial_deviation", "AdversarialResult", "SearchOptions",
           "flatten_output"]


def flatten_output(out: object) -> Tensor:
    """A model output (tensor, or tuple/list/dict of tensors) as ``(batch, n)``."""
    if isinstance(out, Tensor):
        return out.reshape(out.shape[0], -1)
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return torch.cat([flatten_output(o) for o in out], dim=1)
    raise TypeError(f"model returned {type(out).__name__}, expected tensors")


def float64_function(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """``x -> flattened model(x)`` evaluated in float64 without touching ``model``
    (an ExportedProgram runs through its ``.module()``, one input at a time: its graph
    may be specialized to the example's batch size)."""
    if isinstance(model, torch.export.ExportedProgram):
        one = float64_function(as_module(model))
        return lambda x: torch.cat([one(x[i:i + 1]) for i in range(x.shape[0])])
    state = {k: (v.detach().double() if v.is_floating_point() else v)
             for k, v in [*model.named_parameters(), *model.named_buffers()]}

    def f(x: Tensor) -> Tensor:
        return flatten_output(functional_call(model, state, (x.double(),)))

    return f


def float32_function(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """``x -> flattened model(x)`` evaluated in float32 (as deployed), without touching
    ``model``; the output is returned in float32."""
    if isinstance(model, torch.export.ExportedProgram):
        one = float32_function(as_module(model))
        return lambda x: torch.cat([one(x[i:i + 1]) for i in range(x.shape[0])])
    state = {k: (v.detach().float() if v.is_floating_point() else v)
             for k, v in [*model.named_parameters(), *model.named_buffers()]}

    def f(x: Tensor) -> Tensor:
        return flatten_output(functional_call(model, state, (x.float(),)))

    return f


def check_reference_inputs(x: object, input_shape: Sequence[int],
                           what: str = "reference_inputs") -> Tensor:
    """``x`` as a float64 batch ``(n,) + input_shape[1:]`` (one input of shape
    ``input_shape[1:]`` gains the batch dimension). Anything else is refused, never
    reshaped: a tensor of another shape (naming the expected and the given shape), an
    empty batch, non-numbers, and NaN or infinite values (a measurement on them would
    mean nothing, and the vacuity verdict drawn from it even less)."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor):
        raise ConfigurationError(f"{what} must be a tensor (or numpy array) of inputs, got "
                                 f"{type(x).__name__}")
    per = tuple(int(s) for s in input_shape[1:])
    shape = tuple(x.shape)
    if shape == per and len(input_shape) > 1:
        x = x.unsqueeze(0)
    elif len(shape) != len(per) + 1 or shape[1:] != per or shape[0] == 0:
        expected = f"(n, {', '.join(map(str, per))})" if per else "(n,)"
        raise ConfigurationError(
            f"{what} has shape {shape}; expected {expected} for the input shape "
            f"{tuple(int(s) for s in input_shape)} (inputs are never reshaped: reshape "
            "them yourself if the layout is right)")
    if x.is_complex() or x.dtype == torch.bool:
        raise ConfigurationError(f"{what} has dtype {x.dtype}; expected real numbers")
    x = x.detach().to(torch.float64).cpu()
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        i = int(bad.reshape(x.shape[0], -1).any(dim=1).nonzero()[0, 0])
        raise ConfigurationError(f"{what} contains NaN or infinite values (first in input "
                                 f"{i}); refusing to measure on them")
    return x


def deviations(f: Callable[[Tensor], Tensor], g: Callable[[Tensor], Tensor], x: Tensor,
               batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample ``||f(x) - g(x)||_1`` and ``||f(x)||_1``."""
    devs, scales = [], []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            xb = x[i:i + batch_size].double()
            fx, gx = f(xb), g(xb)
            devs.append((fx - gx).abs().sum(dim=1))
            scales.append(fx.abs().sum(dim=1))
    return torch.cat(devs).numpy(), torch.cat(scales).numpy()


_UNSET: object = type("_Unset", (), {"__repr__": lambda self: "<unset>"})()


@dataclass(frozen=True)
class SearchOptions:
    """The adversarial (PGD) search a certificate runs inside its domain: ``steps``
    sign-gradient steps (0: no search) from ``restarts`` random starts (plus reference
    inputs when given), stopped after ``time`` seconds (None: no limit), seeded by
    ``seed``. ``certify(..., search=SearchOptions(steps=50))``; the older keywords
    ``search_steps``, ``search_restarts``, ``search_time`` and ``seed`` still work."""

    steps: int = 20
    restarts: int = 4
    time: float | None = 60.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name, least in (("steps", 0), ("restarts", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < least:
                raise ConfigurationError(f"search {name} must be an integer >= {least}, got "
                                         f"{v!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigurationError(f"search seed must be an integer, got {self.seed!r}")
        t = self.time
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float))
                              or not t >= 0):
            raise ConfigurationError(f"search time must be a number of seconds >= 0 or None "
                                     f"(no limit), got {t!r}")

    @classmethod
    def merge(cls, search: SearchOptions | None, *, steps: int | None = None,
              restarts: int | None = None, time: object = _UNSET, seed: int | None = None
              ) -> SearchOptions:
        """``search``, or the options the older keywords give (None / unset: default);
        both at once is an error."""
        old: dict[str, object] = {k: v for k, v in (("search_steps", steps), ("search_restarts", restarts),
                                 ("seed", seed)) if v is not None}
        if time is not _UNSET:
            old["search_time"] = time
        if search is not None:
            if not isinstance(search, SearchOptions):
                raise ConfigurationError(f"search must be a SearchOptions, got "
                                         f"{type(search).__name__}")
            if old:
                raise ConfigurationError(f"pass either search= or {', '.join(old)}, not both")
            return search
        base = cls()
        return cls(steps=base.steps if steps is None else steps,
                   restarts=base.restarts if restarts is None else restarts,
                   time=base.time if time is _UNSET else time,  # type: ignore[arg-type]
                   seed=base.seed if seed is None else seed)


@dataclass(frozen=True)
class AdversarialResult:
    """The largest ``||f(x) - g(x)||_1`` found by projected sign-gradient ascent over
    the box ``lower <= x <= upper``, and the input that attains it."""

    max_deviation: float
    argmax: Tensor
    steps: int
    restarts: int
    seconds: float = 0.0
    budget_exhausted: bool = False


def adversarial_deviation(f: Callable[[Tensor], Tensor], g: Callable[[Tensor], Tensor],
                          input_shape: Sequence[int], lower: float | Tensor,
                          upper: float | Tensor, *, steps: int = 20, restarts: int = 4,
                          starts: Tensor | None = None, seed: int = 0,
                          time_budget: float | None = None) -> AdversarialResult:
    """Maximize the l1 output deviation inside a box by PGD (a lower bound on the true
    maximum; a certified bound must never be below it). With ``time_budget`` (seconds)
    the search stops after the first step that exceeds it; the result records the steps
    taken, the seconds spent and whether the budget cut the search short."""
    t_start = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    shape = tuple(input_shape)
    per = shape[1:] if len(shape) > 1 else shape
    lo = torch.as_tensor(lower, dtype=torch.float64)
    hi = torch.as_tensor(upper, dtype=torch.float64)
    x0 = lo + (hi - lo) * torch.rand((restarts,) + tuple(per), generator=gen,
                                      dtype=torch.float64)
    if starts is not None and starts.numel():
        s = starts.reshape((-1,) + tuple(per)).double()
        x0 = torch.cat([torch.maximum(torch.minimum(s, hi), lo), x0])
    span = float((hi - lo).max()) if (hi - lo).numel() else 0.0
    alpha = 2.5 * span / max(steps, 1)
    x = x0.clone()
    best = torch.full((x.shape[0],), -1.0, dtype=torch.float64)
    best_x = x.clone()
    taken, exhausted = 0, False
    for step in range(steps + 1):
        x.requires_grad_(True)
        dev = (f(x) - g(x)).abs().sum(dim=1)
        with torch.no_grad():
            better = dev > best
            best = torch.where(better, dev.detach(), best)
            best_x[better] = x.detach()[better]
        if step == steps:
            break
        if time_budget is not None and time.perf_counter() - t_start > time_budget:
            exhausted = True
            break
        taken = step + 1
        (grad,) = torch.autograd.grad(dev.sum(), x)
        with torch.no_grad():
            x = x.detach() + alpha * grad.sign()
            x = torch.maximum(torch.minimum(x, hi), lo)
    i = int(best.argmax())
    return AdversarialResult(float(best[i]), best_x[i:i + 1].detach(), taken,
                             int(x0.shape[0]), time.perf_counter() - t_start, exhausted)
