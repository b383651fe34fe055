"""Underflow and overflow in the bounds tiers (soundness issue, part 2 and 4).

Chains of plain Linear/ReLU layers with tiny weights over huge boxes: back-substituted
coefficients (products of weights) underflow to zero, which a margin relative to each
value cannot cover. Every tier's bound, and every local certificate, must stay above the
exact deviation computed with :class:`fractions.Fraction`. Overflow is never an ``inf``
(nor a NaN hidden by a ``min``): it raises :class:`NumericalRangeError`. The self-checks
are relative only: a violation of ``1e-200`` is caught.
"""

from __future__ import annotations

import copy
import dataclasses
from fractions import Fraction

import pytest
import torch
from torch import nn

import certcompress as cc
from certcompress.bounds.local import certify_local
from certcompress.bounds.tiers import BoundsTier, TierBound
from certcompress.errors import NumericalRangeError, SoundnessError


def _chain(layers: int, scale: float, seed: int, width: int = 2, outputs: int = 1
           ) -> nn.Sequential:
    """Positive weights of size ``scale * [1, 2)`` and no biases: every ReLU is active on
    inputs >= 0, so each model is linear there and the deviation is largest at the box's
    upper end."""
    gen = torch.Generator().manual_seed(seed)
    mods: list[nn.Module] = []
    for i in range(layers):
        lin = nn.Linear(1 if i == 0 else width, outputs if i == layers - 1 else width,
                        bias=False, dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(scale * (1 + torch.rand(lin.weight.shape, generator=gen,
                                                     dtype=torch.float64)))
        assert bool((lin.weight > 0).all())
        mods += [lin, nn.ReLU()]
    return nn.Sequential(*mods[:-1]).eval()


def _exact(model: nn.Sequential, x: float) -> list[Fraction]:
    v = [Fraction(x)]
    for m in model:
        if isinstance(m, nn.Linear):
            w = m.weight.detach().tolist()
            v = [sum((Fraction(w[o][i]) * v[i] for i in range(len(v))), Fraction(0))
                 for o in range(len(w))]
        else:
            v = [max(t, Fraction(0)) for t in v]
    return v


def _pair(layers: int, scale: float, seed: int, outputs: int = 1
          ) -> tuple[nn.Sequential, nn.Sequential]:
    f = _chain(layers, scale, seed, outputs=outputs)
    g = copy.deepcopy(f)
    with torch.no_grad():
        g[0].weight[0, 0] = 0.0  # the compressed model drops one weight
    return f, g


def _exact_deviation(f: nn.Sequential, g: nn.Sequential, top: float) -> Fraction:
    return sum((abs(a - b) for a, b in zip(_exact(f, top), _exact(g, top))), Fraction(0))


CASES = [(layers, scale, top) for layers in (2, 5, 16) for scale in (1e-20, 1e-100, 1e-200)
         for top in (1.0, 1e300)] + [(10, 1e-35, 1e60), (3, 1e-35, 1e60), (8, 1e-50, 1e200)]


@pytest.mark.parametrize(("layers", "scale", "top"), CASES)
def test_every_tier_stays_above_the_exact_deviation(layers: int, scale: float,
                                                    top: float) -> None:
    f, g = _pair(layers, scale, seed=layers)
    exact = _exact_deviation(f, g, top)
    dom = cc.InputDomain.box(0.0, top, shape=(1, 1))
    cert = cc.certify(f, g, domain=dom, methods=("path-metric", "bounds"), search_steps=0,
                      search_time=None)
    for name, tier in (cert.by_method or {}).items():
        assert Fraction(tier.bound) >= exact, (name, tier.bound, float(exact))
        assert Fraction(tier.per_output[0]) >= exact, name
    assert Fraction(cert.bound) >= exact


@pytest.mark.parametrize(("layers", "scale", "top"),
                         [(2, 1e-200, 1e300), (10, 1e-35, 1e60), (4, 1e-100, 1e300),
                          (16, 1e-20, 1e300)])
def test_local_certificates_stay_above_the_exact_deviation(layers: int, scale: float,
                                                           top: float) -> None:
    f, g = _pair(layers, scale, seed=layers, outputs=2)
    centre = top / 2
    local = certify_local(f, g, torch.tensor([[centre]], dtype=torch.float64), centre,
                          domain_lower=0.0, domain_upper=top, progress=False)
    exact = _exact_deviation(f, g, top)  # the ball reaches the box's upper end
    assert Fraction(local.deviation_bound[0]) >= exact


def test_the_issue_figures_are_tight_not_only_sound() -> None:
    f, g = _pair(2, 1e-200, seed=2)
    exact = _exact_deviation(f, g, 1e300)
    cert = cc.certify(f, g, domain=cc.InputDomain.box(0.0, 1e300, shape=(1, 1)),
                      methods=("bounds",), search_steps=0, search_time=None)
    assert Fraction(cert.bound) >= exact
    assert cert.bound <= float(exact) * (1 + 1e-9)  # the interval pass carries it


def test_overflow_raises_instead_of_inf_or_nan() -> None:
    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double().eval()
    g = copy.deepcopy(f)
    with torch.no_grad():
        g[0].weight[0, 0] += 0.1
    wide = cc.InputDomain.box(-1e308, 1e308, shape=(1, 3))
    with pytest.raises(NumericalRangeError, match="too wide for float64"):
        cc.certify(f, g, domain=wide, methods=("bounds",), search_steps=0, search_time=None)
    with pytest.raises(NumericalRangeError, match="too wide for float64"):
        certify_local(f, g, torch.zeros(1, 3, dtype=torch.float64), 1e308, progress=False)
    big = copy.deepcopy(f)
    with torch.no_grad():
        big[2].weight.mul_(1e300)
    big_c = copy.deepcopy(big)
    with torch.no_grad():
        big_c[0].weight[0, 0] += 0.1
    with pytest.raises(NumericalRangeError, match="overflow"):
        cc.certify(big, big_c, domain=cc.InputDomain.box(-1e10, 1e10, shape=(1, 3)),
                   methods=("bounds",), search_steps=0, search_time=None)
    cert = cc.certify(f, g, input_shape=(1, 3), input_radius=1e300, search_steps=0,
                      search_time=None)
    assert cert.bound < float("inf")


def test_the_self_check_catches_a_violation_of_1e_200(monkeypatch: pytest.MonkeyPatch
                                                      ) -> None:
    f, g = _pair(2, 1e-250, seed=3)  # outputs and deviation of about 1e-200 at the top
    dom = cc.InputDomain.box(0.0, 1e300, shape=(1, 1))
    real = BoundsTier._bound

    def understated(self: BoundsTier, *args: object) -> TierBound:
        t = real(self, *args)  # type: ignore[arg-type]
        exact = float(_exact_deviation(f, g, 1e300))
        assert 1e-201 < exact < 1e-199
        return dataclasses.replace(t, bound=0.0, per_output=(0.0,))

    monkeypatch.setattr(BoundsTier, "_bound", understated)
    top = torch.tensor([[1e300]], dtype=torch.float64)
    with pytest.raises(SoundnessError, match="exceeds the certified bound"):
        cc.certify(f, g, domain=dom, methods=("bounds",), reference_inputs=top,
                   search_steps=0, search_time=None)


def test_the_statistical_tier_refuses_an_overflowing_deviation() -> None:
    f = nn.Sequential(nn.Linear(2, 2, dtype=torch.float64)).eval()
    g = copy.deepcopy(f)
    with torch.no_grad():
        f[0].weight.fill_(1e308)
        g[0].weight.fill_(-1e308)
    x = torch.full((50, 2), 1e10, dtype=torch.float64)
    with pytest.raises(NumericalRangeError, match="not finite"):
        cc.certify_statistical(f, g, x, delta=0.05)
