"""Type aliases shared by the mean-field modules (no runtime behaviour)."""

from __future__ import annotations

from typing import Literal

ScalingName = Literal["mean-field", "sqrt", "none"]
"""Residual multiplier c_L: ``alpha/L``, ``alpha/sqrt(L)`` or ``1``."""

InitName = Literal["mean-field", "standard", "paired"]
"""Particle initialisation: O(1) particles, PyTorch-like (``V ~ 1/sqrt(M)``), or O(1)
particles in sign-flipped pairs (zero initial output)."""

ActivationName = Literal["tanh", "sigmoid", "gelu", "silu", "relu"]

Regime = Literal["mean-field", "lazy", "SDE", "unstable", "large-scale"]
"""``large-scale``: alpha_eff, beta_eff or the init ratio is large (the classic lazy
knobs) but laziness was not measured, or was measured and the particles moved."""

GramMethod = Literal["structured", "jacobian"]

CovarianceMode = Literal["auto", "full", "diagonal"]
