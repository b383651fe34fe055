"""Type aliases shared by the mean-field modules (no runtime behaviour)."""

from __future__ import annotations

from typing import Literal

ScalingName = Literal["mean-field", "sqrt", "none"]
"""Residual multiplier c_L: ``alpha/L``, ``alpha/sqrt(L)`` or ``1``."""

InitName = Literal["mean-field", "standard"]
"""Particle initialisation: O(1) particles, or PyTorch-like (``V ~ 1/sqrt(M)``)."""

ActivationName = Literal["tanh", "sigmoid", "gelu", "silu", "relu"]

Regime = Literal["mean-field", "lazy", "SDE", "unstable"]

GramMethod = Literal["structured", "jacobian"]

CovarianceMode = Literal["auto", "full", "diagonal"]
