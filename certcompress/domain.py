"""Input domains: what set of inputs a certificate speaks about."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .errors import ConfigurationError

__all__ = ["InputSpec", "normalized_radius"]


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
