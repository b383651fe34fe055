"""The equivalence verifier's own single pass is underflow-safe too: weights of 1e-200
over inputs up to 1e300 (back-substituted products underflow to 0) never give
"verified" below the exact deviation."""

from __future__ import annotations

import copy
from fractions import Fraction

import pytest
import torch
from torch import nn

import certcompress as cc


def _pair() -> tuple[nn.Sequential, nn.Sequential, Fraction]:
    f = nn.Sequential(nn.Linear(1, 3, bias=False, dtype=torch.float64), nn.ReLU(),
                      nn.Linear(3, 2, bias=False, dtype=torch.float64)).eval()
    with torch.no_grad():
        f[0].weight.fill_(1e-200)
        f[2].weight.fill_(2e-200)
    g = copy.deepcopy(f)
    with torch.no_grad():
        g[0].weight[0, 0] = 0.0
    # at x = 1e300 each output drops by 2e-200 * 1e-200 * 1e300 (linear on x >= 0)
    per_output = Fraction(2e-200) * Fraction(1e-200) * Fraction(1e300)
    return f, g, per_output


@pytest.mark.parametrize("intermediate", ["crown", "forward"])
def test_never_verified_below_the_exact_deviation(intermediate: str) -> None:
    f, g, exact = _pair()
    dom = cc.InputDomain.box(0.0, 1e300, shape=(1, 1))
    below = float(exact) / 2
    res = cc.verify_equivalence(f, g, domain=dom, epsilon=below, timeout=10,
                                intermediate=intermediate)
    assert res.status != "verified"
    if res.bound is not None:
        assert Fraction(res.bound) >= exact
    above = float(exact) * 2
    ok = cc.verify_equivalence(f, g, domain=dom, epsilon=above, timeout=10,
                               intermediate=intermediate)
    assert ok.status in ("verified", "unknown")
    if ok.bound is not None:
        assert Fraction(ok.bound) >= exact
