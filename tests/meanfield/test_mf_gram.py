"""Gram matrices G1, G2 equal explicit Jacobian products on tiny networks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _soundness import within
from hypothesis import given, settings
from hypothesis import strategies as st

from certcompress import meanfield as mf
from certcompress.errors import ConfigurationError


def _explicit(net: mf.ScaledResNet, X: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """J J^T from torch.autograd.functional.jacobian, one parameter tensor at a time."""
    params = dict(net.named_parameters())

    def jac(names: tuple[str, ...]) -> torch.Tensor:
        blocks = []
        for name in names:
            def f(t: torch.Tensor, name: str = name) -> torch.Tensor:
                return torch.func.functional_call(net, {name: t}, (X,))

            J = torch.autograd.functional.jacobian(f, params[name].detach())
            blocks.append(J.reshape(X.shape[0], -1))
        return torch.cat(blocks, dim=1)

    J1 = jac(net.residual_parameter_names())
    J2 = jac(net.head_parameter_names())
    m = net.lr_multipliers()
    b2 = net.config.beta ** 2
    return ((m["res_u"] / b2) * (J1 @ J1.T)).numpy(), ((m["head_a"] / b2) * (J2 @ J2.T)).numpy()


@settings(max_examples=12, deadline=None, derandomize=True)
@given(
    d=st.integers(1, 4), depth=st.integers(1, 3), width=st.integers(1, 5),
    head=st.integers(1, 5), n=st.integers(1, 6),
    scaling=st.sampled_from(["mean-field", "sqrt", "none", 0.3]),
    init=st.sampled_from(["mean-field", "standard"]),
    activation=st.sampled_from(["tanh", "sigmoid", "gelu", "relu"]),
    seed=st.integers(0, 1000),
)
def test_gram_equals_explicit_jacobian_products(d, depth, width, head, n, scaling, init,
                                                activation, seed):
    net = mf.ScaledResNet(d, depth, width, head, scaling, alpha=1.3, beta=0.7, init=init,
                          activation=activation, input_dim=3, seed=seed)
    X = torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    G1, G2 = _explicit(net, X)
    for method in ("structured", "jacobian"):
        gp = mf.gram_matrices(net, X, method=method)
        scale1, scale2 = max(1.0, np.abs(G1).max()), max(1.0, np.abs(G2).max())
        np.testing.assert_allclose(gp.G1, G1, rtol=0, atol=1e-11 * scale1)
        np.testing.assert_allclose(gp.G2, G2, rtol=0, atol=1e-11 * scale2)


def test_gram_is_symmetric_psd_float64_and_float32_net_is_promoted():
    net = mf.ScaledResNet(4, 3, 8, 6, input_dim=2, seed=3, dtype=torch.float32)
    X = np.random.default_rng(0).standard_normal((7, 2))
    gp = mf.gram_matrices(net, X)
    for G in (gp.G1, gp.G2):
        assert G.dtype == np.float64 and G.shape == (7, 7)
        np.testing.assert_allclose(G, G.T, atol=1e-12)
        assert np.linalg.eigvalsh(G)[0] > -1e-10
    assert gp.lambda_min_sum >= gp.lambda_min_G2 - 1e-10  # G1 is PSD


def test_gram_rejects_bad_method_and_shape():
    net = mf.ScaledResNet(3, 2, 4, 4, input_dim=2)
    with pytest.raises(ConfigurationError, match="unknown Gram method"):
        mf.gram_matrices(net, np.zeros((3, 2)), method="svd")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"shape \(n, 2\)"):
        mf.gram_matrices(net, np.zeros((3, 5)))


def _layer_jacobians(net: mf.ScaledResNet, X: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per-sample Jacobians of f in the particles of each block (n, M * (2d+1)) and of the
    head (n, K * (1+d)), explicit (torch.autograd.functional.jacobian)."""
    params = dict(net.named_parameters())
    full = {}
    for name in (*net.residual_parameter_names(), *net.head_parameter_names()):
        def f(t: torch.Tensor, name: str = name) -> torch.Tensor:
            return torch.func.functional_call(net, {name: t}, (X,))
        full[name] = torch.autograd.functional.jacobian(f, params[name].detach())
    n = X.shape[0]
    layers = [torch.cat([full[k][:, layer].reshape(n, -1) for k in net.residual_parameter_names()], 1)
              for layer in range(net.config.depth)]
    head = torch.cat([full[k].reshape(n, -1) for k in net.head_parameter_names()], 1)
    return layers, head


@pytest.mark.parametrize("scaling", ["mean-field", "sqrt"])
def test_gram_traces_are_the_per_layer_jacobian_norms(scaling):
    net = mf.ScaledResNet(3, 3, 4, 5, scaling, alpha=1.5, beta=2.0, seed=2).to(torch.float64)
    X = torch.as_tensor(np.random.default_rng(4).normal(size=(6, 3)))
    t1, t2 = mf.gram_traces(net, X)
    layers, head = _layer_jacobians(net, X)
    m, b2 = net.lr_multipliers(), net.config.beta ** 2
    for layer, J in enumerate(layers):
        assert t1[layer] == pytest.approx(m["res_u"] / b2 * float((J * J).sum()) / 6, rel=1e-10)
    assert t2 == pytest.approx(m["head_a"] / b2 * float((head * head).sum()) / 6, rel=1e-10)
    g = mf.gram_matrices(net, X)
    assert t1.sum() == pytest.approx(np.trace(g.G1) / 6, rel=1e-10)
    assert t2 == pytest.approx(np.trace(g.G2) / 6, rel=1e-10)


def test_tangent_rademacher_bounds_the_linearised_class():
    """One-sided: the mean over sign vectors of the exact supremum over the linearised
    class {per-layer particle movement <= D_l} stays below the tangent Rademacher term."""
    net = mf.ScaledResNet(3, 2, 4, 5, beta=1.5, seed=5).to(torch.float64)
    n = 7
    X = torch.as_tensor(np.random.default_rng(6).normal(size=(n, 3)))
    t1, t2 = mf.gram_traces(net, X)
    layers, head = _layer_jacobians(net, X)
    cfg, m = net.config, net.lr_multipliers()
    D = [0.7, 1.3]
    D_head = 2.1
    bound = (cfg.beta * D_head * np.sqrt(t2)
             + sum(cfg.beta * d * np.sqrt(cfg.width * t / m["res_u"]) for d, t in zip(D, t1, strict=True))
             ) / np.sqrt(n)
    sigma = torch.as_tensor(np.random.default_rng(7).choice([-1.0, 1.0], size=(4000, n)))
    # sup over ||dtheta_l|| <= sqrt(M) D_l of (1/n) sum_i sigma_i J_l(x_i) dtheta_l
    sups = sum(np.sqrt(cfg.width) * d * torch.linalg.norm(sigma @ J / n, dim=1)
               for d, J in zip(D, layers, strict=True))
    sups = sups + np.sqrt(cfg.head_width) * D_head * torch.linalg.norm(sigma @ head / n, dim=1)
    found = float(sups.mean()) - 3 * float(sups.std()) / np.sqrt(sups.numel())
    assert within(found, bound), (found, bound)
    assert found > 0.5 * bound  # the Jensen step loses little here: the bound is not loose
