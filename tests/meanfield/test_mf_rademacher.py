"""Rademacher terms: closed form matches beta*C*sqrt(2r/n) for small r; MC is tighter."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certcompress import meanfield as mf


@settings(max_examples=40, deadline=None, derandomize=True)
@given(r=st.floats(1e-6, 1e-2), n=st.integers(100, 10_000), beta=st.floats(0.1, 5),
       sigma=st.floats(0.2, 3))
def test_closed_form_matches_meir_zhang_for_small_radius(r, n, beta, sigma):
    value = mf.rademacher_closed_form(r, n, beta, sigma)
    first_order = beta * sigma * math.sqrt(2 * r / n)
    assert first_order <= value * (1 + 1e-6)
    assert value <= first_order * 1.01


def test_closed_form_is_monotone_and_handles_edges():
    vals = [mf.rademacher_closed_form(r, 500, 1.0) for r in (0.1, 1.0, 10.0, 100.0)]
    assert all(a < b for a, b in zip(vals, vals[1:], strict=False))
    assert mf.rademacher_closed_form(0.0, 500, 1.0) == 0.0
    assert math.isinf(mf.rademacher_closed_form(math.inf, 500, 1.0))


@pytest.mark.parametrize("radius", [0.05, 1.0, 20.0])
def test_monte_carlo_is_below_closed_form(radius):
    Z = np.random.default_rng(0).standard_normal((300, 8))
    mc, se = mf.rademacher_monte_carlo(Z, radius, beta=1.0, sigma_a=1.0, sigma_w=0.35,
                                       activation="tanh", seed=1)
    cf = mf.rademacher_closed_form(radius, 300, 1.0, 1.0)
    assert 0 < mc <= cf + 3 * se
    assert se < 0.2 * mc
