"""verify_equivalence against a dense grid on pairs with one to three inputs: never
"verified" where the grid finds a violation; every counterexample violates the property
in float64 and lies in the domain; far from the threshold the verdict is decided."""

from __future__ import annotations

import torch
from _pairs import check_top1, cnn, compress, grid, mlp, outputs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import certcompress as cc
from certcompress.domain import InputDomain

pairs = st.fixed_dictionaries({
    "n_in": st.integers(1, 3), "arch": st.sampled_from(["mlp", "mlp", "cnn"]),
    "kind": st.sampled_from(["prune", "round", "float16"]), "seed": st.integers(0, 10_000),
    "half": st.sampled_from([0.25, 1.0, 2.0]),
})


def build(p: dict) -> tuple[torch.nn.Module, torch.nn.Module, InputDomain]:
    n = p["n_in"]
    net = (mlp(n, 8, 2, 3, p["seed"]) if p["arch"] == "mlp"
           else cnn(n, 3, 3, p["seed"]))
    comp = compress(net, p["kind"])
    c = torch.linspace(-0.3, 0.4, n, dtype=torch.float64)[None]
    dom = InputDomain.box(c - p["half"], c + p["half"], shape=(1, n))
    return net, comp, dom


def check_counterexample(res: cc.EquivalenceResult, net: torch.nn.Module,
                         comp: torch.nn.Module, dom: InputDomain, norm: str,
                         eps: float) -> None:
    assert res.counterexample is not None
    x = torch.tensor(res.counterexample, dtype=torch.float64).reshape(dom.shape)
    assert bool(dom.contains(x).all())
    f, g = outputs(net, comp, x)
    dev = (f - g).abs()
    value = float(dev.max() if norm == "inf" else dev.sum())
    assert value > eps, (value, eps)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(p=pairs, norm=st.sampled_from(["inf", "l1"]),
       factor=st.sampled_from([0.3, 0.8, 0.97, 1.05, 3.0]))
def test_never_verified_where_grid_violates(p: dict, norm: str, factor: float) -> None:
    net, comp, dom = build(p)
    f, g = outputs(net, comp, grid(dom, p["n_in"]))
    dev = (f - g).abs()
    worst = float((dev.amax(1) if norm == "inf" else dev.sum(1)).max())
    if worst == 0.0:
        return
    eps = worst * factor
    res = cc.verify_equivalence(net, comp, dom, epsilon=eps, norm=norm, timeout=1)
    if worst > eps:
        assert res.status != "verified", (worst, eps, res.summary())
    if res.status == "falsified":
        check_counterexample(res, net, comp, dom, norm, eps)
    else:
        assert res.bound is not None and res.bound >= worst * (1 - 1e-9) or \
            res.status == "unknown"
    # the search may find a point between grid nodes worse than the grid's worst; a
    # verified result's found deviation stays within its certified bound and epsilon
    if res.status == "verified":
        assert res.found is not None and res.bound is not None
        assert res.found <= res.bound * (1 + 1e-9) and res.found <= eps


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(p=pairs, norm=st.sampled_from(["inf", "l1"]))
def test_decided_far_from_the_threshold(p: dict, norm: str) -> None:
    net, comp, dom = build(p)
    f, g = outputs(net, comp, grid(dom, p["n_in"]))
    dev = (f - g).abs()
    worst = float((dev.amax(1) if norm == "inf" else dev.sum(1)).max())
    if worst < 1e-9:
        return
    ok = cc.verify_equivalence(net, comp, dom, epsilon=2.5 * worst, norm=norm, timeout=20)
    assert ok.status == "verified", ok.summary()
    assert ok.proven_fraction == 1.0 and ok.open_regions == 0
    assert worst <= ok.bound <= 2.5 * worst
    bad = cc.verify_equivalence(net, comp, dom, epsilon=worst / 2.5, norm=norm, timeout=20)
    assert bad.status == "falsified", bad.summary()
    check_counterexample(bad, net, comp, dom, norm, worst / 2.5)



@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(p=pairs, conf=st.sampled_from([None, 0.6, 0.9]))
def test_top1_never_verified_where_grid_disagrees(p: dict, conf: float | None) -> None:
    net, comp, dom = build(p)
    check_top1(net, comp, dom, p["n_in"], conf, timeout=1)


def test_top1_verified_when_compression_is_tiny() -> None:
    net = mlp(2, 8, 2, 3, 7)
    comp = compress(net, "float16")
    x0 = torch.tensor([[0.2, -0.1]], dtype=torch.float64)
    with torch.no_grad():
        f = net(x0)[0]
    assert float(f.topk(2).values[0] - f.topk(2).values[1]) > 0.05
    dom = InputDomain.box(x0 - 0.01, x0 + 0.01, shape=(1, 2))
    res = cc.verify_equivalence(net, comp, dom, property="top1", timeout=10)
    assert res.status == "verified", res.summary()
    conf = cc.verify_equivalence(net, comp, dom, property="top1", confidence=0.99, timeout=10)
    assert conf.status == "verified", conf.summary()
