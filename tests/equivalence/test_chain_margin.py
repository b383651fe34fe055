"""The chain pass's rounding margin (``eta`` times the magnitudes, which are 0 at ReLUs
dead in both networks: docs/equivalence.md, "Rounding") is large enough: on deep MLPs
with cancelling pre-activations and many dead neurons against their float16 cast, the
bound over a point box ``lo == hi`` (and a tiny box around it) is at least the exact
deviation at the point, computed with :class:`fractions.Fraction`. Over a point box every
relaxation is (nearly) exact, so the bound sits within rounding of the exact value: with
the margin removed (``eta = 0``) the same cases go below it
(:func:`test_the_cases_fail_without_the_margin`)."""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import pytest
import torch
from _pairs import cancelling_mlp, exact_layers
from torch import nn

import certcompress as cc
from certcompress.bounds.propagation.lowering import lower_pair
from certcompress.equivalence.chain import ChainPair, ChainState, chain_from_pair
from certcompress.errors import SoundnessError

N_IN, WIDTH, N_OUT = 3, 10, 2
SEEDS = (0, 1, 2, 3)
DEPTHS = (6, 8)
# (intermediate, relaxation, slope-optimization steps): every back-substitution path
CONFIGS = (("both", "choose", 0), ("crown", "default", 0), ("crown", "ramp", 0),
           ("crown", "min2", 3), ("forward", "choose", 0))


def _x0(seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1000 + seed)
    return torch.rand((1, N_IN), generator=gen, dtype=torch.float64) * 2 - 1


def _net(seed: int, depth: int) -> nn.Sequential:
    """``depth`` hidden ReLU layers; weights of both signs (large cancelling sums), biases
    mostly negative (many dead neurons), and at every layer a third of the neurons with
    the bias that cancels their pre-activation at the point :func:`_x0` to within rounding
    (the exact value there is a tiny number of either sign)."""
    def bias(pre: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        b = torch.randn(WIDTH, generator=gen, dtype=torch.float64) - 1.0
        return torch.where(torch.arange(WIDTH) % 3 == 0, -pre, b)

    return cancelling_mlp(torch.Generator().manual_seed(seed), _x0(seed), WIDTH, depth, N_OUT,
                          lambda i: 1.5, bias)


def _half(net: nn.Sequential) -> nn.Sequential:
    """The float16 cast of every weight and bias (held in float64)."""
    out = nn.Sequential(*[m.__class__(m.in_features, m.out_features, dtype=torch.float64)
                          if isinstance(m, nn.Linear) else nn.ReLU() for m in net]).eval()
    with torch.no_grad():
        for a, b in zip(net, out):
            if isinstance(a, nn.Linear):
                assert isinstance(b, nn.Linear)
                b.weight.copy_(a.weight.half().double())
                b.bias.copy_(a.bias.half().double())
    return out


def _exact(net: nn.Sequential, x: torch.Tensor) -> list[Fraction]:
    """``net(x)`` in exact rational arithmetic (float64 values are rationals)."""
    return exact_layers(net, x)[-1]


def _case(seed: int, depth: int) -> tuple[ChainPair, torch.Tensor, list[list[Fraction]],
                                         list[list[Fraction]]]:
    net = _net(seed, depth)
    comp = _half(net)
    pair = lower_pair(cc.trace(net, (1, N_IN)), cc.trace(comp, (1, N_IN)))
    chain = chain_from_pair(pair)
    assert chain is not None
    gen = torch.Generator().manual_seed(2000 + seed)
    x0 = _x0(seed)
    # the cancelling point, points near it, and points elsewhere
    near = x0 + torch.randn((2, N_IN), generator=gen, dtype=torch.float64) * 1e-7
    far = torch.rand((2, N_IN), generator=gen, dtype=torch.float64) * 2 - 1
    xs = torch.cat([x0, near, far])
    fz = [_exact(net, x) for x in xs]
    fc = [_exact(comp, x) for x in xs]
    return chain, xs, fz, fc


def _rows() -> tuple[torch.Tensor, torch.Tensor]:
    """Output rows ``<cz, f> + <cd, f - f'>``: each output of the difference and of ``f``,
    both signs, and a mixed row."""
    eye = torch.eye(N_OUT, dtype=torch.float64)
    zero = torch.zeros_like(eye)
    mixed = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    cz = torch.cat([zero, zero, eye, -eye, mixed])
    cd = torch.cat([eye, -eye, zero, zero, -mixed * 3])
    return cz, cd


def _violations(chain: ChainPair, xs: torch.Tensor, fz: list[list[Fraction]],
                fc: list[list[Fraction]], width: float) -> list[str]:
    """Rows whose bound is below the exact value at the point, over every configuration
    (boxes ``xs +- width``, each containing its point)."""
    cz, cd = _rows()
    r = cz.shape[0]
    P = xs.shape[0]
    out = []
    for intermediate, relaxation, steps in CONFIGS:
        state = ChainState(chain, xs - width, xs + width, intermediate=intermediate,
                           quantities=("z", "d"), relaxation=relaxation)
        prob = torch.arange(P).repeat_interleave(r)
        ub, _ = state.upper_bounds(cz.repeat(P, 1), cd.repeat(P, 1), prob, optimize=steps)
        for i, u in enumerate(ub.tolist()):
            p, q = divmod(i, r)
            z, c = fz[p], fc[p]
            exact = sum((Fraction(float(cz[q, o])) * z[o]
                         + Fraction(float(cd[q, o])) * (z[o] - c[o]) for o in range(N_OUT)),
                        Fraction(0))
            if Fraction(u) < exact:
                out.append(f"{intermediate}/{relaxation}/{steps} point {p} row {q}: "
                           f"{u!r} < {float(exact)!r}")
    return out


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("width", [0.0, 1e-9])
def test_bounds_stay_above_the_exact_deviation_at_the_point(seed: int, depth: int,
                                                            width: float) -> None:
    chain, xs, fz, fc = _case(seed, depth)
    assert _violations(chain, xs, fz, fc, width) == []


def test_the_cases_have_dead_neurons_and_large_magnitudes() -> None:
    """What the cases exercise: neurons dead in both networks (magnitude 0 there), the
    masked magnitude far above the values (rounding matters), and some neuron unstable at
    a point box (a pre-activation within rounding of 0)."""
    chain, xs, _, _ = _case(0, 8)
    state = ChainState(chain, xs, xs, intermediate="crown", quantities=("z", "d"))
    dead = torch.stack(list(state.dead.values()))
    assert 0.2 < float(dead.double().mean()) < 0.9
    unstable = [bool(r.unstable_z.any()) for r in state.relax.values()]
    assert any(unstable)
    mz, _ = state.mags[len(chain.layers) - 1]
    z, _ = chain.forward(xs)
    assert float(mz.max()) > 100 * float(z.abs().max())
    for k, d in state.dead.items():  # the magnitude after a dead ReLU is 0, only there
        b = state.bounds[k - 1]
        assert bool(torch.equal(d, (b.zu <= 0) & (b.cu <= 0)))
        for m, m0 in zip(state.mags[k], state.mags[k - 1]):
            assert bool((m[d] == 0).all()) and bool(torch.equal(m[~d], m0[~d]))


def test_the_cases_fail_without_the_margin() -> None:
    """The test's power: with ``eta = 0`` (no relative rounding margin) some case's bound
    goes below the exact value (or its intervals become inconsistent)."""
    failed = 0
    for seed in SEEDS:
        for depth in DEPTHS:
            chain, xs, fz, fc = _case(seed, depth)
            bare = dataclasses.replace(chain, eta=0.0)
            try:
                bad = _violations(bare, xs, fz, fc, 0.0)
            except SoundnessError:
                bad = ["inconsistent"]
            failed += bool(bad)
    assert failed >= 1
