"""The activations a ScaledResNet may use, with the facts the theory needs about them.

An explicit registry (no ``globals()`` scanning): each entry gives the function, its
derivative, whether it is smooth (C^2) and whether it is bounded by 1 in absolute
value. The theory of Chen et al. 2024 assumes a smooth bounded activation; ``relu`` is
accepted for experiments but every theory-derived number is then "out of scope".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigurationError

__all__ = ["ActivationSpec", "get_activation", "ACTIVATIONS"]


@dataclass(frozen=True)
class ActivationSpec:
    """An activation s and what the theory needs to know about it."""

    name: str
    fn: Callable[[Tensor], Tensor]
    derivative: Callable[[Tensor], Tensor]
    smooth: bool
    bounded_by_one: bool


def _tanh_d(x: Tensor) -> Tensor:
    t = torch.tanh(x)
    return 1.0 - t * t


def _sigmoid_d(x: Tensor) -> Tensor:
    s = torch.sigmoid(x)
    return s * (1.0 - s)


def _gelu_d(x: Tensor) -> Tensor:
    cdf = 0.5 * (1.0 + torch.erf(x / 2.0**0.5))
    pdf = torch.exp(-0.5 * x * x) / (2.0 * torch.pi) ** 0.5
    return cdf + x * pdf


def _silu_d(x: Tensor) -> Tensor:
    s = torch.sigmoid(x)
    return s * (1.0 + x * (1.0 - s))


def _relu_d(x: Tensor) -> Tensor:
    return (x > 0).to(x.dtype)


ACTIVATIONS: dict[str, ActivationSpec] = {
    "tanh": ActivationSpec("tanh", torch.tanh, _tanh_d, smooth=True, bounded_by_one=True),
    "sigmoid": ActivationSpec("sigmoid", torch.sigmoid, _sigmoid_d, smooth=True,
                              bounded_by_one=True),
    "gelu": ActivationSpec("gelu", torch.nn.functional.gelu, _gelu_d, smooth=True,
                           bounded_by_one=False),
    "silu": ActivationSpec("silu", torch.nn.functional.silu, _silu_d, smooth=True,
                           bounded_by_one=False),
    "relu": ActivationSpec("relu", torch.relu, _relu_d, smooth=False, bounded_by_one=False),
}


def get_activation(name: str) -> ActivationSpec:
    """Return the registered activation ``name`` or raise ConfigurationError listing them."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ConfigurationError(
            f"unknown activation '{name}'; available: {', '.join(sorted(ACTIVATIONS))}"
        ) from None
