"""Path-magnitude scores: each equals the exact path-metric of removing that weight alone
(checked against the engine and against brute-force path enumeration), the sum over a
set bounds the set's path-metric, and scores are invariant to neuron rescaling while
magnitudes are not."""

from __future__ import annotations

import itertools

import pytest
import torch
from pruning_nets import conv_chain, mlp, res_bn_net, rescale_neurons

import certcompress as cc
from certcompress.bounds import graph_path_metric
from certcompress.compress.pruning import PruningPlan, apply_masks, weight_scores
from certcompress.compress.pruning._layers import prunable_layers
from certcompress.compress.pruning.criteria import layer_nodes
from certcompress.ir.ops import AffineParams

SHAPE = (1, 1, 4, 4)


def _zero_one(model, layer: str, index: int):
    keep = {ly.name: torch.ones(ly.shape, dtype=torch.bool) for ly in prunable_layers(model)}
    flat = keep[layer].reshape(-1)
    flat[index] = False
    return apply_masks(model, keep)


def test_score_equals_path_metric_of_each_weight_alone_graph_level() -> None:
    model = res_bn_net()
    g = cc.trace(model, SHAPE)
    layers = prunable_layers(model)
    scores = weight_scores(model, "path-magnitude", graph=g)
    nodes = layer_nodes(g, layers)
    checked = 0
    for ly in layers:
        (node,) = nodes[ly.name]
        for i in range(ly.numel):
            params = dict(g.params)
            w = params[node].weight.clone()
            w.view(-1)[i] = 0.0
            params[node] = AffineParams(w, params[node].bias)
            pm = graph_path_metric(g, g.with_params(params))
            s = float(scores[ly.name].reshape(-1)[i])
            assert pm.exact
            assert pm.computed == pytest.approx(s, rel=1e-9, abs=1e-12), (ly.name, i)
            checked += 1
    assert checked == sum(ly.numel for ly in layers)


def test_score_is_metric_of_zeroing_the_module_weight() -> None:
    """The module-layout mapping (BatchNorm folded, conv and linear) against cc.path_metric
    on real pruned modules, for a sample of weights of every layer."""
    model = res_bn_net(seed=3)
    scores = weight_scores(model, "path-magnitude", input_shape=SHAPE)
    gen = torch.Generator().manual_seed(0)
    for ly in prunable_layers(model):
        for i in torch.randint(ly.numel, (4,), generator=gen).tolist():
            pm = cc.path_metric(model, _zero_one(model, ly.name, i), SHAPE)
            assert pm.computed == pytest.approx(float(scores[ly.name].reshape(-1)[i]),
                                                rel=1e-9, abs=1e-12)


def _brute_phi(ws: list[torch.Tensor], bs: list[torch.Tensor]) -> dict[tuple, float]:
    """Every path of a Linear/ReLU chain and its Phi_p: paths start at an input or at a
    neuron's bias and end at an output."""
    phi: dict[tuple, float] = {}
    depth = len(ws)
    sizes = [ws[0].shape[1]] + [w.shape[0] for w in ws]
    for start_layer in range(depth + 1):  # 0: inputs; l>0: biases of layer l neurons
        for start in range(sizes[start_layer]):
            for rest in itertools.product(*[range(s) for s in sizes[start_layer + 1:]]):
                seq = (start,) + rest
                v = 1.0 if start_layer == 0 else float(bs[start_layer - 1][start])
                for j in range(len(rest)):
                    v *= float(ws[start_layer + j][seq[j + 1], seq[j]])
                phi[(start_layer,) + seq] = v
    return phi


def test_score_equals_brute_force_path_metric() -> None:
    model = mlp([2, 3, 3, 2], seed=1)
    lins = [m for m in model if isinstance(m, torch.nn.Linear)]
    ws = [m.weight.detach().double() for m in lins]
    bs = [m.bias.detach().double() for m in lins]
    base = _brute_phi(ws, bs)
    scores = weight_scores(model, "path-magnitude", input_shape=(1, 2))
    for li, (name, _) in enumerate([(n, m) for n, m in model.named_children()
                                    if isinstance(m, torch.nn.Linear)]):
        for i in range(ws[li].numel()):
            w2 = [w.clone() for w in ws]
            w2[li].view(-1)[i] = 0.0
            pruned = _brute_phi(w2, bs)
            brute = sum(abs(base[p] - pruned[p]) for p in base)
            assert float(scores[name].reshape(-1)[i]) == pytest.approx(brute, rel=1e-12,
                                                                       abs=1e-15)


def test_sum_of_scores_bounds_the_metric_of_a_set() -> None:
    model = res_bn_net(seed=5)
    scores = weight_scores(model, "path-magnitude", input_shape=SHAPE)
    for s in (0.2, 0.5, 0.9):
        plan = PruningPlan.random(model, s, seed=7)
        masks = plan.masks(model)
        total = sum(float(scores[k][~m].sum()) for k, m in masks.items())
        pm = cc.path_metric(model, apply_masks(model, masks), SHAPE)
        assert pm.exact
        assert pm.computed <= total * (1 + 1e-12)
        assert pm.computed > 0


@pytest.mark.parametrize("factors", [(1.0, 128.0, 4096.0), (0.37, 2.9, 11.0)])
def test_scores_are_rescaling_invariant_and_magnitudes_are_not(factors) -> None:
    model = conv_chain(seed=2)
    rescaled = rescale_neurons(model, [("conv1", "conv2"), ("conv2", "fc")], factors, seed=4)
    x = torch.rand(8, 1, 4, 4)
    with torch.no_grad():
        assert torch.allclose(model(x), rescaled(x), rtol=1e-4, atol=1e-5)
    a = weight_scores(model, "path-magnitude", input_shape=SHAPE)
    b = weight_scores(rescaled, "path-magnitude", input_shape=SHAPE)
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-12), k
    ma = weight_scores(model, "magnitude")
    mb = weight_scores(rescaled, "magnitude")
    assert not all(torch.allclose(ma[k], mb[k]) for k in ma)
    # the same path-magnitude plan on both, hence the same certified bound
    pa = PruningPlan.path_magnitude(model, 0.5, input_shape=SHAPE)
    pb = PruningPlan.path_magnitude(rescaled, 0.5, input_shape=SHAPE)
    if factors[0] == 1.0:  # powers of two: scores are bitwise equal, so are the masks
        assert all(torch.equal(pa.masks(model)[k], pb.masks(rescaled)[k]) for k in a)
        ca = cc.path_metric(model, apply_masks(model, pa.masks(model)), SHAPE).value
        cb = cc.path_metric(rescaled, apply_masks(rescaled, pb.masks(rescaled)), SHAPE).value
        assert ca == pytest.approx(cb, rel=1e-9)
