"""Wasserstein-2 distance between particle sets: the coupling bound and the exact value.

For empirical measures mu = (1/n) sum delta_{a_i} and nu = (1/n) sum delta_{b_i}, the
identity coupling (particle i before -> particle i after) is one transport plan, so

    W2(mu, nu) <= sqrt((1/n) sum_i ||a_i - b_i||^2)            [P, a true upper bound]

and with equal weights the optimum is a permutation (Birkhoff), so the exact W2 is an
optimal assignment (scipy's linear_sum_assignment). Units: parameter units.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..errors import ConfigurationError

__all__ = ["w2_coupling_bound", "exact_w2"]


def _pair(before: np.ndarray, after: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(before, dtype=np.float64)
    b = np.asarray(after, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape or a.shape[0] < 1:
        raise ConfigurationError(f"particle sets must have the same shape (n, D), got {a.shape} and {b.shape}")
    return a, b


def w2_coupling_bound(before: np.ndarray, after: np.ndarray) -> float:
    """sqrt(mean_i ||after_i - before_i||^2): an upper bound on W2 of the two sets."""
    a, b = _pair(before, after)
    return math.sqrt(float(np.mean(np.sum((b - a) ** 2, axis=1))))


def exact_w2(before: np.ndarray, after: np.ndarray) -> float:
    """Exact W2 between two equal-size uniform particle sets (O(n^3) assignment)."""
    a, b = _pair(before, after)
    cost = np.sum((a[:, None, :] - b[None, :, :]) ** 2, axis=-1)
    rows, cols = linear_sum_assignment(cost)
    return math.sqrt(float(cost[rows, cols].mean()))
