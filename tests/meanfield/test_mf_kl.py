"""KL estimators: known KL between Gaussians within tolerance; Gaussian floor vs k-NN."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certcompress import meanfield as mf
from certcompress.errors import ConfigurationError

# Stated tolerance: |estimate - truth| <= 5 standard errors + 0.02 nats, for n = 2000
# samples in dimension 1-3 (the per-test z-scores are ~N(0, 1) in calibration runs).
Z, ABS = 5.0, 0.02


def _gaussian_case(dim: int, seed: int, n: int = 2000) -> tuple[np.ndarray, np.ndarray, float]:
    rng = np.random.default_rng(seed)
    m = rng.uniform(-1.0, 1.0, dim)
    s = rng.uniform(0.5, 2.0, dim)
    prior = rng.uniform(0.5, 2.0, dim)  # reference N(0, diag(prior^2))
    x = m + s * rng.standard_normal((n, dim))
    r2 = (s / prior) ** 2
    truth = 0.5 * float(np.sum(r2 + (m / prior) ** 2 - 1.0 - np.log(r2)))
    return x, prior, truth


@settings(max_examples=15, deadline=None, derandomize=True)
@given(dim=st.integers(1, 3), seed=st.integers(0, 10_000))
def test_estimators_recover_known_gaussian_kl(dim, seed):
    x, prior, truth = _gaussian_case(dim, seed)
    g = mf.gaussian_kl(x, prior, covariance="full", seed=seed)
    k = mf.knn_kl(x, prior, seed=seed)
    assert abs(g.value - truth) <= Z * g.stderr + ABS, (g, truth)
    assert abs(k.value - truth) <= Z * k.stderr + ABS, (k, truth)
    # the Gaussian estimate is never above the k-NN one by more than their error
    assert g.value - k.value <= Z * math.hypot(g.stderr, k.stderr) + ABS


def test_diagonal_fit_is_a_floor_for_correlated_gaussian():
    rng = np.random.default_rng(1)
    C = np.array([[1.0, 0.8], [0.8, 1.0]])
    x = rng.standard_normal((4000, 2)) @ np.linalg.cholesky(C).T
    truth = 0.5 * (np.trace(C) - 2 - np.log(np.linalg.det(C)))  # = 0.51
    diag = mf.gaussian_kl(x, covariance="diagonal")
    full = mf.gaussian_kl(x, covariance="full")
    assert diag.value < 0.05 < truth - 0.3  # the marginals are standard: floor ~0
    assert abs(full.value - truth) <= Z * full.stderr + ABS


def test_uniform_sample_gaussian_is_floor_and_knn_is_close():
    a = 2.0  # p = U[-a, a], q = N(0, 1): KL = -log(2a) + log(2 pi)/2 + a^2/6
    truth = -math.log(2 * a) + 0.5 * math.log(2 * math.pi) + a * a / 6
    x = np.random.default_rng(2).uniform(-a, a, (3000, 1))
    g = mf.gaussian_kl(x, covariance="full")
    k = mf.knn_kl(x)
    assert g.value <= truth + Z * g.stderr
    assert truth - g.value > 0.05  # the floor is strictly below for a non-Gaussian p
    assert abs(k.value - truth) <= Z * k.stderr + ABS


def test_knn_is_near_zero_for_prior_sample_in_high_dimension():
    x = np.random.default_rng(3).standard_normal((256, 129))
    k = mf.knn_kl(x, seed=1)
    assert abs(k.value) <= Z * k.stderr + 0.5


def test_atoms_give_infinite_knn_and_bad_input_is_rejected():
    x = np.random.default_rng(4).standard_normal((50, 3))
    x[1] = x[0]
    k = mf.knn_kl(x)
    assert math.isinf(k.value) and "atoms" in k.note
    with pytest.raises(ConfigurationError, match="k must be"):
        mf.knn_kl(x, k=50)
    with pytest.raises(ConfigurationError, match="prior_std"):
        mf.gaussian_kl(x, np.ones(2))
    with pytest.raises(ConfigurationError, match="NaN"):
        mf.gaussian_kl(np.full((5, 2), np.nan))
