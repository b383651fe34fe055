"""Rademacher complexity of a KL ball of head distributions (Meir & Zhang 2003) [D].

The class: f_nu(x) = beta * E_{(a, w') ~ nu}[a s(w'^T z(x))] with KL(nu || nu_0) <= r,
nu_0 = N(0, sigma_a^2) x N(0, sigma_w'^2 I), features z(x) = z_L(x) of the trained
residual network held fixed (an assumption: the residual KL enters only through r).
Donsker-Varadhan gives, for every lambda > 0,

    sup_nu E_nu[g] <= (r + log E_{nu_0} exp(lambda g)) / lambda,
    g(a, w') = (beta / n) sum_i sigma_i a s(w'^T z_i).

Integrating the Gaussian a exactly: log E_a exp(lambda g) = lambda^2 beta^2 sigma_a^2 h(w')^2 / 2
with h(w') = (1/n) sum_i sigma_i s(w'^T z_i).

- Closed form (|s| <= 1, Jensen over sigma): R_n <= inf_{0<x<1} (beta sigma_a / sqrt(n))
  (r - log(1 - x^2) / 2) / x  ~=  beta * sigma_a * sqrt(2 r / n) for small r/n.
  A bound for this class [D].
- Monte Carlo: average over sign vectors sigma of inf_lambda of the DV expression with
  E_{w'} replaced by a mean over prior draws. Tighter; an ESTIMATE (finite-sample
  log-mean-exp is biased low).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

from ..errors import ConfigurationError
from ._activations import ActivationSpec, get_activation

__all__ = ["rademacher_closed_form", "rademacher_monte_carlo"]


def rademacher_closed_form(radius: float, n: int, beta: float, sigma_a: float = 1.0) -> float:
    """DV bound on the Rademacher complexity of the KL ball of radius r (nats), |s| <= 1."""
    if n < 1 or beta <= 0 or sigma_a <= 0:
        raise ConfigurationError("rademacher_closed_form: need n >= 1, beta > 0, sigma_a > 0")
    if math.isnan(radius):
        return math.nan
    if math.isinf(radius):
        return math.inf
    if radius <= 0:
        return 0.0
    res = minimize_scalar(lambda x: (radius - 0.5 * math.log1p(-x * x)) / x,
                          bounds=(1e-9, 1 - 1e-12), method="bounded",
                          options={"xatol": 1e-12})
    return float(beta * sigma_a / math.sqrt(n) * res.fun)


def rademacher_monte_carlo(
    features: np.ndarray, radius: float, *, beta: float, sigma_a: float, sigma_w: float,
    activation: str | ActivationSpec = "tanh", n_particles: int = 2048, n_signs: int = 64,
    seed: int = 0,
) -> tuple[float, float]:
    """Monte-Carlo Donsker-Varadhan value and its standard error over sign draws.

    Args:
        features: (n, d) fixed features z_L(x_i), float64.
        radius: KL radius r in nats. sigma_a, sigma_w: the head prior's std devs.
        activation: the head activation s (a registered name or spec).
    """
    act = get_activation(activation) if isinstance(activation, str) else activation
    Z = np.asarray(features, dtype=np.float64)
    n, d = Z.shape
    if math.isnan(radius):
        return math.nan, math.nan
    if math.isinf(radius):
        return math.inf, 0.0
    if radius <= 0:
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    import torch

    W = rng.standard_normal((n_particles, d)) * sigma_w
    H = act.fn(torch.from_numpy(Z @ W.T)).numpy()  # (n, P)
    signs = rng.choice([-1.0, 1.0], size=(n_signs, n))
    h = signs @ H / n  # (S, P)
    q = 0.5 * (beta * sigma_a * h) ** 2  # log E_a exp(lambda g) = lambda^2 q
    scale = math.sqrt(radius / max(float(q.mean()), 1e-300))
    values = np.empty(n_signs)
    logP = math.log(n_particles)
    grid = np.log(scale) + np.linspace(-6.0, 4.0, 61)
    lam = np.exp(grid)
    # DV value on the whole grid for every sign vector at once: (S, G)
    dv_grid = (radius + logsumexp((lam * lam)[None, :, None] * q[:, None, :], axis=2) - logP) / lam
    for s in range(n_signs):
        qs = q[s]

        def dv(log_lam: float, qs: np.ndarray = qs) -> float:
            lam = math.exp(log_lam)
            return float((radius + logsumexp(lam * lam * qs) - logP) / lam)

        i = int(np.argmin(dv_grid[s]))
        lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
        res = minimize_scalar(dv, bounds=(lo, hi), method="bounded")
        values[s] = min(float(res.fun), float(dv_grid[s, i]))
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(n_signs)) if n_signs > 1 else 0.0
