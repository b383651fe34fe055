"""ReLU splitting (``verify_equivalence(split="relu")``, certcompress/equivalence/
relu_split.py) against dense grids on pairs with one to three inputs: never "verified"
where the grid finds a violation; counterexamples violate the property in float64 and
lie in the domain; far from the threshold the verdict is decided; the split-constraint
multipliers and clamped sub-domain bounds hold on sampled inputs of the sub-domain."""

from __future__ import annotations

import json
from pathlib import Path

import _soundness as sh
import pytest
import torch
from _pairs import assert_bounds_hold, build, check_top1, compress, grid, layer_values, mlp, outputs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import certcompress as cc
from certcompress import cli
from certcompress.bounds.propagation.lowering import lower_pair
from certcompress.capture import trace
from certcompress.domain import InputDomain
from certcompress.equivalence.chain import ChainState, chain_from_pair
from certcompress.equivalence.properties import EpsilonProperty
from certcompress.equivalence.relu_split import _clamp, beta_bounds
from certcompress.errors import ConfigurationError
from certcompress.loading import load_module

pairs = st.fixed_dictionaries({
    "n_in": st.integers(1, 3), "arch": st.sampled_from(["mlp", "mlp", "cnn"]),
    "kind": st.sampled_from(["prune", "round", "float16"]), "seed": st.integers(0, 10_000),
    "half": st.sampled_from([0.25, 1.0, 2.0]), "depth": st.sampled_from([2, 3]),
})


def _worst(net: torch.nn.Module, comp: torch.nn.Module, dom: InputDomain, n: int,
           norm: str) -> float:
    f, g = outputs(net, comp, grid(dom, n))
    dev = (f - g).abs()
    return float((dev.amax(1) if norm == "inf" else dev.sum(1)).max())


def _check_cex(res: cc.EquivalenceResult, net: torch.nn.Module, comp: torch.nn.Module,
               dom: InputDomain, norm: str, eps: float) -> None:
    assert res.counterexample is not None
    x = torch.tensor(res.counterexample, dtype=torch.float64).reshape(dom.shape)
    assert bool(dom.contains(x).all())
    f, g = outputs(net, comp, x)
    dev = (f - g).abs()
    assert float(dev.max() if norm == "inf" else dev.sum()) > eps


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(p=pairs, norm=st.sampled_from(["inf", "l1"]),
       factor=st.sampled_from([0.3, 0.9, 0.99, 1.02, 1.1, 3.0]))
def test_relu_split_never_verified_where_grid_violates(p: dict, norm: str,
                                                       factor: float) -> None:
    net, comp, dom = build(p)
    worst = _worst(net, comp, dom, p["n_in"], norm)
    if worst == 0.0:
        return
    eps = worst * factor
    res = cc.verify_equivalence(net, comp, dom, epsilon=eps, norm=norm, timeout=1,
                                split="relu")
    assert res.details["split"] == "relu"
    if worst > eps:
        assert res.status != "verified", (worst, eps, res.summary())
    if res.status == "falsified":
        _check_cex(res, net, comp, dom, norm, eps)
    elif res.status == "verified":
        # one-sided: the certified bound covers the grid's worst deviation
        assert res.bound is not None and sh.within(worst, res.bound)
        assert res.found is not None and res.found <= res.bound * (1 + 1e-9)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(p=pairs)
def test_relu_split_top1_never_verified_where_grid_disagrees(p: dict) -> None:
    net, comp, dom = build(p)
    check_top1(net, comp, dom, p["n_in"], timeout=1, split="relu")


@pytest.mark.parametrize("seed,kind,half,norm", [
    (5, "float16", 1.0, "inf"), (0, "prune", 2.0, "inf"), (1, "round", 2.0, "l1"),
    (2, "prune", 1.0, "l1")])
def test_relu_split_decided_far_from_the_threshold(seed: int, kind: str, half: float,
                                                   norm: str) -> None:
    """Completeness on small cases: ReLU splits (beside input bisection where no neuron
    pays more) decide a grid-worst deviation below eps/2 and above 2 eps. ReLU
    splitting is slower than input splitting on such low-dimensional pairs (the auto
    mode keeps input splitting there): the float16 case takes about 11k regions."""
    p = {"n_in": 2, "arch": "mlp", "kind": kind, "seed": seed, "half": half, "depth": 2}
    net, comp, dom = build(p)
    worst = _worst(net, comp, dom, p["n_in"], norm)
    if worst < 1e-9:
        return
    ok = cc.verify_equivalence(net, comp, dom, epsilon=2 * worst, norm=norm, timeout=60,
                               split="relu")
    assert ok.status == "verified", ok.summary()
    assert ok.proven_fraction == 1.0 and ok.open_regions == 0
    assert ok.bound is not None and sh.within(worst, ok.bound) and ok.bound <= 2 * worst
    bad = cc.verify_equivalence(net, comp, dom, epsilon=worst / 2, norm=norm, timeout=60,
                                split="relu")
    assert bad.status == "falsified", bad.summary()
    _check_cex(bad, net, comp, dom, norm, worst / 2)


def _chain_state(net: torch.nn.Module, comp: torch.nn.Module, lo: torch.Tensor,
                 hi: torch.Tensor, prior: list | None = None) -> ChainState:
    shape = (1, lo.shape[1])
    chain = chain_from_pair(lower_pair(trace(net, shape), trace(comp, shape)))
    assert chain is not None
    return ChainState(chain, lo, hi, intermediate="crown", quantities=("z", "d"),
                      prior=prior, empty_ok=True, mixed_chords=True)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_clamped_bounds_and_multipliers_hold_on_the_subdomain(seed: int) -> None:
    """Every ReLU-split child's bounds (clamped, recomputed, with the multipliers of its
    constraints) hold at the sampled inputs that satisfy the child's constraints; an
    infeasible child has no such input."""
    net = mlp(3, 8, 3, 3, seed)
    comp = compress(net, "prune")
    lo = torch.tensor([[-1.0, -0.5, -0.8]], dtype=torch.float64)
    hi = -lo
    root = _chain_state(net, comp, lo, hi)
    prop = EpsilonProperty(3, 1.0, "inf")
    _, cd, r = prop.rows(torch.zeros(1, 3))
    prob = torch.zeros(r, dtype=torch.long)
    x = sh.points(lo[0], hi[0], torch.Generator().manual_seed(seed), n_uniform=4000)
    x = torch.cat([x.reshape(-1, 3), sh.dense_grid(lo[0], hi[0], 21).reshape(-1, 3)])
    # pre-activations of the original and compressed networks at x (layer outputs)
    zs, cs = (list(t) for t in zip(*layer_values(root.chain, x)))
    f, g = root.chain.forward(x)
    rows = (f - g) @ cd.T  # (N, r)
    pre = [None if t is None else t[0] for t in root.pre_bounds()]
    relus = [j for j, layer in enumerate(root.chain.layers) if layer.kind == "relu" and j > 0]
    checked = 0
    for j in relus:
        a = j - 1
        t = pre[a]
        assert t is not None
        for q, (lo_i, hi_i) in (("z", (0, 1)), ("c", (2, 3))):
            cand = ((t[lo_i] < 0) & (t[hi_i] > 0)).nonzero()[:2, 0].tolist()
            for i in cand:
                for sign in (1, -1):
                    child = _clamp(pre, a, i, q, sign)
                    st_c = _chain_state(net, comp, lo, hi,
                                        [None if u is None else u[None] for u in child])
                    v = (zs if q == "z" else cs)[a][:, i]
                    inside = v * sign >= 0
                    if bool(st_c.infeasible[0]):
                        assert not bool(inside.any()), (a, i, q, sign)
                        continue
                    ub, _ = st_c.upper_bounds(None, cd, prob)
                    beta = beta_bounds(st_c, None, cd, prob, [((a, i, q, sign),)], 12)
                    best = torch.minimum(ub, beta)
                    if bool(inside.any()):
                        assert sh.within(rows[inside].amax(0), best), \
                            (rows[inside].amax(0), best)
                        # every layer's clamped bounds hold on the sub-domain's inputs
                        assert_bounds_hold(root.chain, st_c.bounds, zs, cs, inside)
                        checked += 1
    assert checked > 0


def test_relu_split_options_and_refusals() -> None:
    net = mlp(2, 8, 2, 3, 5)
    comp = compress(net, "float16")
    dom = InputDomain.box(-0.5, 0.5, shape=(1, 2))
    with pytest.raises(ConfigurationError, match="split must be one of"):
        cc.verify_equivalence(net, comp, dom, epsilon=0.1, split="neurons")
    res = cc.verify_equivalence(net, comp, dom, epsilon=0.1, split="auto")
    assert res.details["split"] == "input"  # 2 inputs: below the auto threshold
    res = cc.verify_equivalence(net, comp, dom, epsilon=0.1, split="relu",
                                executor="local", workers=2)
    assert res.details["split"] == "relu" and res.details["executor"] == "serial"
    assert any("ran serially" in n for n in res.details["notes"])


def test_relu_split_verifies_where_input_splitting_runs_out() -> None:
    """A 64-input MLP against its 30%-pruned copy, top-1 over a box of +-0.07 around a
    point: input splitting does not finish within 400 regions (nor 3,000: 3.5% proven),
    ReLU splitting verifies within them (27 regions when measured; a region budget:
    deterministic)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(),
                              torch.nn.Linear(32, 32), torch.nn.ReLU(),
                              torch.nn.Linear(32, 4)).double().eval()
    comp = compress(net, "prune")
    x0 = torch.rand((1, 64), generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64)
    dom = InputDomain.box(x0 - RADIUS, x0 + RADIUS, shape=(1, 64))
    inp = cc.verify_equivalence(net, comp, dom, property="top1", max_regions=400,
                                timeout=600, split="input")
    rel = cc.verify_equivalence(net, comp, dom, property="top1", max_regions=400,
                                timeout=600, split="relu")
    assert inp.status == "unknown", inp.summary()
    assert rel.status == "verified", rel.summary()
    assert rel.details["relu_splits"] > 0
    # the default ("auto") is ReLU splitting here (64 inputs, serial); with an executor
    # or strong branching it bisects the input box (options of input splitting only)
    auto = cc.verify_equivalence(net, comp, dom, property="top1", max_regions=400,
                                 timeout=600)
    assert auto.details["split"] == "relu"
    assert (auto.status, auto.regions) == (rel.status, rel.regions)
    for kw in ({"executor": "local", "workers": 2}, {"split_candidates": 2}):
        res = cc.verify_equivalence(net, comp, dom, property="top1", max_regions=2,
                                    timeout=600, **kw)  # type: ignore[arg-type]
        assert res.details["split"] == "input", kw


RADIUS = 0.07


def test_cli_split_flag_matches_the_api(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 12), torch.nn.ReLU(), torch.nn.Linear(12, 12),
                              torch.nn.ReLU(), torch.nn.Linear(12, 2)).eval()
    half = compress(net, "float16").float().eval()
    paths = []
    for m, name in ((net, "A.onnx"), (half, "B.onnx")):
        torch.onnx.export(m, (torch.zeros(1, 3),), str(tmp_path / name), dynamo=False,
                          input_names=["x"], output_names=["y"], opset_version=17)
        paths.append(str(tmp_path / name))
    out = tmp_path / "res.json"
    rc = cli.main(["equiv", *paths, "--domain=-1:1", "--input-shape", "1", "3",
                   "--epsilon", "1e-4", "--split", "relu", "--max-regions", "300",
                   "--timeout", "120", "--no-progress", "--out", str(out)])
    capsys.readouterr()
    assert rc in (0, 3, 4)
    data = json.loads(out.read_text())
    assert data["details"]["split"] == "relu"
    a, b = (load_module(p, needed_by="test") for p in paths)
    api = cc.verify_equivalence(a, b, InputDomain.box(-1.0, 1.0, shape=(1, 3)),
                                epsilon=1e-4, split="relu", max_regions=300, timeout=120)
    assert (api.status, api.regions) == (data["status"], data["regions"])
    assert cli.main(["equiv", *paths, "--domain=-1:1", "--input-shape", "1", "3",
                     "--epsilon", "1e-4", "--split", "neurons"]) == 2
