"""Gram matrices G1, G2 equal explicit Jacobian products on tiny networks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
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
