"""Leave-one-out loss of kernel ridge regression (docs/meanfield.md, "Leave-one-out
estimate").

For a kernel matrix G (n x n, PSD), targets y, an offset f0 (the network at
initialisation) and a ridge lam > 0, kernel ridge regression fits the residual
u = y - f0 with f = f0 + G (G + lam I)^{-1} u. Leaving sample i out and refitting on
the other n - 1 gives the prediction at x_i exactly by the closed form [D]

    y_i - f_{-i}(x_i) = [A^{-1} u]_i / [A^{-1}]_ii,       A = G + lam I

(the hat matrix H = G A^{-1} has I - H = lam A^{-1}; the usual LOO identity for a linear
smoother fitted by least squares with a quadratic penalty). Tested against refits.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigurationError

__all__ = ["kernel_ridge_loo", "flow_ridge"]


def flow_ridge(n: int, beta: float, t: float) -> float:
    """The ridge ``n / (beta^2 t)`` that matches gradient flow for time t [E].

    Under df/dt = -(beta^2/n) G (f - y) with G fixed, the fitted part of the residual
    along an eigenvector of G with eigenvalue mu is 1 - exp(-beta^2 mu t / n); kernel
    ridge keeps mu / (mu + lam). The two agree for mu << lam and mu >> lam when
    lam = n / (beta^2 t) (early stopping as ridge regularisation).
    """
    if n < 1 or not beta > 0 or not (t > 0 and math.isfinite(t)):
        raise ConfigurationError(f"flow_ridge: need n >= 1, beta > 0 and a finite t > 0; got "
                                 f"n={n}, beta={beta}, t={t}")
    return n / (beta * beta * t)


def kernel_ridge_loo(G: np.ndarray, y: np.ndarray, ridge: float, *,
                     offset: np.ndarray | None = None, clip: float | None = None) -> float:
    """Mean leave-one-out loss (1/2n) sum_i (clip(f_{-i}(x_i)) - y_i)^2 of kernel ridge
    regression with kernel ``G``, ridge ``ridge`` > 0 and predictions ``offset + kernel
    fit`` (``offset``: the values at initialisation, default 0), clipped to
    ``[-clip, clip]`` when ``clip`` is given (the module's clipped loss)."""
    K = np.asarray(G, dtype=np.float64)
    yv = np.asarray(y, dtype=np.float64).reshape(-1)
    n = yv.shape[0]
    if K.shape != (n, n):
        raise ConfigurationError(f"kernel_ridge_loo: G must be ({n}, {n}) for {n} targets, got {K.shape}")
    if not (math.isfinite(ridge) and ridge > 0):
        raise ConfigurationError(f"kernel_ridge_loo: ridge must be a finite number > 0, got {ridge!r}")
    if not (np.all(np.isfinite(K)) and np.all(np.isfinite(yv))):
        raise ConfigurationError("kernel_ridge_loo: G and y must be finite")
    f0 = np.zeros(n) if offset is None else np.asarray(offset, dtype=np.float64).reshape(-1)
    if f0.shape != (n,):
        raise ConfigurationError(f"kernel_ridge_loo: offset must have {n} values, got {f0.shape}")
    mu, V = np.linalg.eigh(0.5 * (K + K.T))
    mu = np.maximum(mu, 0.0)  # PSD up to rounding
    A_inv = (V / (mu + ridge)) @ V.T
    resid = (A_inv @ (yv - f0)) / np.diag(A_inv)
    pred = yv - resid
    if clip is not None:
        pred = np.clip(pred, -clip, clip)
    return 0.5 * float(np.mean((pred - yv) ** 2))
