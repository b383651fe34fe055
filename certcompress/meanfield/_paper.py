"""The quantities of Chen et al. 2024 computed with explicit constants (docs/meanfield.md).

Three quantities, each derived here [D] for the setting of the paper in the limit of
infinite width at initialisation (mean-field init: E[u] = 0, so the residual flow is
still at t = 0 and z_L(x) = z_0(x) = E x):

1. **Lambda**, a lower bound on lambda_min of the limiting head Gram matrix
       G2inf_ij = E_w[s(w.z_i) s(w.z_j)] + sigma_a^2 (z_i.z_j) E_w[s'(w.z_i) s'(w.z_j)],
   w ~ N(0, sigma_w^2 I). With r_i = sigma_w |z_i| and the correlations C_ij of the
   z_i, the Hermite expansion s(r g) = sum_k mu_k(r) He_k(g)/sqrt(k!) gives
       E_w[s(w.z_i) s(w.z_j)] = sum_k mu_k(r_i) mu_k(r_j) C_ij^k,
   a sum of positive semi-definite terms D_k C^{o k} D_k (Schur product theorem), so
   its truncation at order R is below the full matrix in the PSD order and
   lambda_min of the truncation is a LOWER bound on lambda_min of the limit (the
   mu_k are computed by Gauss-Hermite quadrature, exact to rounding for these smooth
   activations). ``Lambda_s`` bounds the first (random-features) kernel K_s alone;
   ``Lambda_G2`` the whole G2inf (the second term expanded the same way with s').
   The paper's Lambda(d) is this kind of data-dependent constant; it states no value.

2. **KL bound** as a function of beta, n, Lambda and t. For the head flow with the
   features frozen (the random-features limit: residual particles and w' fixed, a
   moving), the flow is linear: e(t) = exp(-(beta^2/n) K_s t) e(0), every particle's
   a shifts by delta(w) = -(1/beta) s(w)^T K_s^{-1} (e(0) - e(t)), and the KL of the
   shifted Gaussian is exactly E_w[delta^2] / (2 sigma_a^2), i.e.
       KL(t) = e0^T g_t(K_s) e0 / (2 sigma_a^2 beta^2),   g_t(x) = (1 - e^{-c x})^2 / x,
   c = beta^2 t / n. Since lambda_min(K_s) >= Lambda_s and |e0|^2 = 2 n L0,
       KL(t) <= n L0 c H(c Lambda_s) / (sigma_a^2 beta^2),  H(x0) = sup_{x>=x0} (1-e^{-x})^2/x,
   which tends to n L0 / (sigma_a^2 beta^2 Lambda_s) as t grows. In the limit f(0) = 0,
   so L0 = mean(y^2)/2. Exact for the frozen-feature flow; for the full flow (all
   particles moving) the paper proves the same kind of bound without explicit constants.

3. **Generalization bound**: the Donsker-Varadhan Rademacher bound of the KL ball
   (rademacher_closed_form) at radius KL(t), times 2 Lip(loss), plus the confidence term:
   a bound for the frozen-feature head class, not for the finite network.

The theorem's conditions are checked on the run by :func:`check_conditions`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import minimize_scalar

from ..errors import ConfigurationError
from ._activations import ActivationSpec, get_activation
from ._rademacher import rademacher_closed_form

__all__ = ["PaperBounds", "hermite_coefficients", "limit_head_grams", "limit_gram_lower_bound",
           "kl_bound", "paper_bounds"]


def hermite_coefficients(act: ActivationSpec | str, r: np.ndarray, order: int, *,
                         derivative: bool = False, nodes: int = 80) -> np.ndarray:
    """mu_k(r_i) = E[s(r_i g) He_k(g)] / sqrt(k!), g ~ N(0, 1), shape (len(r), order + 1).

    ``derivative=True`` expands s' instead of s. Gauss-Hermite quadrature (probabilists')
    with ``nodes`` points.
    """
    spec = get_activation(act) if isinstance(act, str) else act
    x, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / math.sqrt(2.0 * math.pi)
    r = np.asarray(r, dtype=np.float64).reshape(-1)
    fn = spec.derivative if derivative else spec.fn
    vals = fn(torch.from_numpy(np.outer(r, x))).numpy()  # (n, nodes)
    he = np.empty((order + 1, nodes))
    he[0] = 1.0
    if order >= 1:
        he[1] = x
    for k in range(2, order + 1):  # normalised: He_k / sqrt(k!), no factorial overflow
        he[k] = (x * he[k - 1] - math.sqrt(k - 1) * he[k - 2]) / math.sqrt(k)
    return np.asarray((vals * w) @ he.T, dtype=np.float64)


def _series(mu: np.ndarray, C: np.ndarray) -> np.ndarray:
    out = np.zeros_like(C)
    Ck = np.ones_like(C)
    for k in range(mu.shape[1]):
        out += np.outer(mu[:, k], mu[:, k]) * Ck
        Ck = Ck * C
    return out


def _min_eig(A: np.ndarray) -> float:
    return float(np.linalg.eigvalsh(0.5 * (A + A.T))[0])


def limit_head_grams(Z: np.ndarray, *, activation: ActivationSpec | str = "tanh",
                     sigma_w: float, sigma_a: float, order: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(K_s, G2inf) truncated at Hermite order R: the limiting random-features kernel and
    the limiting head Gram matrix on features Z (n, d) (module docstring, item 1).

    Each is a sum of PSD terms, so the truncation lies below the limit in the PSD order
    (lambda_min of it is a lower bound; :func:`limit_gram_lower_bound`).
    """
    Zm = np.asarray(Z, dtype=np.float64)
    if Zm.ndim != 2 or Zm.shape[0] < 1:
        raise ConfigurationError(f"limit_head_grams: Z must have shape (n, d), got {Zm.shape}")
    if not (sigma_w > 0 and sigma_a > 0) or order < 0:
        raise ConfigurationError("limit_head_grams: need sigma_w, sigma_a > 0 and order >= 0")
    norms = np.linalg.norm(Zm, axis=1)
    safe = np.where(norms > 0, norms, 1.0)
    U = Zm / safe[:, None]
    C = np.clip(U @ U.T, -1.0, 1.0)
    zero = norms == 0
    C[zero, :] = 0.0
    C[:, zero] = 0.0
    np.fill_diagonal(C, 1.0)
    r = sigma_w * norms
    Ks = _series(hermite_coefficients(activation, r, order), C)
    Kd = _series(hermite_coefficients(activation, r, order, derivative=True), C)
    return Ks, Ks + sigma_a**2 * (Zm @ Zm.T) * Kd


def limit_gram_lower_bound(Z: np.ndarray, *, activation: ActivationSpec | str = "tanh",
                           sigma_w: float, sigma_a: float, order: int = 10) -> tuple[float, float]:
    """(Lambda_s, Lambda_G2): lower bounds on lambda_min of K_s and of G2inf on features Z.

    Z: (n, d) features z_i (for the limit at mean-field initialisation, z_0 = E x).
    ``order``: Hermite truncation R (the bound increases with R toward the limit).
    """
    Ks, G2 = limit_head_grams(Z, activation=activation, sigma_w=sigma_w, sigma_a=sigma_a,
                              order=order)
    return _min_eig(Ks), _min_eig(G2)


def _h_sup(x0: float) -> float:
    """H(x0) = sup_{x >= x0} (1 - e^{-x})^2 / x (the function peaks near x = 1.2564)."""
    peak = minimize_scalar(lambda x: -((1.0 - math.exp(-x)) ** 2) / x, bounds=(0.5, 3.0),
                           method="bounded", options={"xatol": 1e-12})
    xp = float(peak.x)
    x = max(x0, xp)
    return (1.0 - math.exp(-x)) ** 2 / x if x > 0 else 0.0


def kl_bound(beta: float, n: int, Lambda: float, t: float, loss0: float, sigma_a: float = 1.0) -> float:
    """[D] KL(t) <= n L0 c H(c Lambda) / (sigma_a^2 beta^2), c = beta^2 t / n (nats).

    The frozen-feature head flow's KL from its Gaussian initialisation (module
    docstring, item 2); ``Lambda`` must be a lower bound on lambda_min(K_s). +inf when
    Lambda <= 0 and t = inf; 0 at t = 0.
    """
    if n < 1 or not beta > 0 or not sigma_a > 0 or t < 0 or loss0 < 0:
        raise ConfigurationError("kl_bound: need n >= 1, beta > 0, sigma_a > 0, t >= 0, loss0 >= 0")
    if t == 0 or loss0 == 0:
        return 0.0
    if math.isinf(t):
        return n * loss0 / (sigma_a**2 * beta**2 * Lambda) if Lambda > 0 else math.inf
    c = beta**2 * t / n
    if not Lambda > 0:  # sup over x >= 0 of (1-e^{-cx})^2/x = c * H(0)
        return n * loss0 * c * _h_sup(0.0) / (sigma_a**2 * beta**2)
    return n * loss0 * c * _h_sup(c * Lambda) / (sigma_a**2 * beta**2)


@dataclass(frozen=True)
class PaperBounds:
    """The paper's quantities for one run (see the module docstring); nats, loss units."""

    Lambda_s: float
    Lambda_G2: float
    loss0_limit: float
    kl_bound: float
    rademacher_bound: float
    gap_bound: float
    gap_bound_vacuous: bool


def paper_bounds(Z0: np.ndarray, y: np.ndarray, *, beta: float, t: float, sigma_w: float,
                 sigma_a: float, activation: ActivationSpec | str, loss_lipschitz: float,
                 loss_bound: float, confidence_term: float, order: int = 10) -> PaperBounds:
    """Lambda, the KL bound at flow time t and the generalization bound on features Z0."""
    lam_s, lam_g2 = limit_gram_lower_bound(Z0, activation=activation, sigma_w=sigma_w,
                                           sigma_a=sigma_a, order=order)
    n = int(np.asarray(y).shape[0])
    loss0 = 0.5 * float(np.mean(np.asarray(y, dtype=np.float64) ** 2))
    kl = kl_bound(beta, n, lam_s, t, loss0, sigma_a)
    rad = rademacher_closed_form(kl, n, beta, sigma_a)
    gap = 2.0 * loss_lipschitz * rad + confidence_term
    return PaperBounds(lam_s, lam_g2, loss0, kl, rad, gap, bool(not gap < loss_bound))
