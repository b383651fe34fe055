"""The ReLU-pair relaxations of the chain pass (``ChainState(relaxation=...)``): the
per-neuron choice (``"choose"``, one fused pass), its unfused form (``"ramp"``), the
smaller of two whole passes (``"min2"``) and the value-picked split (``"default"``),
each checked one-sidedly against dense grids on pairs with one to three inputs, for
every layer's bounds and for output rows, on batches of several boxes at once (rows
gathered per box) and one row per box (no gather); and the split heuristics of the
search, which never verify where the grid finds a violation."""

from __future__ import annotations

import pytest
import torch
from _pairs import build, compress, grid, layer_values, mlp, outputs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import certcompress as cc
from certcompress.bounds.propagation.lowering import lower_pair
from certcompress.domain import InputDomain
from certcompress.equivalence.chain import LAYOUTS, RELAXATIONS, ChainState, chain_from_pair
from certcompress.equivalence.properties import EpsilonProperty, Top1Property
from certcompress.equivalence.search import Bounder, SearchConfig, run_search

pairs = st.fixed_dictionaries({
    "n_in": st.integers(1, 3), "arch": st.sampled_from(["mlp", "mlp", "cnn"]),
    "kind": st.sampled_from(["prune", "round", "float16"]), "seed": st.integers(0, 10_000),
    "half": st.sampled_from([0.05, 0.25, 1.0, 2.0]), "depth": st.integers(1, 4),
})


def sub_boxes(lo: torch.Tensor, hi: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` boxes: the whole box and slices of it along the first input."""
    los, his = [lo], [hi]
    w = (hi[0] - lo[0]) / (k - 1)
    for q in range(k - 1):
        a, b = lo.clone(), hi.clone()
        a[0], b[0] = lo[0] + q * w, lo[0] + (q + 1) * w
        los.append(a)
        his.append(b)
    return torch.stack(los), torch.stack(his)


def _chain_pair(p: dict) -> tuple:
    """The hypothesis pair ``p`` built, lowered and in chain form, with its box flat."""
    net, comp, dom = build(p)
    pair = lower_pair(cc.trace(net, dom.shape), cc.trace(comp, dom.shape))
    chain = chain_from_pair(pair)
    assert chain is not None
    lo0, hi0 = dom.lower_tensor().reshape(-1), dom.upper_tensor().reshape(-1)
    return net, comp, dom, pair, chain, lo0, hi0


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(p=pairs, relaxation=st.sampled_from(("choose",) * 3 + RELAXATIONS),
       boxes=st.sampled_from([1, 3]), layout=st.sampled_from(LAYOUTS))
def test_every_relaxation_bounds_layers_and_rows_on_a_dense_grid(
        p: dict, relaxation: str, boxes: int, layout: str) -> None:
    net, comp, dom, pair, chain, lo0, hi0 = _chain_pair(p)
    n = p["n_in"]
    lo, hi = (lo0[None], hi0[None]) if boxes == 1 else sub_boxes(lo0, hi0, boxes)
    state = ChainState(chain, lo, hi, intermediate="crown", quantities=("z", "d"),
                       relaxation=relaxation, layout=layout)
    m = pair.output_size
    eye = torch.eye(m, dtype=torch.float64)
    zero = torch.zeros_like(eye)
    cd1 = torch.cat([eye, -eye, eye, -eye])
    cz1 = torch.cat([zero, zero, eye, -eye])
    r = cd1.shape[0]
    P = lo.shape[0]
    ub, _ = state.upper_bounds(cz1.repeat(P, 1), cd1.repeat(P, 1),
                               torch.arange(P).repeat_interleave(r))
    ub = ub.reshape(P, r)
    # one row per box: the rows' problems are 0..P-1 (no gather)
    one, _ = state.upper_bounds(None, eye[:1].repeat(P, 1), torch.arange(P))
    pres = state.pre_bounds()
    for q in range(P):
        qd = InputDomain.box(lo[q][None], hi[q][None], shape=dom.shape)
        x = grid(qd, n)
        f, g = outputs(net, comp, x.reshape((-1,) + tuple(dom.shape[1:])))
        f, g = f.reshape(x.shape[0], -1), g.reshape(x.shape[0], -1)
        d = f - g
        forms = [d, -d, f + d, -f - d]
        for i, form in enumerate(forms):
            top = form.amax(0)
            tol = 1e-9 * (1 + top.abs())
            got = ub[q, i * m:(i + 1) * m]
            assert bool((got >= top - tol).all()), (relaxation, i, got, top)
        assert float(one[q]) >= float(d[:, 0].max()) - 1e-9 * (1 + float(d[:, 0].abs().max()))
        # every affine layer's bounds on z, c and d contain the grid's values
        for k, (zv, cv) in enumerate(layer_values(chain, x)):
            pb = pres[k]
            if pb is None:
                continue
            dv = zv - cv
            for v, (a, b) in ((zv, (0, 1)), (cv, (2, 3)), (dv, (4, 5))):
                tol = 1e-9 * (1 + v.abs().amax(0))
                assert bool((v.amin(0) >= pb[q, a] - tol).all()), (relaxation, k, a)
                assert bool((v.amax(0) <= pb[q, b] + tol).all()), (relaxation, k, b)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(p=pairs)
def test_choose_is_the_fused_ramp_pass(p: dict) -> None:
    """The fused per-neuron tables give the bound of the unfused difference-structured
    pass (the same relaxation in another arithmetic order)."""
    net, comp, dom = build(p)
    pair = lower_pair(cc.trace(net, dom.shape), cc.trace(comp, dom.shape))
    chain = chain_from_pair(pair)
    assert chain is not None
    lo0, hi0 = dom.lower_tensor().reshape(-1), dom.upper_tensor().reshape(-1)
    lo, hi = sub_boxes(lo0, hi0, 3)
    m = pair.output_size
    eye = torch.eye(m, dtype=torch.float64)
    cd = torch.cat([eye, -eye]).repeat(3, 1)
    prob = torch.arange(3).repeat_interleave(2 * m)
    got = {}
    for rel in ("choose", "ramp"):
        st_ = ChainState(chain, lo, hi, intermediate="crown", quantities=("z", "d"),
                         relaxation=rel)
        got[rel] = st_.upper_bounds(None, cd, prob)[0]
    scale = 1 + got["ramp"].abs()
    assert bool(((got["choose"] - got["ramp"]).abs() <= 1e-9 * scale).all()), got


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(p=pairs, boxes=st.sampled_from([2, 5]), chunk=st.sampled_from([8, 1 << 15]),
       quantities=st.sampled_from([("z", "d"), ("z", "c", "d")]))
def test_padded_layout_gives_the_row_layouts_bounds(p: dict, boxes: int, chunk: int,
                                                    quantities: tuple[str, ...]) -> None:
    """The per-problem padded rows (grouped by count, padding discarded, small chunks
    splitting the groups) give every layer the bounds of the flat row list."""
    net, comp, dom = build(p)
    pair = lower_pair(cc.trace(net, dom.shape), cc.trace(comp, dom.shape))
    chain = chain_from_pair(pair)
    assert chain is not None
    lo0, hi0 = dom.lower_tensor().reshape(-1), dom.upper_tensor().reshape(-1)
    lo, hi = sub_boxes(lo0, hi0, boxes)
    pres = {}
    for layout in LAYOUTS:
        st_ = ChainState(chain, lo, hi, intermediate="crown", quantities=quantities,
                         layout=layout, chunk_rows=chunk)
        pres[layout] = (st_.pre_bounds(), st_.rows)
    assert pres["padded"][1] == pres["rows"][1]
    for a, b in zip(pres["padded"][0], pres["rows"][0]):
        if a is None:
            assert b is None
            continue
        assert b is not None
        assert bool(((a - b).abs() <= 1e-9 * (1 + b.abs())).all()), (a - b).abs().max()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(p=pairs)
def test_parent_bounds_reused_in_children_contain_the_grid(p: dict) -> None:
    """Children bounded with their parent's layer bounds as ``prior`` (the search's
    ``reuse_bounds``): every layer's bounds contain the child's grid values and are never
    wider than the child's bounds without the prior."""
    net, comp, dom, pair, chain, lo0, hi0 = _chain_pair(p)
    n = p["n_in"]
    parent = ChainState(chain, lo0[None], hi0[None], intermediate="crown",
                        quantities=("z", "d")).pre_bounds()
    lo, hi = sub_boxes(lo0, hi0, 3)
    lo, hi = lo[1:], hi[1:]
    prior = [None if t is None else t.expand(2, -1, -1) for t in parent]
    with_prior = ChainState(chain, lo, hi, intermediate="crown", quantities=("z", "d"),
                            prior=prior).pre_bounds()
    alone = ChainState(chain, lo, hi, intermediate="crown", quantities=("z", "d")).pre_bounds()
    for q in range(2):
        qd = InputDomain.box(lo[q][None], hi[q][None], shape=dom.shape)
        x = grid(qd, n)
        for k, (zv, cv) in enumerate(layer_values(chain, x)):
            pb, pa = with_prior[k], alone[k]
            if pb is None:
                continue
            assert pa is not None
            dv = zv - cv
            for v, (a, b) in ((zv, (0, 1)), (cv, (2, 3)), (dv, (4, 5))):
                tol = 1e-9 * (1 + v.abs().amax(0))
                assert bool((v.amin(0) >= pb[q, a] - tol).all()), (k, a)
                assert bool((v.amax(0) <= pb[q, b] + tol).all()), (k, b)
        # the prior's first affine layer is intersected before anything depends on it
        first = next(k for k, t in enumerate(with_prior) if t is not None)
        pb, pa = with_prior[first], alone[first]
        assert pb is not None and pa is not None
        assert bool((pb[q, 1::2] <= pa[q, 1::2] + 1e-12).all())
        assert bool((pb[q, 0::2] >= pa[q, 0::2] - 1e-12).all())


@pytest.mark.parametrize(("option", "value", "names"), [
    ("layout", "dense", ("layout", "padded")),
    ("relaxation", "tightest", ("relaxation", "choose")),
])
def test_unknown_option_is_rejected(option: str, value: str, names: tuple[str, str]) -> None:
    net = mlp(2, 4, 1, 2, 0)
    dom = InputDomain.box(-1.0, 1.0, shape=(1, 2))
    pair = lower_pair(cc.trace(net, dom.shape), cc.trace(compress(net, "round"), dom.shape))
    chain = chain_from_pair(pair)
    assert chain is not None
    lo, hi = dom.lower_tensor().reshape(1, -1), dom.upper_tensor().reshape(1, -1)
    with pytest.raises(ValueError) as info:
        ChainState(chain, lo, hi, **{option: value})
    assert all(n in str(info.value) for n in names)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(p=pairs, factor=st.sampled_from([0.5, 0.97, 1.05, 3.0]),
       split=st.sampled_from(["smear", "worst"]), top1=st.booleans())
def test_split_heuristics_never_verify_where_the_grid_violates(
        p: dict, factor: float, split: str, top1: bool) -> None:
    net, comp, dom = build(p)
    x = grid(dom, p["n_in"])
    f, g = outputs(net, comp, x)
    pair = lower_pair(cc.trace(net, dom.shape), cc.trace(comp, dom.shape))
    lo, hi = dom.lower_tensor().reshape(-1), dom.upper_tensor().reshape(-1)
    cfg = SearchConfig(timeout=1.0, split=split)
    if top1:
        prop = Top1Property(pair.output_size)
        bad = bool((prop.violation(f, g) > 0).any())
        res = run_search(Bounder(pair), prop, lo, hi, cfg)
        if bad:
            assert res["status"] != "verified"
    else:
        worst = float((f - g).abs().amax(1).max())
        if worst == 0.0:
            return
        eps = worst * factor
        res = run_search(Bounder(pair), EpsilonProperty(pair.output_size, eps, "inf"),
                         lo, hi, cfg)
        if worst > eps:
            assert res["status"] != "verified", (worst, eps, res)
    if res["status"] == "falsified":
        cex = res["counterexample"]
        assert cex is not None
        assert bool(((cex >= lo) & (cex <= hi)).all())
