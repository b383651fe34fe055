"""Gram matrices of the mean-field dynamics from per-sample Jacobians (docs/meanfield.md, "What ``mf.estimate`` returns", [D]).

With J1 the (n, P1) Jacobian of f(x_1..x_n) with respect to the residual particles and
J2 the (n, P2) Jacobian with respect to the head particles,

    G1 = (m_res / beta^2) J1 J1^T,      G2 = (K / beta^2) J2 J2^T,

where m_res is the residual step multiplier of the training rule (L*M for the
mean-field scaling). Under gradient flow on (1/2n)||f - y||^2 the outputs obey
df/dt = -(beta^2 / n) (G1 + G2) (f - y), so lambda_min(G2) and lambda_min(G1 + G2)
control the loss decay. Both matrices are (n, n), float64, symmetric positive
semi-definite, O(1) entries.

Two methods compute the same matrices: ``"jacobian"`` forms J with torch.func
(vmap of jacrev over samples; memory n x the largest parameter tensor), and
``"structured"`` uses the closed form of the ScaledResNet Jacobian (memory n x max(M, K)),
47x faster at n=100, L=16, M=256 in benchmarks/bench_meanfield.py (one run on a
loaded 2-core machine); the torch.func method also needs n x L*M*d floats per tensor.
The tests check both against explicit Jacobian products.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.func import functional_call, jacrev, vmap

from ..errors import ConfigurationError
from ._model import ScaledResNet
from ._types import GramMethod

__all__ = ["GramPair", "gram_matrices", "gram_traces", "per_sample_jacobians", "lambda_min"]


@dataclass(frozen=True, eq=False)
class GramPair:
    """G1 (residual particles) and G2 (head particles), each (n, n) float64."""

    G1: np.ndarray
    G2: np.ndarray

    @property
    def lambda_min_G2(self) -> float:
        return lambda_min(self.G2)

    @property
    def lambda_min_sum(self) -> float:
        """lambda_min(G1 + G2)."""
        return lambda_min(self.G1 + self.G2)


def lambda_min(G: np.ndarray) -> float:
    """Smallest eigenvalue of a symmetric matrix (float64, LAPACK eigvalsh)."""
    arr = np.asarray(G, dtype=np.float64)
    return float(np.linalg.eigvalsh(0.5 * (arr + arr.T))[0])


def _as_float64(net: ScaledResNet) -> ScaledResNet:
    if net.res_u.dtype == torch.float64:
        return net
    return copy.deepcopy(net).to(torch.float64)


def _scales(net: ScaledResNet) -> tuple[float, float]:
    cfg = net.config
    m_res = net.lr_multipliers()["res_u"]
    return m_res / cfg.beta**2, cfg.head_width / cfg.beta**2


def per_sample_jacobians(net: ScaledResNet, X: Tensor, names: tuple[str, ...],
                         chunk_size: int = 64) -> dict[str, Tensor]:
    """Per-sample Jacobians d f(x_i) / d p for each parameter name, via torch.func.

    Returns ``{name: tensor of shape (n, *p.shape)}`` in the parameter dtype.
    """
    params = {k: v.detach() for k, v in net.named_parameters()}
    buffers = {k: v.detach() for k, v in net.named_buffers()}
    unknown = [n for n in names if n not in params]
    if unknown:
        raise ConfigurationError(f"per_sample_jacobians: unknown parameters {unknown}; have {sorted(params)}")

    def f_single(group: dict[str, Tensor], x: Tensor) -> Tensor:
        merged = {**params, **group}
        out: Tensor = functional_call(net, (merged, buffers), (x.unsqueeze(0),))
        return out.squeeze(0)

    group = {n: params[n] for n in names}
    jac = vmap(jacrev(f_single), in_dims=(None, 0), chunk_size=chunk_size)
    result: dict[str, Tensor] = jac(group, X)
    return result


def _gram_jacobian(net: ScaledResNet, X: Tensor, chunk_size: int) -> GramPair:
    s_res, s_head = _scales(net)
    out = []
    for names, scale in ((net.residual_parameter_names(), s_res),
                         (net.head_parameter_names(), s_head)):
        G = torch.zeros(X.shape[0], X.shape[0], dtype=torch.float64)
        for name in names:  # one tensor at a time bounds the memory
            J = per_sample_jacobians(net, X, (name,), chunk_size)[name].reshape(X.shape[0], -1)
            G += J @ J.T
        out.append((scale * G).numpy())
    return GramPair(out[0], out[1])


_Factors = tuple[Tensor, Tensor, Tensor, Tensor]


def _factors(net: ScaledResNet, X: Tensor) -> tuple[list[_Factors], tuple[Tensor, Tensor, Tensor]]:
    """The closed form's per-sample factors: for each residual block ``(z, g, S, P)``
    (block input, df/d(block output), activations, back-propagated pre-activation
    gradients) and for the head ``(z, S, P)``; G1 and G2 (and their diagonals) are sums
    of their Gram products."""
    act = net.act
    with torch.enable_grad():
        f, states = net.forward_states(X)
        grads = torch.autograd.grad(f.sum(), states[1:])  # g_{l+1} = df_i / dz_{l+1,i}
    blocks = []
    with torch.no_grad():
        for layer in range(net.config.depth):
            z = states[layer].detach()
            g = grads[layer].detach()
            h = z @ net.res_w[layer].T + net.res_bias[layer]
            blocks.append((z, g, act.fn(h), (g @ net.res_u[layer].T) * act.derivative(h)))
        z = states[-1].detach()
        H = z @ net.head_w.T
        head = (z, act.fn(H), act.derivative(H) * net.head_a)
    return blocks, head


def _block_scale(net: ScaledResNet) -> tuple[float, float]:
    """The factors multiplying G1 and G2's Gram products."""
    cfg = net.config
    s_res, s_head = _scales(net)
    return ((net.residual_multiplier / cfg.width) ** 2 * s_res,
            (cfg.beta / cfg.head_width) ** 2 * s_head)


def _gram_structured(net: ScaledResNet, X: Tensor) -> GramPair:
    blocks, (z2, S2, P2) = _factors(net, X)
    k1, k2 = _block_scale(net)
    n = X.shape[0]
    G1 = torch.zeros(n, n, dtype=torch.float64)
    for z, g, S, P in blocks:
        G1 += ((g @ g.T) * (S @ S.T) + (z @ z.T + 1.0) * (P @ P.T))
    G2 = (S2 @ S2.T + (z2 @ z2.T) * (P2 @ P2.T)) * k2
    return GramPair((G1 * k1).numpy(), G2.numpy())


def _float64_inputs(net: ScaledResNet, X: object, who: str) -> tuple[ScaledResNet, Tensor]:
    if not isinstance(net, ScaledResNet):
        raise ConfigurationError(f"{who} needs a ScaledResNet, got {type(net).__name__}")
    net64 = _as_float64(net)
    Xt = torch.as_tensor(np.asarray(X, dtype=np.float64) if not isinstance(X, Tensor) else X,
                         dtype=torch.float64)
    net64.embed_input(Xt)
    return net64, Xt


def gram_matrices(
    net: ScaledResNet, X: object, *, method: GramMethod = "structured", chunk_size: int = 64,
) -> GramPair:
    """G1 and G2 of ``net`` on inputs X of shape (n, input_dim); see the module docstring.

    Computed in float64 (a float64 copy is used when ``net`` is float32). ``method``:
    ``"structured"`` (closed form, default) or ``"jacobian"`` (torch.func).
    """
    net64, Xt = _float64_inputs(net, X, "gram_matrices")
    if method == "structured":
        return _gram_structured(net64, Xt)
    if method == "jacobian":
        return _gram_jacobian(net64, Xt, chunk_size)
    raise ConfigurationError(f"unknown Gram method '{method}'; use 'structured' or 'jacobian'")


def gram_traces(net: ScaledResNet, X: object) -> tuple[np.ndarray, float]:
    """Per-sample mean of the diagonals of the Gram matrices: ``(t1, t2)`` with
    ``t1[l] = mean_i G1^(l)_ii`` (the part of G1 from block l, so ``sum(t1) = tr(G1)/n``)
    and ``t2 = tr(G2)/n`` (closed form, as the ``"structured"`` method; O(n) memory).

    With the per-sample Jacobians, ``|J1_l(x_i)|^2 = (beta^2 / m_res) G1^(l)_ii`` and
    ``|J2(x_i)|^2 = (beta^2 / K) G2_ii``: the squared Lipschitz constants of f in the
    particles of block l and of the head, used by the tangent Rademacher term
    (docs/meanfield.md, "Tangent complexity").
    """
    net64, Xt = _float64_inputs(net, X, "gram_traces")
    blocks, (z2, S2, P2) = _factors(net64, Xt)
    k1, k2 = _block_scale(net64)
    t1 = np.array([float(((g * g).sum(1) * (S * S).sum(1)
                          + ((z * z).sum(1) + 1.0) * (P * P).sum(1)).mean()) * k1
                   for z, g, S, P in blocks])
    t2 = float(((S2 * S2).sum(1) + (z2 * z2).sum(1) * (P2 * P2).sum(1)).mean()) * k2
    return t1, t2
