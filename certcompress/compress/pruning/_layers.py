"""The prunable layers of a model and how plans name them.

A *layer* is the weight of an ``nn.Linear``, ``nn.ConvNd`` or ``nn.ConvTransposeNd``
module, named by the module's qualified name (``layer1.0.conv1``); its parameter is
``<name>.weight``. Biases are never pruned. Exclusion patterns are shell-style globs
(``fnmatch``) matched against the layer name and against the parameter name.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ...errors import ConfigurationError
from ...resolve import resolve_shape

__all__ = ["Layer", "PRUNABLE_TYPES", "prunable_layers", "excluded_names", "check_names",
           "listing", "input_shape_for"]

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.modules.conv._ConvNd)
ROOT = "(root)"


@dataclass(frozen=True)
class Layer:
    """One prunable weight: ``name`` (module path), ``param`` (its qualified parameter
    name), ``shape`` and ``numel``."""

    name: str
    param: str
    shape: tuple[int, ...]
    numel: int


def prunable_layers(model: nn.Module) -> tuple[Layer, ...]:
    """Every prunable layer, in ``model.named_modules()`` order (a weight shared by two
    modules appears once, under its first name)."""
    if not isinstance(model, nn.Module):
        raise ConfigurationError(f"pruning needs an nn.Module, got {type(model).__name__}")
    seen: set[int] = set()
    out = []
    for name, m in model.named_modules():
        w = getattr(m, "weight", None)
        if not isinstance(m, PRUNABLE_TYPES) or not isinstance(w, torch.Tensor):
            continue
        if id(w) in seen:
            continue
        seen.add(id(w))
        out.append(Layer(name or ROOT, f"{name}.weight" if name else "weight",
                         tuple(w.shape), w.numel()))
    if not out:
        raise ConfigurationError(f"{type(model).__name__} has no prunable layer (nn.Linear, "
                                 "nn.ConvNd or nn.ConvTransposeNd module with a weight)")
    return tuple(out)


def listing(names: Iterable[str], limit: int = 8) -> str:
    items = list(names)
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def excluded_names(layers: Sequence[Layer], patterns: Sequence[str],
                   field: str = "exclude") -> set[str]:
    """Names of the layers matched by ``patterns``; a pattern that matches nothing is an
    error (a typo would otherwise silently prune a layer meant to stay dense)."""
    out: set[str] = set()
    for i, pat in enumerate(patterns):
        if not isinstance(pat, str) or not pat:
            raise ConfigurationError(f"{field}[{i}] must be a non-empty string (a layer name "
                                     f"or glob pattern), got {pat!r}")
        hit = {ly.name for ly in layers if fnmatch.fnmatchcase(ly.name, pat)
               or fnmatch.fnmatchcase(ly.param, pat)}
        if not hit:
            raise ConfigurationError(
                f"{field}[{i}] = {pat!r} matches no prunable layer; layers are: "
                f"{listing(ly.name for ly in layers)}")
        out |= hit
    return out


def check_names(layers: Sequence[Layer], names: Iterable[str], field: str = "layers") -> None:
    """Raise naming the first unknown layer and listing the known ones."""
    known = {ly.name for ly in layers}
    for name in names:
        if name not in known:
            close = fnmatch.filter(known, f"*{name.split('.')[-1]}*")
            hint = f" (did you mean {listing(sorted(close), 3)}?)" if close else ""
            raise ConfigurationError(
                f"{field}[{name!r}]: no prunable layer named {name!r}{hint}; layers are: "
                f"{listing(ly.name for ly in layers)}")


def input_shape_for(model: nn.Module, input_shape: Sequence[int] | None,
                    what: str = "path-magnitude scores") -> tuple[int, ...]:
    """``input_shape`` as a tuple, or the shape an installed plugin knows for ``model``."""
    return resolve_shape(model, input_shape, purpose=what)
