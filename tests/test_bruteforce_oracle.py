"""The engine against brute-force path enumeration on tiny networks.

The oracle (tests/_nets.py) builds the explicit neuron-level DAG from the models' own
modules (Jacobians and values at zero input, index arithmetic for max-pooling windows,
the shared doc's rewrites of ReLU6/Hardtanh and LeakyReLU), enumerates every path from
every input neuron and every bias to every output neuron, and sums. It first checks
that its DAG computes the model's function, then every engine value is compared to it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pytest
import torch
from _nets import DagNet, NetBuilder, compress, float64_copy, neuron_dag, oracle
from torch import nn

import certcompress as cc
from certcompress.bounds import graph_path_norm

REL = 1e-10


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------ tiny nets


def mlp_bias() -> tuple[DagNet, tuple[int, ...]]:
    b = NetBuilder((1, 3))
    h = b.module(nn.ReLU(), b.module(nn.Linear(3, 4), "x"))
    h = b.module(nn.ReLU(), b.module(nn.Linear(4, 4), h))
    return b.build(b.module(nn.Linear(4, 2), h), _gen(1)), b.input_shape


def skip_add() -> tuple[DagNet, tuple[int, ...]]:
    b = NetBuilder((1, 3))
    h = b.module(nn.ReLU(), b.module(nn.Linear(3, 4), "x"))
    r = b.module(nn.ReLU(), b.module(nn.Linear(4, 3), h))
    r = b.module(nn.Linear(3, 4), r)
    h = b.module(nn.ReLU(), b.add(h, r))
    return b.build(b.module(nn.Linear(4, 2), h), _gen(2)), b.input_shape


def _conv_head(b: NetBuilder, h: str, n_out: int = 2) -> str:
    f = b.flatten(h)
    return b.module(nn.Linear(b.shapes[f][1], n_out), f)


def _pool_net(pool: nn.Module, size: int, seed: int) -> tuple[DagNet, tuple[int, ...]]:
    b = NetBuilder((1, 1, size, size))
    h = b.module(nn.ReLU(), b.module(nn.Conv2d(1, 2, 3, padding=1), "x"))
    h = b.module(pool, h)
    return b.build(_conv_head(b, h), _gen(seed)), b.input_shape


def maxpool_plain() -> tuple[DagNet, tuple[int, ...]]:
    return _pool_net(nn.MaxPool2d(2), 4, 3)


def maxpool_pad_ceil() -> tuple[DagNet, tuple[int, ...]]:
    return _pool_net(nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True), 6, 4)


def maxpool_ceil_uneven() -> tuple[DagNet, tuple[int, ...]]:
    return _pool_net(nn.MaxPool2d(2, ceil_mode=True), 5, 5)


def maxpool_dilated() -> tuple[DagNet, tuple[int, ...]]:
    return _pool_net(nn.MaxPool2d(2, stride=1, padding=1, dilation=2), 4, 6)


def avgpool_pad_ceil() -> tuple[DagNet, tuple[int, ...]]:
    pool = nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)
    return _pool_net(pool, 5, 7)


def avgpool_include_pad() -> tuple[DagNet, tuple[int, ...]]:
    return _pool_net(nn.AvgPool2d(2, stride=2, padding=1, count_include_pad=True), 5, 8)


def adaptive_avg_uneven() -> tuple[DagNet, tuple[int, ...]]:
    return _pool_net(nn.AdaptiveAvgPool2d((2, 3)), 5, 9)


def concat() -> tuple[DagNet, tuple[int, ...]]:
    b = NetBuilder((1, 3))
    h1 = b.module(nn.ReLU(), b.module(nn.Linear(3, 3), "x"))
    h2 = b.module(nn.ReLU(), b.module(nn.Linear(3, 2), "x"))
    h3 = b.module(nn.ReLU(), b.module(nn.Linear(2, 2), h2))
    h = b.cat([h1, h3, h2])
    return b.build(b.module(nn.Linear(7, 2), h), _gen(10)), b.input_shape


def conv_concat() -> tuple[DagNet, tuple[int, ...]]:
    b = NetBuilder((1, 1, 4, 4))
    h1 = b.module(nn.ReLU(), b.module(nn.Conv2d(1, 2, 3, padding=1), "x"))
    h2 = b.module(nn.ReLU(), b.module(nn.Conv2d(2, 1, 1), h1))
    h = b.module(nn.MaxPool2d(2), b.cat([h1, h2]))
    return b.build(_conv_head(b, h), _gen(11)), b.input_shape


def batchnorm_folded() -> tuple[DagNet, tuple[int, ...]]:
    b = NetBuilder((1, 3))
    h = b.module(nn.ReLU(), b.module(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), "x"))
    h = b.module(nn.BatchNorm1d(4), h)  # after a ReLU: a per-channel identity neuron
    return b.build(b.module(nn.Linear(4, 2), h), _gen(12)), b.input_shape


def conv_batchnorm() -> tuple[DagNet, tuple[int, ...]]:
    b = NetBuilder((1, 1, 4, 4))
    m = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2))
    h = b.module(nn.ReLU(), b.module(m, "x"))
    m2 = nn.Sequential(nn.Conv2d(2, 2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2))
    h = b.module(nn.ReLU(), b.module(m2, h))
    return b.build(_conv_head(b, h), _gen(13)), b.input_shape


def relu6_leaky() -> tuple[DagNet, tuple[int, ...]]:
    b = NetBuilder((1, 3))
    h = b.module(nn.ReLU6(), b.module(nn.Linear(3, 4), "x"))
    h = b.module(nn.LeakyReLU(0.1), b.module(nn.Linear(4, 3), h))
    h = b.module(nn.Hardtanh(-0.5, 1.5), b.module(nn.Linear(3, 3), h))
    net = b.build(b.module(nn.Linear(3, 2), h), _gen(14))
    with torch.no_grad():  # pre-activations beyond 6 for inputs in [-3, 3]
        net.mods["m1"].weight.mul_(8.0)
    return net, b.input_shape


def conv1d_stride_pad() -> tuple[DagNet, tuple[int, ...]]:
    b = NetBuilder((1, 2, 7))
    h = b.module(nn.ReLU(), b.module(nn.Conv1d(2, 3, 3, stride=2, padding=1), "x"))
    h = b.module(nn.ReLU(), b.module(nn.Conv1d(3, 2, 2, dilation=2, padding=1), h))
    return b.build(_conv_head(b, h), _gen(15)), b.input_shape


def conv2d_stride_pad() -> tuple[DagNet, tuple[int, ...]]:
    b = NetBuilder((1, 1, 5, 5))
    h = b.module(nn.ReLU(), b.module(nn.Conv2d(1, 2, 3, stride=2, padding=1), "x"))
    h = b.module(nn.ReLU(), b.module(nn.Conv2d(2, 2, (3, 2), padding=(1, 0), groups=2), h))
    return b.build(_conv_head(b, h), _gen(16)), b.input_shape


def conv_transpose() -> tuple[DagNet, tuple[int, ...]]:
    b = NetBuilder((1, 2, 3, 3))
    m = nn.ConvTranspose2d(2, 2, 3, stride=2, padding=1, output_padding=1)
    h = b.module(nn.ReLU(), b.module(m, "x"))
    return b.build(_conv_head(b, h), _gen(17)), b.input_shape


def upsample_nearest() -> tuple[DagNet, tuple[int, ...]]:
    b = NetBuilder((1, 2, 3, 3))
    h = b.module(nn.ReLU(), b.module(nn.Conv2d(2, 2, 3, padding=1), "x"))
    h = b.module(nn.Upsample(scale_factor=2, mode="nearest"), h)
    h = b.module(nn.ReLU(), b.module(nn.Conv2d(2, 2, 3, stride=2, padding=1), h))
    return b.build(_conv_head(b, h), _gen(18)), b.input_shape


def upsample_bilinear() -> tuple[DagNet, tuple[int, ...]]:
    b = NetBuilder((1, 1, 3, 3))
    h = b.module(nn.ReLU(), b.module(nn.Conv2d(1, 2, 3, padding=1), "x"))
    h = b.module(nn.Upsample(size=(5, 4), mode="bilinear", align_corners=False), h)
    return b.build(_conv_head(b, h), _gen(19)), b.input_shape


CASES: dict[str, Callable[[], tuple[DagNet, tuple[int, ...]]]] = {
    f.__name__: f for f in (
        mlp_bias, skip_add, maxpool_plain, maxpool_pad_ceil, maxpool_ceil_uneven,
        maxpool_dilated, avgpool_pad_ceil, avgpool_include_pad, adaptive_avg_uneven, concat,
        conv_concat, batchnorm_folded, conv_batchnorm, relu6_leaky, conv1d_stride_pad,
        conv2d_stride_pad, conv_transpose, upsample_nearest, upsample_bilinear)
}
BN_CASES = ("batchnorm_folded", "conv_batchnorm")

# compression kind -> the engine's construction for it (on nets without BatchNorm)
KINDS = {"prune": "exact", "round_zero": "exact", "scale": "minmax", "flip": "triangle",
         "perturb": "triangle"}


def _compressed(net: DagNet, kind: str) -> DagNet:
    amount = {"prune": 0.4, "round_zero": 0.15, "scale": 0.0, "flip": 0.25,
              "perturb": 0.3}[kind]
    return compress(net, kind, seed=100 + len(kind), amount=amount)  # type: ignore[return-value]


def _assert_close(got: float | np.ndarray, want: float | np.ndarray, what: str) -> None:
    g, w = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert g.shape == w.shape, (what, g.shape, w.shape)
    err = np.abs(g - w)
    tol = REL * np.abs(w) + 1e-280
    assert np.all(err <= tol), f"{what}: engine {g} vs oracle {w} (rel err {err / np.abs(w)})"


# ---------------------------------------------------------------------------- tests


@pytest.mark.parametrize("case", list(CASES))
def test_oracle_dag_is_the_model(case: str) -> None:
    """Self-check of the oracle: its neuron DAG computes the model's function, so the
    paths it enumerates are the model's paths."""
    net, shape = CASES[case]()
    comp = _compressed(net, "perturb")
    dag = neuron_dag([net, comp], shape)
    gen = torch.Generator().manual_seed(0)
    for which, model in ((0, net), (1, comp)):
        f = float64_copy(model)
        for _ in range(4):
            x = 3.0 * (2 * torch.rand(shape, generator=gen, dtype=torch.float64) - 1)
            with torch.no_grad():
                want = f(x).reshape(-1).numpy()
            got = dag.forward(x.reshape(-1).numpy(), which)
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", list(CASES))
def test_path_norm_equals_bruteforce(case: str) -> None:
    net, shape = CASES[case]()
    dag = neuron_dag([net, net], shape)
    ph = dag.paths()
    per_output = np.array([np.abs(p[0]).sum() for p in ph])
    _assert_close(cc.path_norm(net, shape), per_output.sum(), "path-norm")
    pn = graph_path_norm(cc.trace(net, shape))
    _assert_close(np.array(pn.per_output), per_output, "per-output path-norm")
    assert pn.computed <= pn.value  # the slack only adds


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("case", list(CASES))
def test_path_metric_equals_bruteforce(case: str, kind: str) -> None:
    net, shape = CASES[case]()
    comp = _compressed(net, kind)
    ov = oracle(neuron_dag([net, comp], shape))
    pm = cc.path_metric(net, comp, shape)
    want = ov.expected()

    _assert_close(pm.value, want.sum(), f"path-metric ({kind})")
    _assert_close(np.array(pm.per_output), want, f"per-output path-metric ({kind})")
    _assert_close(pm.path_norm_original, ov.norm.sum(), "path-norm of the original")
    _assert_close(pm.path_norm_compressed, ov.norm2.sum(), "path-norm of the compressed")
    assert pm.exact == (ov.dominated and not ov.sign_conflict)
    assert (pm.sign_changes > 0) == ov.sign_conflict
    # always an upper bound of the true path-metric, output by output
    true = ov.metric
    assert pm.value >= true.sum() * (1 - 1e-12)
    assert np.all(np.array(pm.per_output) >= true * (1 - 1e-12))
    if pm.exact:
        _assert_close(pm.value, (ov.norm - ov.norm2).sum(), "pruning: difference of norms")
    # what the compression kind implies (pruning a bias that a BatchNorm follows is not
    # a pruning of the folded bias, so the BatchNorm nets are left out of this check)
    if case not in BN_CASES:
        assert pm.exact == (KINDS[kind] == "exact"), pm.method
        assert (pm.sign_changes > 0) == (KINDS[kind] == "triangle")


@pytest.mark.parametrize("which", ["first", "last"])
@pytest.mark.parametrize("case", list(CASES))
def test_path_metric_one_layer_changed_equals_bruteforce(case: str, which: str) -> None:
    """Only one parametric layer pruned: the difference is zero up to it, so the
    difference pass takes its shortcut there (no convolution of the zero difference)."""
    net, shape = CASES[case]()
    comp = copy.deepcopy(net)
    layers = [m for m in comp.modules()
              if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d))]
    layer = layers[0] if which == "first" else layers[-1]
    with torch.no_grad():
        w = layer.weight
        w[w.abs() <= w.abs().flatten().median()] = 0.0
    ov = oracle(neuron_dag([net, comp], shape))  # type: ignore[list-item]
    pm = cc.path_metric(net, comp, shape)
    want = ov.expected()
    assert pm.exact and pm.changed_parameters > 0
    _assert_close(pm.value, want.sum(), f"path-metric ({which} layer pruned)")
    _assert_close(np.array(pm.per_output), want, f"per-output path-metric ({which})")
    assert np.all(np.array(pm.per_output) >= ov.metric * (1 - 1e-12))


@pytest.mark.parametrize("case", BN_CASES)
def test_path_metric_with_batchnorm_statistics_changed(case: str) -> None:
    """Changing BatchNorm's gamma, beta, mean and var changes the folded weights and
    biases (possibly their signs): still the triangle value of the folded DAG."""
    net, shape = CASES[case]()
    comp = compress(net, "perturb", seed=7, amount=0.3, include_bn=True)
    ov = oracle(neuron_dag([net, comp], shape))  # type: ignore[list-item]
    pm = cc.path_metric(net, comp, shape)
    want = ov.expected()
    assert ov.sign_conflict
    _assert_close(pm.value, want.sum(), "path-metric")
    _assert_close(np.array(pm.per_output), want, "per-output path-metric")
    assert pm.value >= ov.metric.sum()


def test_relu6_six_is_a_bias_path() -> None:
    """ReLU6(z) = ReLU(z) - ReLU(z - 6): the 6 starts paths; treating ReLU6 as ReLU
    would give a smaller (unsound) path-norm. Closed form for a 1-1-1 network."""
    w1, b1, w2, b2 = 0.7, -0.3, -1.3, 0.2
    b = NetBuilder((1, 1))
    h = b.module(nn.ReLU6(), b.module(nn.Linear(1, 1), "x"))
    net = b.build(b.module(nn.Linear(1, 1), h)).double()
    with torch.no_grad():
        net.mods["m1"].weight.fill_(w1)
        net.mods["m1"].bias.fill_(b1)
        net.mods["m3"].weight.fill_(w2)
        net.mods["m3"].bias.fill_(b2)
    relu_net = copy.deepcopy(net)
    relu_net.mods["m2"] = nn.ReLU().eval()
    want = 2 * abs(w1 * w2) + 2 * abs(b1 * w2) + 6 * abs(w2) + abs(b2)
    _assert_close(cc.path_norm(net, (1, 1)), want, "ReLU6 path-norm")
    as_relu = abs(w1 * w2) + abs(b1 * w2) + abs(b2)
    _assert_close(cc.path_norm(relu_net, (1, 1)), as_relu, "ReLU path-norm")
