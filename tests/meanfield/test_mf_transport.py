"""The W2 coupling bound is >= the exact W2 (optimal assignment) on small particle sets."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from certcompress import meanfield as mf
from certcompress.errors import ConfigurationError

_floats = st.floats(-10, 10, allow_nan=False, allow_infinity=False)


@st.composite
def _pairs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    n = draw(st.integers(1, 7))
    D = draw(st.integers(1, 4))
    a = draw(arrays(np.float64, (n, D), elements=_floats))
    b = draw(arrays(np.float64, (n, D), elements=_floats))
    return a, b


@settings(max_examples=200, deadline=None, derandomize=True)
@given(_pairs())
def test_coupling_bound_dominates_exact_w2(pair):
    a, b = pair
    bound = mf.w2_coupling_bound(a, b)
    exact = mf.exact_w2(a, b)
    assert bound >= exact - 1e-9 * (1.0 + exact)


def test_exact_w2_finds_a_better_coupling_than_identity():
    a = np.array([[0.0], [1.0]])
    b = np.array([[1.0], [0.0]])  # the same set, relabelled
    assert mf.exact_w2(a, b) == pytest.approx(0.0, abs=1e-12)
    assert mf.w2_coupling_bound(a, b) == pytest.approx(1.0)


def test_translation_makes_the_bound_exact():
    a = np.random.default_rng(0).standard_normal((6, 3))
    shift = np.array([0.5, -1.0, 2.0])
    assert mf.w2_coupling_bound(a, a + shift) == pytest.approx(np.linalg.norm(shift))
    assert mf.exact_w2(a, a + shift) == pytest.approx(np.linalg.norm(shift))


def test_shape_mismatch_is_rejected():
    with pytest.raises(ConfigurationError, match="same shape"):
        mf.w2_coupling_bound(np.zeros((3, 2)), np.zeros((4, 2)))
