"""Hostile inputs for the bounds tier's chain routing (docs/bounds.md, "Chain pairs"):
the differential single pass now decides the stated bound wherever it is the smaller,
so every corner the engine alone was tested on is attacked here through it.

* point boxes (``lo == hi``): the true deviation is known exactly (rational arithmetic,
  no rounding allowance): the tier's l1 and per-output bounds are at least it, for
  float16-cast, pruned, rounded and ulp-perturbed pairs, with weights scaled to 1e-300
  and into float64's subnormals (underflow);
* a box with zero-width dimensions, one output, identical networks (bound >= 0 and
  near 0), through the shared harness (tests/_soundness.py);
* a VNN-COMP-shaped ACAS-like ONNX pair (Flatten, Sub with a non-zero offset, MatMul,
  Add, Relu; the compressed one float16 initializers behind Casts), certified in exact
  arithmetic (attacked in float64) and in float32 arithmetic (attacked with both models
  run in float32, no allowance): the float32 term is added after the tier's minimum of
  both passes, so it covers the chain pass's bound too.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import _soundness as sh
import numpy as np
import onnx
import pytest
import torch
from _nets import deterministic_copy
from _nets import mlp as _mlp
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import certcompress as cc
from certcompress.bounds.propagation.engine import PropagationOptions
from certcompress.bounds.propagation.lowering import lower_pair
from certcompress.bounds.tierbase import GraphPair
from certcompress.bounds.tiers import bounds_tier, tier_registry
from certcompress.capture.onnx import load_onnx
from certcompress.domain import InputDomain
from certcompress.equivalence.chain import ChainState, chain_from_pair
from certcompress.equivalence.chain_bounds import chain_per_output as _chain_per_output
from certcompress.equivalence.chain_bounds import chain_state as _chain_state
from certcompress.equivalence.tier import BabOptions


def _exact(net: nn.Sequential, x: torch.Tensor) -> list[Fraction]:
    """The network's output at ``x`` in exact rational arithmetic."""
    v = [Fraction(float(t)) for t in x.reshape(-1)]
    for m in net:
        if isinstance(m, nn.Linear):
            w, b = m.weight.tolist(), m.bias.tolist()
            v = [sum((Fraction(wij) * vj for wij, vj in zip(row, v)), Fraction(0))
                 + Fraction(bi) for row, bi in zip(w, b)]
        else:
            v = [max(t, Fraction(0)) for t in v]
    return v


@pytest.mark.parametrize("scale", [1.0, 1e-300, 1e-310])
@pytest.mark.parametrize("kind", ["float16", "prune", "round", "ulp", "same"])
@pytest.mark.parametrize("chain", [True, False])
def test_point_boxes_are_bounded_exactly(scale: float, kind: str, chain: bool) -> None:
    for seed in range(3):
        net = _mlp(3, 5, 2, 2, seed, scale)
        comp = _compress(net, kind)
        x = torch.rand(1, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        dom = InputDomain.box(x, x, shape=(1, 3))
        mb = bounds_tier(cc.trace(net, dom.shape), cc.trace(comp, dom.shape), dom,
                         PropagationOptions(chain=chain))
        per = [abs(a - b) for a, b in zip(_exact(net, x), _exact(comp, x))]
        what = f"{kind} scale={scale} seed={seed} chain={chain}"
        assert Fraction(mb.bound) >= sum(per), (what, mb.bound, float(sum(per)))
        assert all(Fraction(p) >= q for p, q in zip(mb.per_output, per)), \
            (what, mb.per_output, [float(q) for q in per])
        if chain:
            assert Fraction(mb.details["chain_bound"]) >= sum(per), what


@pytest.mark.parametrize("case", ["zero-width", "one-output", "same"])
def test_degenerate_boxes_and_pairs(case: str) -> None:
    n_out = 1 if case == "one-output" else 3
    net = _mlp(4, 10, 2, n_out, 1)
    comp = _compress(net, "same" if case == "same" else "float16")
    lo = torch.tensor([[-0.5, 0.2, -0.1, 0.0]], dtype=torch.float64)
    hi = torch.tensor([[0.5, 0.2, 0.3, 0.0]], dtype=torch.float64)
    dom = InputDomain.box(lo, hi, shape=(1, 4))
    mb = bounds_tier(cc.trace(net, dom.shape), cc.trace(comp, dom.shape), dom,
                     PropagationOptions())
    found = sh.attack(sh.f64(net), sh.f64(comp), *sh.box(dom, dom.shape), 0,
                      per_output=True, steps=20, restarts=3)
    sh.assert_sound(found, mb.bound, mb.per_output, case)
    sh.assert_sound(found, mb.details["chain_bound"], None, f"{case} (chain pass)")
    assert mb.bound >= 0.0 and min(mb.per_output) >= 0.0
    if case == "same":  # only the outward rounding margins are left
        assert found.worst == 0.0 and mb.bound < 1e-8


def _acas_onnx(path: Path, net: nn.Sequential, offset: list[float], half: bool) -> None:
    """``net`` as a VNN-COMP ACAS-Xu-shaped graph: X [1, 1, 1, 5] -> Flatten -> Sub ->
    (MatMul, Add, Relu)* -> MatMul, Add; float16 initializers behind Casts with
    ``half``."""
    nodes = [helper.make_node("Flatten", ["X"], ["flat"], axis=1),
             helper.make_node("Sub", ["flat", "offset"], ["h0"])]
    inits = [numpy_helper.from_array(np.array(offset, np.float32), "offset")]
    linears = [m for m in net if isinstance(m, nn.Linear)]
    cur = "h0"
    for k, lin in enumerate(linears):
        for name, arr in ((f"W{k}", lin.weight.detach().double().numpy().T),
                          (f"B{k}", lin.bias.detach().double().numpy())):
            if half:
                inits.append(numpy_helper.from_array(arr.astype(np.float16), name + "_h"))
                nodes.append(helper.make_node("Cast", [name + "_h"], [name],
                                              to=TensorProto.FLOAT))
            else:
                inits.append(numpy_helper.from_array(arr.astype(np.float32), name))
        nodes.append(helper.make_node("MatMul", [cur, f"W{k}"], [f"m{k}"]))
        out = "Y" if k == len(linears) - 1 else f"a{k}"
        nodes.append(helper.make_node("Add", [f"m{k}", f"B{k}"], [out]))
        if k < len(linears) - 1:
            nodes.append(helper.make_node("Relu", [out], [f"r{k}"]))
            cur = f"r{k}"
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 1, 1, 5])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 5])
    model = helper.make_model(helper.make_graph(nodes, "acas_like", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.mark.parametrize("seed", [0, 3])
def test_acas_shaped_onnx_pair_exact_and_float32(tmp_path: Path, seed: int) -> None:
    net = _mlp(5, 20, 3, 5, seed).float().double()  # float32-exact weights
    offset = [0.1, -0.2, 0.3, 0.0, 0.05]
    _acas_onnx(tmp_path / "o.onnx", net, offset, half=False)
    _acas_onnx(tmp_path / "c.onnx", net, offset, half=True)
    orig, comp = load_onnx(tmp_path / "o.onnx"), load_onnx(tmp_path / "c.onnx")
    lo = torch.tensor([-0.3, -0.1, -0.5, 0.45, 0.2]).reshape(1, 1, 1, 5)
    hi = lo + torch.tensor([0.05, 0.2, 0.0, 0.05, 0.01]).reshape(1, 1, 1, 5)  # one zero width
    dom = InputDomain.box(lo, hi, shape=(1, 1, 1, 5))
    box = sh.box(dom, dom.shape)
    mb = bounds_tier(cc.trace(orig, dom.shape), cc.trace(comp, dom.shape), dom,
                     PropagationOptions())
    assert "chain_bound" in mb.details
    found = sh.attack(sh.f64(orig), sh.f64(comp), *box, seed, per_output=True, steps=20,
                      restarts=3)
    sh.assert_sound(found, mb.bound, mb.per_output, "ACAS-shaped ONNX")
    sh.assert_sound(found, mb.details["chain_bound"], None, "ACAS-shaped ONNX (chain pass)")
    cert = cc.certify(orig, comp, domain=dom, methods=("bounds",), arithmetic="float32",
                      search_steps=0)
    tier = cert.by_method["bounds"]
    assert tier.details["chain"] is True and tier.details["arithmetic"] == "float32"
    found32 = sh.attack(sh.f32(orig), sh.f32(comp), *box, seed, float32=True,
                        per_output=True, steps=20, restarts=3)
    sh.assert_sound(found32, tier.bound, tier.per_output, "ACAS-shaped ONNX in float32")
    sh.record("bounds tier, ACAS-shaped ONNX float16 (chain)", mb.bound, found.worst)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chain_pass_intersects_forward_and_backsubstituted_bounds(seed: int) -> None:
    """With the default ``intermediate="crown"`` the tier's chain pass bounds
    pre-activations by back-substitution *and* the symbolic forward pass (``"both"``):
    never looser than back-substitution alone, and on pruned MLPs, where the forward
    bounds are the tighter at many neurons, strictly tighter (measured 0.62-0.78x of
    the tier bound with back-substitution alone)."""
    net = _mlp(5, 50, 4, 5, seed)
    comp = _compress(net, "prune")
    x = torch.rand(1, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    dom = InputDomain.box(x - 0.05, x + 0.05, shape=(1, 5))
    opts = PropagationOptions()
    lowered = lower_pair(cc.trace(net, dom.shape), cc.trace(comp, dom.shape))
    state = _chain_state(lowered, dom, opts)
    assert state is not None and state.intermediate == "both"
    chain = chain_from_pair(lowered)
    assert chain is not None
    lo, hi = dom.lower_tensor().reshape(1, -1), dom.upper_tensor().reshape(1, -1)
    alone = ChainState(chain, lo, hi, intermediate="crown", quantities=("z", "d"),
                       relaxation="choose")
    m = lowered.output_size
    both_per = _chain_per_output(state, m, opts)
    alone_per = _chain_per_output(alone, m, opts)
    assert bool((both_per <= alone_per).all())
    assert float(both_per.sum()) < 0.9 * float(alone_per.sum())
    mb = bounds_tier(cc.trace(net, dom.shape), cc.trace(comp, dom.shape), dom, opts)
    found = sh.attack(sh.f64(net), sh.f64(comp), *sh.box(dom, dom.shape), seed,
                      per_output=True, steps=20, restarts=3)
    sh.assert_sound(found, mb.bound, mb.per_output, f"pruned MLP seed {seed}")
    sh.assert_sound(found, float(both_per.sum()), both_per.tolist(), "chain pass (both)")
    sh.record("bounds tier, pruned 4x50 MLP (chain both)", mb.bound, found.worst)


@pytest.mark.parametrize("seed", [0, 1])
def test_bab_is_never_looser_than_the_bounds_tier_per_output(seed: int) -> None:
    """The ``bab`` tier's one-pass bound is the ``bounds`` tier's computation, chain
    routing included: before, its per-output bounds of a float16 MLP were the engine's
    alone, looser than the ``bounds`` tier's on every output."""
    net = _mlp(5, 30, 3, 5, seed)
    comp = _compress(net, "float16")
    x = torch.rand(1, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    dom = InputDomain.box(x - 0.1, x + 0.1, shape=(1, 5))
    pair = GraphPair(cc.trace(net, dom.shape), cc.trace(comp, dom.shape))
    bab = tier_registry().get("bab").bound(pair, dom, BabOptions(time_budget=None,
                                                                 max_regions=4))
    bounds = tier_registry().get("bounds").bound(pair, dom)
    assert bab.bound <= bounds.bound
    assert all(a <= b for a, b in zip(bab.per_output, bounds.per_output)), \
        (bab.per_output, bounds.per_output)
    found = sh.attack(sh.f64(net), sh.f64(comp), *sh.box(dom, dom.shape), seed,
                      per_output=True, steps=20, restarts=3)
    sh.assert_sound(found, bab.bound, bab.per_output, f"bab, float16 MLP seed {seed}")


def _compress(net: nn.Module, kind: str) -> nn.Module:
    return deterministic_copy(net, kind, amount=0.5)
