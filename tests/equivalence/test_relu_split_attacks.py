"""Hostile soundness checks of ReLU splitting (``verify_equivalence(split="relu")``,
certcompress/equivalence/relu_split.py, docs/equivalence.md "ReLU splitting"): epsilon
at and around the dense grid's worst deviation, sign-flipped weights, tiny / subnormal /
huge weights, zero-width input dimensions, equal networks, and the split-constraint
multipliers driven far from 0 (every ``beta >= 0`` must give a valid bound). One-sided:
never "verified" where the grid (tests/_soundness.py) finds a violation; every
counterexample lies in the box and violates in float64."""

from __future__ import annotations

import copy

import _soundness as sh
import pytest
import torch
from _pairs import (
    assert_bounds_hold,
    check_eps,
    check_top1,
    compress,
    deviation,
    grid,
    layer_values,
    mlp,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import certcompress as cc
from certcompress.bounds.propagation.lowering import lower_pair
from certcompress.capture import trace
from certcompress.domain import InputDomain
from certcompress.equivalence import relu_split
from certcompress.equivalence.chain import ChainState, chain_from_pair
from certcompress.equivalence.properties import EpsilonProperty
from certcompress.equivalence.relu_split import Split, _clamp, beta_bounds


def _flip(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A copy with one hidden weight's sign flipped (a wrong compression)."""
    out = copy.deepcopy(net)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = out[0].weight
        i = int(torch.randint(w.numel(), (1,), generator=gen))
        w.view(-1)[i] = -w.view(-1)[i]
    return out


def _pair(kind: str, n_in: int, seed: int, depth: int = 2
          ) -> tuple[torch.nn.Module, torch.nn.Module]:
    net = mlp(n_in, 8, depth, 3, seed)
    return net, (_flip(net, seed) if kind == "flip" else compress(net, kind))


def _check(net: torch.nn.Module, comp: torch.nn.Module, dom: InputDomain, n_in: int,
           eps: float, norm: str, **kw: object) -> cc.EquivalenceResult:
    return check_eps(net, comp, dom, n_in, eps, norm, split="relu", **kw)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["prune", "round", "float16", "flip"]), n_in=st.integers(1, 3),
       seed=st.integers(0, 10_000), norm=st.sampled_from(["inf", "l1"]),
       factor=st.sampled_from([0.95, 0.999, 0.999999, 1.0]),
       half=st.sampled_from([0.1, 1.0, 3.0]))
def test_epsilon_at_the_grid_worst(kind: str, n_in: int, seed: int, norm: str,
                                   factor: float, half: float) -> None:
    net, comp = _pair(kind, n_in, seed)
    dom = InputDomain.box(-half, half, shape=(1, n_in))
    worst = float(deviation(net, comp, grid(dom, n_in), norm).max())
    if worst == 0.0:
        return
    _check(net, comp, dom, n_in, worst * factor, norm, timeout=1)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["prune", "float16", "flip"]), seed=st.integers(0, 10_000))
def test_top1_with_sign_flips(kind: str, seed: int) -> None:
    net, comp = _pair(kind, 2, seed)
    dom = InputDomain.box(-1.0, 1.0, shape=(1, 2))
    check_top1(net, comp, dom, 2, timeout=1, split="relu")


def _scaled(net: torch.nn.Module, layer: int, s: float) -> torch.nn.Module:
    out = copy.deepcopy(net)
    with torch.no_grad():
        out[layer].weight.mul_(s)
        out[layer].bias.mul_(s)
    return out


def test_tiny_subnormal_and_huge_weights() -> None:
    """Weights scaled by 1e-200, 1e-310 (subnormal products) and 1e150 in one layer:
    epsilon at 0.999 and 1.0 of the grid's worst deviation is never verified."""
    for s in (1e-200, 1e-310, 1e150):
        for layer in (0, 4):
            net = _scaled(mlp(2, 8, 2, 3, 7), layer, s)
            for kind in ("flip", "float16"):
                comp = _flip(net, 3) if kind == "flip" else compress(net, kind)
                dom = InputDomain.box(-1.0, 1.0, shape=(1, 2))
                worst = float(deviation(net, comp, grid(dom, 2), "inf").max())
                if not (0.0 < worst < float("inf")):
                    continue
                for factor in (0.999, 1.0, 4.0):
                    if worst * factor == 0.0:
                        continue
                    _check(net, comp, dom, 2, worst * factor, "inf", timeout=0.5)


def test_zero_width_dimensions_and_equal_networks() -> None:
    net = mlp(3, 8, 2, 3, 11)
    lo = torch.tensor([[-1.0, 0.25, -0.5]], dtype=torch.float64)
    hi = torch.tensor([[1.0, 0.25, -0.5]], dtype=torch.float64)
    dom = InputDomain.box(lo, hi, shape=(1, 3))
    for kind in ("flip", "prune"):
        comp = _flip(net, 1) if kind == "flip" else compress(net, kind)
        x = torch.cat([torch.linspace(-1, 1, 4001, dtype=torch.float64)[:, None],
                       torch.full((4001, 1), 0.25, dtype=torch.float64),
                       torch.full((4001, 1), -0.5, dtype=torch.float64)], 1)
        worst = float(deviation(net, comp, x, "inf").max())
        if worst == 0.0:
            continue
        for factor in (0.999, 1.0, 2.0):
            res = cc.verify_equivalence(net, comp, dom, epsilon=worst * factor, norm="inf",
                                        split="relu", timeout=1)
            if factor <= 1.0:
                assert res.status != "verified", res.summary()
            if res.status == "falsified":
                xc = torch.tensor(res.counterexample, dtype=torch.float64).reshape(1, 3)
                assert bool(dom.contains(xc).all())
                assert float(deviation(net, comp, xc, "inf")) > worst * factor
    # equal networks: nothing may be falsified, and a tiny epsilon is provable
    same = compress(net, "same")
    for eps in (1e-300, 1e-12):
        res = cc.verify_equivalence(net, same, InputDomain.box(-1.0, 1.0, shape=(1, 3)),
                                    epsilon=eps, norm="l1", split="relu", timeout=1)
        assert res.status != "falsified", res.summary()


def _state(net: torch.nn.Module, comp: torch.nn.Module, lo: torch.Tensor, hi: torch.Tensor,
           prior: list | None = None) -> ChainState:
    shape = (1, lo.shape[1])
    chain = chain_from_pair(lower_pair(trace(net, shape), trace(comp, shape)))
    assert chain is not None
    return ChainState(chain, lo, hi, intermediate="crown", quantities=("z", "d"),
                      prior=prior, empty_ok=True, mixed_chords=True)


def test_large_multipliers_and_nested_splits_hold_on_the_subdomain() -> None:
    """beta_bounds with a huge learning rate (multipliers far from 0: every beta >= 0
    must give a valid bound) and two nested split constraints, z and c, on a
    sign-flipped pair: the bound covers the rows on sampled inputs of the sub-domain;
    an infeasible child has no sampled input; each layer's bounds hold there."""
    checked = 0
    for seed in (0, 1, 2):
        net = mlp(2, 8, 2, 3, seed)
        comp = _flip(net, seed)
        lo = torch.tensor([[-1.0, -1.0]], dtype=torch.float64)
        hi = -lo
        root = _state(net, comp, lo, hi)
        _, cd, r = EpsilonProperty(3, 1.0, "inf").rows(torch.zeros(1, 3))
        prob = torch.zeros(r, dtype=torch.long)
        x = sh.dense_grid(lo[0], hi[0], 201).reshape(-1, 2)
        zs, cs = (list(t) for t in zip(*layer_values(root.chain, x)))
        f, g = root.chain.forward(x)
        rows = (f - g) @ cd.T
        pre = [None if t is None else t[0] for t in root.pre_bounds()]
        cands = []
        for j, layer in enumerate(root.chain.layers):
            if layer.kind != "relu" or j == 0:
                continue
            t = pre[j - 1]
            assert t is not None
            for q, (a, b) in (("z", (0, 1)), ("c", (2, 3))):
                cands += [(j - 1, i, q) for i in
                          ((t[a] < 0) & (t[b] > 0)).nonzero()[:2, 0].tolist()]
        for (a1, i1, q1), (a2, i2, q2) in zip(cands, cands[1:]):
            for s1 in (1, -1):
                for s2 in (1, -1):
                    child = _clamp(_clamp(pre, a1, i1, q1, s1), a2, i2, q2, s2)
                    st_c = _state(net, comp, lo, hi,
                                  [None if u is None else u[None] for u in child])
                    v1 = (zs if q1 == "z" else cs)[a1][:, i1] * s1
                    v2 = (zs if q2 == "z" else cs)[a2][:, i2] * s2
                    inside = (v1 >= 0) & (v2 >= 0)
                    if bool(st_c.infeasible[0]):
                        assert not bool(inside.any()), (a1, i1, a2, i2)
                        continue
                    if not bool(inside.any()):
                        continue
                    sp = [((a1, i1, q1, s1), (a2, i2, q2, s2))]
                    want = rows[inside].amax(0)
                    for lr in (0.5, 50.0, 1e4):
                        for steps in (1, 3, 12):
                            beta = beta_bounds(st_c, None, cd, prob, sp, steps, lr=lr)
                            assert sh.within(want, beta), (lr, steps, want, beta)
                    assert_bounds_hold(root.chain, st_c.bounds, zs, cs, inside)
                    checked += 1
    assert checked > 0


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["prune", "round", "float16", "flip"]), n_in=st.integers(1, 3),
       seed=st.integers(0, 10_000), norm=st.sampled_from(["inf", "l1"]),
       factor=st.sampled_from([0.99, 1.0, 1.05, 2.0]))
def test_relu_splits_only_until_stable(kind: str, n_in: int, seed: int, norm: str,
                                       factor: float) -> None:
    """With the input-bisection gain set to 0 the search splits ReLUs while any neuron
    can switch (input bisection only once every neuron is stable): the paths through
    clamped, infeasible and multiplier-bounded children are taken on every pair."""
    net, comp = _pair(kind, n_in, seed, depth=3)
    dom = InputDomain.box(-1.5, 1.5, shape=(1, n_in))
    worst = float(deviation(net, comp, grid(dom, n_in), norm).max())
    if worst == 0.0:
        return
    saved = relu_split.INPUT_GAIN
    relu_split.INPUT_GAIN = 0.0
    try:
        res = _check(net, comp, dom, n_in, worst * factor, norm, timeout=1.5)
    finally:
        relu_split.INPUT_GAIN = saved
    STATS.append((res.status, res.details.get("relu_splits", 0),
                  res.details.get("infeasible_domains", 0)))
    assert res.details["split"] == "relu"


STATS: list[tuple[str, int, int]] = []


@pytest.mark.parametrize("kind,seed", [("flip", 3), ("float16", 7), ("prune", 8)])
def test_infeasible_children_have_no_grid_point(kind: str, seed: int,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Every child the search declares infeasible (proven vacuously) has no dense-grid
    point that satisfies all of its sign constraints strictly (beyond 1e-9): it is
    never a non-empty sub-domain declared empty through rounding."""
    net, comp = _pair(kind, 2, seed, depth=3)
    dom = InputDomain.box(-1.5, 1.5, shape=(1, 2))
    seen: list[tuple[Split, ...]] = []
    orig = relu_split._ReluSearch._pass

    def spy(self, lo, hi, pres, parents=None, splits=None):  # type: ignore[no-untyped-def]
        out = orig(self, lo, hi, pres, parents, splits)
        if splits is not None:
            seen.extend(s for s, bad in zip(splits, out[3].tolist()) if bad)
        return out

    monkeypatch.setattr(relu_split._ReluSearch, "_pass", spy)
    monkeypatch.setattr(relu_split, "INPUT_GAIN", 0.0)
    worst = float(deviation(net, comp, grid(dom, 2), "inf").max())
    _check(net, comp, dom, 2, worst * 1.01, "inf", timeout=float("inf"),
           max_regions=1500)  # a region budget, not a time: the same run at any load
    assert seen, "no infeasible child: the attack did not reach the path"
    x = sh.dense_grid(*sh.box(dom, dom.shape), 301).reshape(-1, 2)
    pre: dict[tuple[int, str], torch.Tensor] = {}
    lo, hi = sh.box(dom, dom.shape)
    chain = _state(net, comp, lo.reshape(1, -1), hi.reshape(1, -1)).chain
    for a, (z, c) in enumerate(layer_values(chain, x)):
        pre[(a, "z")], pre[(a, "c")] = z, c
    for sp in seen:
        ok = torch.ones(x.shape[0], dtype=torch.bool)
        for layer, neuron, q, sign in sp:
            ok &= pre[(layer, q)][:, neuron] * sign > 1e-9
        assert not bool(ok.any()), (sp, x[ok][:3])
    # the chain's layers are the Sequential's (the indices the splits name)
    assert [la.kind for la in chain.layers] == ["affine", "relu"] * 3 + ["affine"]


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["prune", "float16", "flip"]), seed=st.integers(0, 10_000),
       conf=st.sampled_from([0.51, 0.7, 0.9]))
def test_confident_top1_never_verified_where_grid_disagrees(kind: str, seed: int,
                                                            conf: float) -> None:
    net, comp = _pair(kind, 2, seed)
    dom = InputDomain.box(-2.0, 2.0, shape=(1, 2))
    check_top1(net, comp, dom, 2, conf, timeout=1, split="relu")


def _needle(n: int = 16, gap: float = 2.0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A pair that differs only where ``sum x > n - gap`` on ``[0, 1]^n`` (a corner of
    volume about ``gap^n / n!``: no random point lands there, and the deviation's
    gradient is 0 everywhere else, so plain sign-gradient steps never move): hidden
    neuron 0 is ``relu(sum x - (n - gap))``, the compressed copy prunes its outgoing
    weights (deviation up to ``gap`` on output 0)."""
    gen = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(n, 6), torch.nn.ReLU(),
                              torch.nn.Linear(6, 3)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.5)
        net[0].weight[0] = 1.0
        net[0].bias[0] = -(n - gap)
        net[2].weight[:, 0] = torch.tensor([1.0, -0.5, 0.25], dtype=torch.float64)
    comp = copy.deepcopy(net)
    with torch.no_grad():
        comp[2].weight[:, 0] = 0.0
    return net.eval(), comp.eval()


def _needle_run(**kw: object) -> cc.EquivalenceResult:
    net, comp = _needle()
    dom = InputDomain.box(0.0, 1.0, shape=(1, 16))
    res = cc.verify_equivalence(net, comp, dom, epsilon=1.0, norm="inf",
                                timeout=float("inf"), max_regions=300, **kw)
    assert res.status != "verified", res.summary()  # the deviation reaches 2.0 > 1.0
    if res.status == "falsified":
        assert res.counterexample is not None
        x = torch.tensor(res.counterexample, dtype=torch.float64).reshape(1, 16)
        assert bool(dom.contains(x).all())
        assert float(deviation(net, comp, x, "inf")) > 1.0
    return res


def test_aimed_attack_finds_a_needle_in_a_relu_child(monkeypatch: pytest.MonkeyPatch
                                                     ) -> None:
    """The sub-domain attack of ReLU splitting (relu_split._ReluSearch._aimed_attack):
    the bound's corner finds the needle in the root; with corner starts off, the root's
    attack misses it and the child ``z_0 >= 0``'s hinge penalty on its sign constraint
    leads its sign-gradient steps there; with neither, the search (region budget 300)
    stays unknown, as input splitting does."""
    res = _needle_run(split="relu")
    assert res.status == "falsified" and res.regions == 1, res.summary()
    assert _needle_run(split="input").status == "unknown"
    monkeypatch.setattr(relu_split, "CORNER_STARTS", False)
    res = _needle_run(split="relu")
    assert res.status == "falsified", res.summary()
    assert res.details["relu_splits"] >= 1 and res.regions > 1, res.details
    monkeypatch.setattr(relu_split, "PENALTY", 0.0)
    res = _needle_run(split="relu")
    assert res.status == "unknown", res.summary()


def test_fresh_starts_are_deterministic_and_differ_between_siblings() -> None:
    """path_seed: the same sub-domain gives the same seed (in any process: CRC-32, not
    Python's salted hash), sibling sub-domains sharing one box and boxes that differ
    in one bit do not; a whole ReLU-split search repeats itself to the counterexample."""
    lo = torch.zeros(4, dtype=torch.float64)
    hi = torch.ones(4, dtype=torch.float64)
    a: tuple[Split, ...] = ((0, 3, "z", 1),)
    b: tuple[Split, ...] = ((0, 3, "z", -1),)
    assert relu_split.path_seed(0, a, lo, hi) == relu_split.path_seed(0, a, lo.clone(),
                                                                      hi.clone())
    seeds = {relu_split.path_seed(0, a, lo, hi), relu_split.path_seed(0, b, lo, hi),
             relu_split.path_seed(1, a, lo, hi), relu_split.path_seed(0, (), lo, hi),
             relu_split.path_seed(0, a, lo, torch.nextafter(hi, hi + 1)),
             relu_split.path_seed(0, ((0, 3, "c", 1),), lo, hi)}
    assert len(seeds) == 6
    net = mlp(3, 8, 3, 3, 5)
    comp = _flip(net, 5)
    dom = InputDomain.box(-1.5, 1.5, shape=(1, 3))
    worst = float(deviation(net, comp, grid(dom, 3), "inf").max())
    runs = [cc.verify_equivalence(net, comp, dom, epsilon=worst * 0.9, norm="inf",
                                  split="relu", timeout=float("inf"), max_regions=400)
            for _ in range(2)]
    assert runs[0].status == "falsified", runs[0].summary()
    assert runs[0].counterexample == runs[1].counterexample
    assert runs[0].regions == runs[1].regions and runs[0].found == runs[1].found
