"""The NeuroDiff / ReluDiff reference (benchmarks/neurodiff_ref.py), the yardstick of
benchmarks/bench_single_pass.py, checked one-sidedly against deviations the shared
harness finds (tests/_soundness.py: centre, uniform points, vertices, a dense grid for
1-3 inputs, PGD per output), and shown to be not trivially loose: strictly below plain
interval arithmetic on each network where that is loose, and exactly 0 on identical
networks."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import _soundness as sh
import pytest
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from neurodiff_ref import (  # type: ignore[import-not-found]  # noqa: E402
    diff_pass,
    interval_bound,
    neurodiff,
    reludiff,
)


def _mlp(sizes: list[int], seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    mods: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        mods.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods).double().eval()


def _compress(net: nn.Sequential, kind: str, seed: int) -> nn.Sequential:
    out = copy.deepcopy(net)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            if kind == "float16":
                p.copy_(p.half().double())
            elif kind in ("noise", "heavy"):
                scale = 0.03 if kind == "noise" else 0.3
                p.add_(scale * torch.randn(p.shape, generator=g, dtype=torch.float64))
            else:  # prune the smallest half of each tensor
                k = p.numel() // 2
                thr = p.abs().flatten().kthvalue(max(k, 1)).values
                p.mul_((p.abs() > thr).double())
    return out


def _layers(net: nn.Sequential) -> list[tuple[Tensor, Tensor]]:
    return [(m.weight.detach(), m.bias.detach()) for m in net if isinstance(m, nn.Linear)]


CASES = [([1, 12, 12, 2], "noise", 0.8), ([2, 10, 10, 10, 3], "noise", 0.5),
         ([3, 16, 16, 2], "prune", 0.4), ([3, 20, 20, 20, 2], "float16", 0.6),
         ([6, 24, 24, 4], "noise", 0.3), ([8, 32, 16, 3], "prune", 0.2)]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("sizes", "kind", "radius"), CASES)
def test_reference_bounds_are_sound_and_not_trivial(sizes: list[int], kind: str,
                                                    radius: float, seed: int) -> None:
    net = _mlp(sizes, seed)
    comp = _compress(net, kind, seed + 100)
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(sizes[0], generator=g, dtype=torch.float64) - 0.5
    lo, hi = centre - radius, centre + radius
    found = sh.attack(sh.f64(net), sh.f64(comp), lo, hi, seed, per_output=True)
    a, c = _layers(net), _layers(comp)
    nd = neurodiff(a, c, lo, hi)
    rd = reludiff(a, c, lo, hi)
    ib = interval_bound(a, c, lo, hi)
    what = f"{sizes} {kind} r={radius} seed={seed}"
    for name, per in (("neurodiff pass 1", nd.first.bound), ("neurodiff pass 2",
                      nd.second.bound), ("reludiff", rd.bound)):
        sh.assert_sound(found, float(per.sum()), per.tolist(), what=f"{what} {name}")
        sh.record(f"neurodiff_ref {name}", float(per.max()), float(found.per_output.max()))
    # not trivial: strictly below interval arithmetic on the two networks, which is loose
    # here (found well below it)
    assert bool((ib > 2 * found.per_output).all()), (what, ib, found.per_output)
    assert bool((nd.bound < ib).all()), (what, nd.bound, ib)
    assert bool((rd.bound < ib).all()), (what, rd.bound, ib)


def test_identical_networks_give_zero() -> None:
    net = _mlp([4, 16, 16, 3], 5)
    a = _layers(net)
    lo, hi = -torch.ones(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    assert float(neurodiff(a, a, lo, hi).bound.abs().max()) == 0.0
    assert float(reludiff(a, a, lo, hi).bound.abs().max()) == 0.0
    assert float(interval_bound(a, a, lo, hi).min()) > 0.0


def test_intermediate_variables_are_used_and_sound() -> None:
    """A pair with many both-unstable neurons: the second pass creates variables, stays
    sound, and on this pair is tighter than the first."""
    net = _mlp([3, 24, 24, 24, 2], 7)
    comp = _compress(net, "noise", 8)
    lo, hi = -0.7 * torch.ones(3, dtype=torch.float64), 0.7 * torch.ones(3,
                                                                          dtype=torch.float64)
    a, c = _layers(net), _layers(comp)
    nd = neurodiff(a, c, lo, hi)
    assert nd.second.vars > 0 and sum(nd.first.case9) > 0
    found = sh.attack(sh.f64(net), sh.f64(comp), lo, hi, 3, per_output=True)
    sh.assert_sound(found, float(nd.second.bound.sum()), nd.second.bound.tolist(),
                    what="with variables")
    assert float(nd.second.bound.max()) < float(nd.first.bound.max())
    # no heuristic limit and a large budget: still sound
    many = diff_pass(a, c, lo, hi, neurodiff_rules=True, n_vars=200, heuristic=False)
    sh.assert_sound(found, float(many.bound.sum()), many.bound.tolist(), what="200 vars")


def test_bad_input_is_refused() -> None:
    a = _layers(_mlp([3, 5, 2], 0))
    b = _layers(_mlp([3, 6, 2], 0))
    lo, hi = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="shapes differ"):
        neurodiff(a, b, lo, hi)
    with pytest.raises(ValueError, match="input width"):
        reludiff(a, a, torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="lo <= hi"):
        reludiff(a, a, hi, lo)


def _pre_activations(layers: list[tuple[Tensor, Tensor]], x: Tensor) -> list[Tensor]:
    out = []
    for i, (w, b) in enumerate(layers):
        x = x @ w.T + b
        out.append(x)
        if i < len(layers) - 1:
            x = x.clamp(min=0)
    return out


@pytest.mark.parametrize("neurodiff_rules", [True, False])
@pytest.mark.parametrize("seed", range(9))
def test_every_layer_bound_holds_one_sidedly(neurodiff_rules: bool, seed: int) -> None:
    """Per neuron and layer, the lower and the upper bound of the original's and the
    compressed network's pre-activation and of their difference each hold against dense
    samples (a rule that is wrong in one direction shows here even where the output bound
    hides it)."""
    sizes = [2, 8, 8, 8, 2] if seed % 2 else [3, 10, 10, 2]
    net = _mlp(sizes, seed)
    comp = _compress(net, ("noise", "prune", "heavy")[seed % 3], seed + 50)
    g = torch.Generator().manual_seed(seed)
    lo = torch.rand(sizes[0], generator=g, dtype=torch.float64) - 1.0
    hi = lo + 1.0
    x = torch.cat([sh.points(lo, hi, g, 4000, 200), sh.dense_grid(lo, hi, 120 if sizes[0] == 2
                                                                  else 30)])
    a, c = _layers(net), _layers(comp)
    trace: list[dict[str, Tensor]] = []
    diff_pass(a, c, lo, hi, neurodiff_rules=neurodiff_rules, n_vars=40 if neurodiff_rules
              else 0, heuristic=False, trace=trace)
    za, ca = _pre_activations(a, x), _pre_activations(c, x)
    for k, (z, cc_, t) in enumerate(zip(za, ca, trace)):
        for name, v in (("z", z), ("c", cc_), ("d", cc_ - z)):
            low, up = t[name]
            tol = 1e-12 * (1 + v.abs().amax(0))
            assert bool((low <= v.amin(0) + tol).all()), (k, name, low, v.amin(0))
            assert bool((up >= v.amax(0) - tol).all()), (k, name, up, v.amax(0))
