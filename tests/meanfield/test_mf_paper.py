"""The paper's quantities [D] against hand computations on tiny cases, and the bias-corrected
Gaussian KL on untrained particles."""

from __future__ import annotations

import math

import numpy as np
import pytest

from certcompress import meanfield as mf
from certcompress.meanfield._kl import gaussian_kl_null_bias
from certcompress.meanfield._paper import kl_bound, limit_gram_lower_bound, paper_bounds


def _limit_gram_by_quadrature(Z: np.ndarray, sw: float, sa: float, nodes: int = 64):
    """K_s and G2inf by a 2-D Gauss-Hermite rule per pair (the hand computation)."""
    x, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / math.sqrt(2 * math.pi)
    n = Z.shape[0]
    Ks, Kd = np.empty((n, n)), np.empty((n, n))
    for i in range(n):
        for j in range(n):
            cov = sw**2 * np.array([[Z[i] @ Z[i], Z[i] @ Z[j]], [Z[j] @ Z[i], Z[j] @ Z[j]]])
            L = np.linalg.cholesky(cov + 1e-12 * np.eye(2))
            g1, g2 = np.meshgrid(x, x, indexing="ij")
            u1, u2 = L[0, 0] * g1, L[1, 0] * g1 + L[1, 1] * g2
            ww = np.outer(w, w)
            Ks[i, j] = np.sum(ww * np.tanh(u1) * np.tanh(u2))
            Kd[i, j] = np.sum(ww * (1 - np.tanh(u1) ** 2) * (1 - np.tanh(u2) ** 2))
    return Ks, Ks + sa**2 * (Z @ Z.T) * Kd


def test_lambda_is_a_lower_bound_that_converges_to_the_limit():
    Z = np.array([[1.0, 0.2, -0.5], [0.3, -1.2, 0.4], [-0.7, 0.1, 0.9], [0.9, 0.8, 0.1]])
    sw, sa = 0.8, 1.3
    Ks, G2 = _limit_gram_by_quadrature(Z, sw, sa)
    lam_s, lam_g2 = np.linalg.eigvalsh(Ks)[0], np.linalg.eigvalsh(G2)[0]
    prev = (-np.inf, -np.inf)
    for order in (1, 3, 6, 12, 30):
        b = limit_gram_lower_bound(Z, sigma_w=sw, sigma_a=sa, order=order)
        assert b[0] <= lam_s + 1e-9 and b[1] <= lam_g2 + 1e-9  # never above: a lower bound
        assert b[0] >= prev[0] - 1e-12 and b[1] >= prev[1] - 1e-12  # tighter with the order
        prev = b
    assert prev[0] == pytest.approx(lam_s, rel=1e-3) and prev[1] == pytest.approx(lam_g2, rel=1e-3)


def test_kl_bound_by_hand_and_exact_for_the_frozen_feature_flow():
    # n = 4, beta = 2, Lambda = 0.5, t = 3, L0 = 0.5: c = beta^2 t / n = 3, c*Lambda = 1.5 is
    # past the peak (x ~ 1.2564) of (1 - e^-x)^2 / x, so H = (1 - e^-1.5)^2 / 1.5.
    H = (1 - math.exp(-1.5)) ** 2 / 1.5
    assert kl_bound(2.0, 4, 0.5, 3.0, 0.5) == pytest.approx(4 * 0.5 * 3 * H / 4, rel=1e-9)
    assert kl_bound(2.0, 4, 0.5, math.inf, 0.5) == pytest.approx(4 * 0.5 / (4 * 0.5))
    assert kl_bound(2.0, 4, 0.5, 0.0, 0.5) == 0.0
    # the exact frozen-feature KL e0^T g_t(K) e0 / (2 sa^2 beta^2) never exceeds the bound
    rng = np.random.default_rng(0)
    for _ in range(50):
        n, beta, sa, t = 6, rng.uniform(0.5, 5), rng.uniform(0.5, 2), rng.uniform(0.01, 50)
        A = rng.standard_normal((n, n))
        K = A @ A.T / n + 0.05 * np.eye(n)
        lam, V = np.linalg.eigh(K)
        e0 = rng.standard_normal(n)
        c = beta**2 * t / n
        exact = float(((V.T @ e0) ** 2 * (1 - np.exp(-c * lam)) ** 2 / lam).sum()) / (2 * sa**2 * beta**2)
        L0 = float(e0 @ e0) / (2 * n)
        assert exact <= kl_bound(beta, n, float(lam[0]), t, L0, sa) * (1 + 1e-9)


def test_gap_bound_by_hand():
    Z = np.random.default_rng(1).standard_normal((5, 3))
    y = np.array([1.0, -1.0, 1.0, 1.0, -1.0])
    pb = paper_bounds(Z, y, beta=3.0, t=2.0, sigma_w=0.6, sigma_a=1.0, activation="tanh",
                      loss_lipschitz=2.0, loss_bound=2.0, confidence_term=0.1, order=8)
    kl = kl_bound(3.0, 5, pb.Lambda_s, 2.0, 0.5, 1.0)
    assert pb.loss0_limit == 0.5 and pb.kl_bound == pytest.approx(kl)
    rad = mf.rademacher_closed_form(kl, 5, 3.0, 1.0)
    assert pb.gap_bound == pytest.approx(2 * 2.0 * rad + 0.1)
    assert pb.gap_bound_vacuous == (pb.gap_bound >= 2.0)


@pytest.mark.parametrize("covariance", ["diagonal", "full"])
def test_gaussian_kl_bias_correction_is_exact_on_average(covariance):
    full = covariance == "full"
    D, M = (4, 64) if full else (9, 32)
    rng = np.random.default_rng(2)
    vals = [mf.gaussian_kl(rng.standard_normal((M, D)), covariance=covariance, bootstrap=0).value
            for _ in range(400)]
    # mean of 400 draws: within 5 standard errors of 0; the plug-in bias itself is far away
    assert abs(np.mean(vals)) <= 5 * np.std(vals) / math.sqrt(400)
    assert gaussian_kl_null_bias(M, D, full) > 10 * np.std(vals) / math.sqrt(400)


def test_untrained_particles_read_near_zero_within_a_tolerance_shrinking_with_M():
    # stated tolerance for the diagonal fit on M particles in dimension D: 5 sqrt(D) / M
    # nats (the null standard deviation is about sqrt(D) / M).
    tols = []
    for M in (64, 256, 1024):
        net = mf.ScaledResNet(32, 2, M, M, seed=M)
        p = net.particles()
        for samples, std in ((p.residual[0], net.prior.residual_std(32)), (p.head, net.prior.head_std(32))):
            D = samples.shape[1]
            tol = 5 * math.sqrt(D) / M
            g = mf.gaussian_kl(samples, std, covariance="diagonal", bootstrap=0)
            assert abs(g.value) <= tol, (M, D, g.value, tol)
            plug_in = mf.gaussian_kl(samples, std, covariance="diagonal", bootstrap=0, bias_correct=False)
            assert plug_in.value > tol  # the uncorrected floor reads D/(2M)-ish nats
        tols.append(5 * math.sqrt(65) / M)
    assert tols[0] > tols[1] > tols[2]
